"""The SAM training loop (segment-anything.txt §3 "Losses and training", §A).

One optimiser step = ``grad_accum`` micro-batches of ``batch_size`` images on each process:

1. every image is encoded once (``image_encoder``); up to ``masks_per_image`` GT masks per image are
   prompted in parallel, each through the simulated interactive session of §A ("Training algorithm",
   :mod:`promptseg.train.prompts`) — the image embedding is reused by all 11 rounds;
2. every round runs prompt encoder + mask decoder for all masks of the batch (``image_indices`` maps
   each mask to its image) and adds its :class:`~promptseg.train.losses.SamLoss`; the step's loss is
   the mean over rounds and masks, back-propagated once. All rounds of a mask contribute to the same
   update ("each iteration adds only a small overhead … unlike previous interactive methods that
   perform only one or a few interactive steps per optimizer update", §A);
3. the mask passed to the next round is the previous round's low-res logits of the single output, or
   — for the 3-mask output of a single prompt — of the mask with the highest predicted IoU (§A); it is
   *detached* by default (``detach_mask_prompt``): §A describes it as an additional *prompt*, an input
   like the clicks, which are sampled from the (non-differentiable) thresholded prediction. With
   ``detach_mask_prompt: false`` gradients flow back through the whole chain of rounds instead.

Reproducibility: every random draw of a micro-step (round schedule, first prompts, clicks) uses a
``torch.Generator`` seeded from ``(seed, step, micro-step, rank)``; mask subsets are drawn from
``(seed, epoch, image index)``; drop path uses the global torch RNG, whose state (with numpy's and
Python's) is saved in every checkpoint together with the data position, so ``resume`` continues
exactly — the losses after resuming equal those of an uninterrupted run.

Distributed: launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), the process group is initialised
(NCCL on CUDA, Gloo on CPU), the training module is wrapped in ``DistributedDataParallel`` and the data
split by a ``DistributedSampler``; only rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from promptseg.fileio import atomic_write
from promptseg.train.averaging import WeightAverage
from promptseg.train.config import TrainConfig
from promptseg.train.datasets import build_dataset
from promptseg.train.losses import SamLoss, iou_of
from promptseg.train.prompts import (
    POINT,
    assemble_sparse,
    error_points,
    initial_prompts,
    multimask_rows,
    round_schedule,
)
from promptseg.train.schedule import WarmupStepDecay, build_optimizer, build_scheduler
from promptseg.transforms import resize_bilinear

logger = logging.getLogger("promptseg.train")

CHECKPOINT_FORMAT = "promptseg-train-checkpoint"
CHECKPOINT_VERSION = 1
METRIC_NAMES = ("loss", "focal", "dice", "iou_mse", "miou")
CSV_COLUMNS = ("step", "lr") + METRIC_NAMES
PathLike = Union[str, "os.PathLike[str]"]


# ------------------------------------------------------------------------------------------------- model
def build_model(config: TrainConfig) -> nn.Module:
    """The SAM to train: preset / config / initial checkpoint, with ``drop_path`` applied (train mode)."""
    from promptseg.models.sam.build import build_sam
    from promptseg.models.sam.weights import load_sam

    spec = config.model
    sam_config = spec.sam_config()
    if spec.checkpoint is not None:
        model = load_sam(spec.checkpoint, config=sam_config)
        sam_config = model.config
    else:
        model = build_sam(sam_config)
    if config.drop_path is not None and config.drop_path != sam_config.image_encoder.drop_path_rate:
        encoder = dataclasses.replace(sam_config.image_encoder, drop_path_rate=config.drop_path)
        rebuilt = build_sam(dataclasses.replace(sam_config, image_encoder=encoder))
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model.train()


def frozen_parts(mode: str) -> Tuple[str, ...]:
    """Submodules frozen by a training ``mode``."""
    return {"full": (), "decoder": ("image_encoder", "prompt_encoder"), "decoder+prompt": ("image_encoder",)}[mode]


# -------------------------------------------------------------------------------------------------- data
class TrainSamples:
    """Wraps a dataset of ``{"image", "masks"}`` items into model-ready training samples.

    Keys are ``(epoch, index)`` (yielded by :class:`ResumableSampler`), so the random mask subset of an
    image is a function of ``(seed, epoch, index)`` — identical in any worker, after any resume.

    Per item: masks that are empty or cover more than ``max_mask_area`` of the image are discarded
    (§A "Training recipe"), and so are masks under ``min_mask_area`` (0 by default); at most ``masks_per_image`` are drawn at random; the image is resized to
    a longest side of ``img_size`` with the predictor's resize (no augmentation, §A) and the masks
    with it (bilinear on {0, 1}, threshold 0.5) and zero-padded to ``img_size²``.
    """

    def __init__(self, dataset: Any, img_size: int, masks_per_image: int, max_mask_area: float, seed: int,
                 min_mask_area: float = 0.0) -> None:
        from promptseg.transforms import ResizeLongestSide

        self.dataset = dataset
        self.img_size = img_size
        self.masks_per_image = masks_per_image
        self.max_mask_area = max_mask_area
        self.min_mask_area = min_mask_area
        self.seed = seed
        self.resize = ResizeLongestSide(img_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        epoch, index = key
        sample = self.dataset[index]
        image = sample["image"]
        image = image.cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"dataset item {index}: 'image' must be H×W×3 uint8, got {image.shape} {image.dtype}")
        raw = sample["masks"]
        masks = (raw.cpu() if isinstance(raw, Tensor) else torch.from_numpy(np.asarray(raw))).to(torch.bool)
        if masks.numel() and (masks.ndim not in (2, 3) or tuple(masks.shape[-2:]) != image.shape[:2]):
            raise ValueError(f"dataset item {index}: 'masks' must be K×H×W with the image's H×W {image.shape[:2]}, "
                             f"got {tuple(masks.shape)}")
        masks = masks.reshape(-1, *image.shape[:2])
        area = torch.count_nonzero(masks.flatten(1), dim=1)  # no float copy of the full-size masks
        pixels = masks.shape[1] * masks.shape[2]
        keep = torch.nonzero((area > 0) & (area >= self.min_mask_area * pixels) & (area <= self.max_mask_area * pixels))
        keep = keep.flatten()
        if len(keep) > self.masks_per_image:
            rng = np.random.default_rng([self.seed, epoch, index])
            keep = keep[torch.from_numpy(rng.permutation(len(keep))[: self.masks_per_image])]
        resized = self.resize.apply_image(np.ascontiguousarray(image))
        h, w = resized.shape[:2]
        out = torch.zeros((len(keep), self.img_size, self.img_size), dtype=torch.bool)
        for start in range(0, len(keep), 8):  # chunks bound the float copy of full-size masks
            chunk = masks[keep[start : start + 8]].float()[:, None]
            out[start : start + 8, :h, :w] = F.interpolate(chunk, (h, w), mode="bilinear", align_corners=False, antialias=True)[:, 0] > 0.5
        out = out[out.flatten(1).any(1)]
        return {"image": torch.from_numpy(resized).permute(2, 0, 1).float(), "masks": out, "size": (h, w)}


def collate_train(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Batch of samples → images (list of ``3×h×w``), targets ``B×S×S``, image validity ``I×S×S``,
    ``image_indices`` ``B`` (the image of every mask)."""
    size = items[0]["masks"].shape[-1]
    valid = torch.zeros((len(items), size, size), dtype=torch.bool)
    for i, item in enumerate(items):
        h, w = item["size"]
        valid[i, :h, :w] = True
    return {
        "images": [item["image"] for item in items],
        "targets": torch.cat([item["masks"] for item in items]),
        "image_valid": valid,
        "image_indices": torch.cat([torch.full((len(item["masks"]),), i, dtype=torch.long) for i, item in enumerate(items)]),
    }


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (works for one process too) that yields ``(epoch, index)`` keys and can
    start mid-epoch (``start`` samples skipped) for exact resumption."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[Tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


# ------------------------------------------------------------------------------------- training module
class SamTrainingModel(nn.Module):
    """A SAM plus the simulated interactive session of §A; ``forward`` returns the losses of one batch.

    A thin wrapper: the model's own modules do the work (``preprocess``, ``image_encoder``,
    ``prompt_encoder.embed_sparse``/``forward``, ``mask_decoder.predict_masks``); this module only
    decides what to prompt. It is what ``DistributedDataParallel`` wraps.
    """

    def __init__(self, sam: nn.Module, config: TrainConfig, criterion: Optional[SamLoss] = None) -> None:
        super().__init__()
        self.sam = sam
        self.criterion = criterion or SamLoss(
            config.focal_weight, config.dice_weight, config.iou_weight, config.focal_alpha, config.focal_gamma,
            recompute=config.recompute_loss, fused=config.fused_loss,
        )
        self.rounds = config.rounds
        self.points_per_round = config.points_per_round
        self.box_probability = config.box_probability
        self.box_noise_std = config.box_noise_std
        self.box_noise_max = config.box_noise_max
        self.detach_mask_prompt = config.detach_mask_prompt
        self.loss_resolution = config.loss_resolution
        self.first_round_weight = config.first_round_weight
        self.multimask_box = config.multimask_box
        self.frozen = frozen_parts(config.mode)
        for name in self.frozen:
            getattr(sam, name).requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "SamTrainingModel":
        super().train(mode)
        for name in self.frozen:  # frozen parts always behave as at inference (no drop path)
            getattr(self.sam, name).eval()
        return self

    def forward(
        self,
        images: List[Tensor],
        targets: Tensor,
        image_valid: Tensor,
        image_indices: Tensor,
        generator: Optional[torch.Generator] = None,
        backward_scale: Optional[float] = None,
    ) -> Dict[str, Tensor]:
        """Losses of one batch.

        With ``backward_scale`` (the trainer's ``round_backward``) each round's loss, times
        ``backward_scale``, is back-propagated as soon as it is computed, into a detached copy of the image
        embedding whose gradient reaches the encoder once at the end: the same gradients (the rounds only
        share the embedding, the mask prompts being detached), with one round's decoder activations alive
        at a time instead of all of them. The returned losses are then detached.

        Args:
            images: ``I`` tensors ``3×h×w`` (0–255, resized to a longest side of ``img_size``).
            targets: ``B×S×S`` bool GT masks in the padded input frame.
            image_valid: ``I×S×S`` bool, True on image pixels (False on padding).
            image_indices: ``B`` long, the image of every mask.
            generator: the source of every random draw of the prompt simulation.
        Returns:
            scalars ``loss`` (to back-propagate: the mean over masks and rounds, the first round
            weighted by ``first_round_weight``), ``focal``, ``dice``, ``iou_mse`` (plain means over rounds
            and masks) and ``miou`` (IoU with the GT of the mask passed on by each round; no gradient).
        """
        sam = self.sam
        x = torch.stack([sam.preprocess(image) for image in images])
        with torch.no_grad() if "image_encoder" in self.frozen else contextlib.nullcontext():
            embeddings = sam.image_encoder(x)
        b = targets.shape[0]
        if b == 0:  # no mask in the batch: a zero loss that still reaches every trainable parameter
            zero = sum((p.sum() for p in self.parameters() if p.requires_grad), embeddings.sum()) * 0.0
            if backward_scale is not None:
                self._backward(zero * backward_scale)
                zero = zero.detach()
            return {"loss": zero, **{k: zero.detach() for k in METRIC_NAMES[1:]}}
        encoder_out = embeddings
        if backward_scale is not None:  # the rounds hang off a leaf; the encoder gets its gradient at the end
            embeddings = embeddings.detach().requires_grad_(encoder_out.requires_grad)

        size = targets.shape[-2:]
        valid = image_valid[image_indices]
        loss_target, loss_valid = targets, valid
        if self.loss_resolution == "low_res":
            low = sam.prompt_encoder.mask_input_size
            loss_target = F.interpolate(targets[:, None].float(), low, mode="area")[:, 0] >= 0.5
            loss_valid = F.interpolate(valid[:, None].float(), low, mode="area")[:, 0] >= 0.5

        image_pe = sam.prompt_encoder.get_dense_pe()
        kinds = round_schedule(self.rounds, generator)
        # per-round loss weights averaging 1, so the mean over rounds below is Σ w_r·L_r / Σ w_r
        weights = [self.first_round_weight] + [1.0] * (len(kinds) - 1)
        norm = len(kinds) / sum(weights)
        weights = [w * norm for w in weights]
        first = initial_prompts(targets, valid, generator, self.box_probability, self.box_noise_std, self.box_noise_max)
        clicks = first.coords.new_zeros((b, 0, 2))
        click_labels = first.labels.new_zeros((b, 0))
        mask_prompt: Optional[Tensor] = None
        prediction: Optional[Tensor] = None
        rows = torch.arange(b, device=targets.device)
        totals = {k: torch.zeros((), device=targets.device) for k in METRIC_NAMES}

        for kind, weight in zip(kinds, weights):
            if kind == POINT:  # correction click(s) from the previous round's error region
                new_coords, new_labels = error_points(prediction, targets, valid, generator, self.points_per_round)
                clicks = torch.cat([clicks, new_coords], dim=1)
                click_labels = torch.cat([click_labels, new_labels], dim=1)
            coords, labels = assemble_sparse(first, clicks, click_labels)
            sparse = sam.prompt_encoder.embed_sparse(coords, labels)
            _, dense = sam.prompt_encoder(None, None, mask_prompt)
            masks, iou_pred = sam.mask_decoder.predict_masks(embeddings, image_pe, sparse, dense, image_indices=image_indices)

            multimask = multimask_rows(first, 1 + clicks.shape[1] + (mask_prompt is not None), self.multimask_box)
            out = self.criterion(masks, iou_pred, loss_target, loss_valid, multimask_output=multimask)

            # §A: the mask passed on (as prompt and for the next click) is the highest-scoring of the 3
            # when several are returned, else the single output.
            best_of_3 = iou_pred[:, 1:].detach().argmax(dim=1) + 1
            chosen = torch.where(torch.as_tensor(multimask, device=masks.device), best_of_3, torch.zeros_like(best_of_3))
            logits = masks[rows, chosen]  # B×h×w low-res logits, unthresholded
            mask_prompt = (logits.detach() if self.detach_mask_prompt else logits)[:, None]
            with torch.no_grad():
                full = resize_bilinear(logits.detach()[:, None].float(), size)[:, 0]
                prediction = full > 0
                totals["miou"] = totals["miou"] + iou_of(full, targets, valid).mean()
            loss = out.loss * weight
            if backward_scale is not None:
                self._backward(loss * (backward_scale / len(kinds)))
                loss = loss.detach()
            totals["loss"] = totals["loss"] + loss
            for key in ("focal", "dice", "iou_mse"):
                value = getattr(out, key)
                totals[key] = totals[key] + (value.detach() if backward_scale is not None else value)

        if backward_scale is not None and encoder_out.requires_grad and embeddings.grad is not None:
            self._backward(encoder_out, embeddings.grad)
        return {k: v / len(kinds) for k, v in totals.items()}

    @staticmethod
    def _backward(tensor: Tensor, grad: Optional[Tensor] = None) -> None:
        with torch.autocast(tensor.device.type, enabled=False):  # backward outside autocast, as recommended
            tensor.backward(grad)


# ---------------------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    from promptseg.hub import usable_device

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:1, …)") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return usable_device(device, "device")


def init_distributed(device_name: str) -> Tuple[DistInfo, torch.device]:
    """Initialise ``torch.distributed`` when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo(), resolve_device(device_name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local)
    created = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, created), device


# ------------------------------------------------------------------------------------------------- RNG
def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing ``parts`` (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state() -> Dict[str, Any]:
    """Global RNG states as tensors and primitives (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# ---------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    steps: int  # optimiser steps completed (in all, including those before a resume)
    history: List[Dict[str, float]] = field(default_factory=list)  # one row per step run here
    out_dir: Optional[Path] = None
    model_path: Optional[Path] = None  # the model the run produced (the weight average, when the config keeps one)
    raw_model_path: Optional[Path] = None  # with weight averaging: the optimiser's last weights
    last_checkpoint: Optional[Path] = None
    seconds: float = 0.0
    steps_per_second: float = 0.0
    time_limited: bool = False  # stopped by ``time_limit`` before ``max_steps`` (a checkpoint was written)


def checkpoint_path(out_dir: PathLike, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: PathLike) -> List[Path]:
    folder = Path(out_dir) / "checkpoints"
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


#: ``OUT/checkpoints/latest`` names the checkpoint written last.
LATEST_FILE = "latest"


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The checkpoint written last in ``out_dir`` (``checkpoints/latest``), else the one of the highest step.

    They differ after a run resumed from an earlier checkpoint: the abandoned run's later checkpoints may
    still be there (``keep_checkpoints: 0``), and continuing from them would drop the resumed run's steps."""
    existing = list_checkpoints(out_dir)
    pointer = Path(out_dir) / "checkpoints" / LATEST_FILE
    if pointer.is_file():
        named = pointer.parent / pointer.read_text(encoding="utf-8").strip()
        if named in existing:
            return named
    return existing[-1] if existing else None


class Trainer:
    """Build everything from a :class:`TrainConfig` and run :meth:`train`.

    ``resume``: None/False — a fresh run (refused if ``out_dir`` already holds checkpoints);
    True or ``"auto"`` — continue from the checkpoint written last in ``out_dir`` (:func:`latest_checkpoint`;
    fresh if there is none);
    a path — continue from that checkpoint file.

    The loop, checkpoints, exact resume, metrics CSV and DDP handling are model-agnostic: another model's
    trainer (e.g. :mod:`promptseg.train.seggpt`) subclasses this one: its ``__init__`` calls
    :meth:`_setup_run`, builds its model, ``self.module`` (the training module), :meth:`_wrap_module`,
    ``self.optimizer`` and ``self.scheduler``, then :meth:`_setup_data` and :meth:`_start`; its config is
    a :class:`~promptseg.train.config.LoopConfig` (the fields read here); it overrides :attr:`metric_names`,
    :attr:`network`, :meth:`_to_device` and :meth:`export_model`. ``self.model(generator=…, **batch)``
    must return a dict with a scalar tensor for every name in :attr:`metric_names` (``"loss"`` first,
    ``"miou"`` among them: the progress bar shows both).
    """

    #: Metrics returned by the training module, logged per step (``loss`` is back-propagated).
    metric_names: Tuple[str, ...] = METRIC_NAMES

    @property
    def csv_columns(self) -> Tuple[str, ...]:
        return ("step", "lr") + tuple(self.metric_names)

    @property
    def network(self) -> nn.Module:
        """The model whose ``state_dict`` is checkpointed (not the DDP / training wrapper)."""
        return self.sam

    def export_model(self, path: Path) -> None:
        """Write the final model (rank 0 only)."""
        from promptseg.models.sam.weights import save_sam

        save_sam(self.sam, path)

    def __init__(self, config: TrainConfig, resume: Union[None, bool, str, PathLike] = None) -> None:
        self._setup_run(config, resume)
        seed_everything(config.seed)  # same initial weights on every rank
        self.sam = build_model(config).to(self.device)
        self.module = SamTrainingModel(self.sam, config).to(self.device)
        if config.round_backward and self.dist.enabled:
            raise ValueError("round_backward back-propagates inside the forward pass, which DistributedDataParallel "
                             "does not allow: use it in single-process runs")
        self._wrap_module(find_unused_parameters=config.rounds < 2)  # 1 round never uses the mask-prompt branch
        self.optimizer = build_optimizer(self.sam, config.lr, config.weight_decay, config.layer_decay, config.betas)
        self.scheduler = build_scheduler(self.optimizer, config.warmup, config.milestones, config.lr_gamma)

        dataset = build_dataset(config.dataset.type, config.dataset.options)
        img_size = self.sam.image_encoder.img_size
        samples = TrainSamples(
            dataset, img_size, config.masks_per_image, config.max_mask_area, config.seed, config.min_mask_area
        )
        self._setup_data(samples, collate_train)
        self._start()

    # ------------------------------------------------------------------------------------------- setup
    # The steps of ``__init__`` shared with other models' trainers (see the class docstring).
    def _setup_run(self, config: Any, resume: Union[None, bool, str, PathLike]) -> None:
        self.config = config
        self.dist, self.device = init_distributed(config.device)
        self.out_dir = Path(config.out_dir)
        self.resume_from = self._resume_path(resume)
        self._masks_seen: Optional[int] = None  # SAM masks trained since train() began (None: no SAM batch yet)

    def _wrap_module(self, find_unused_parameters: bool = False) -> None:
        """``self.model``: ``self.module``, in ``DistributedDataParallel`` when distributed."""
        self.model: nn.Module = self.module
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )

    def _setup_data(self, samples: Any, collate_fn: Any, what: str = "images") -> None:
        """Sampler and loader over ``samples`` (a dataset indexed by ``(epoch, index)`` keys)."""
        config = self.config
        self.samples = samples
        self.sampler = ResumableSampler(self.samples, self.dist.world_size, self.dist.rank, config.shuffle, config.seed)
        self.batches_per_epoch = self.sampler.num_samples // config.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"dataset of {len(self.samples)} {what} is too small for batch_size {config.batch_size} on "
                f"{self.dist.world_size} process(es)"
            )
        self.loader = DataLoader(
            self.samples,
            batch_size=config.batch_size,
            sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=config.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed),  # never draws from the global RNG
        )

    def _start(self) -> None:
        """Step counters, then the resumed state or the per-rank RNG stream of a fresh run."""
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.trainable = [p for p in self.network.parameters() if p.requires_grad]
        self._writer: Any = None
        cfg = self.config
        self.average: Optional[WeightAverage] = (
            WeightAverage(cfg.average, cfg.average_decay, cfg.average_start) if cfg.average else None
        )

        if self.resume_from is not None:
            self._load(self.resume_from)
        else:
            seed_everything(derive_seed(self.config.seed, 0xD12, self.dist.rank))  # per-rank drop-path stream

    # ------------------------------------------------------------------------------------------ resume
    def _resume_path(self, resume: Union[None, bool, str, PathLike]) -> Optional[Path]:
        existing = list_checkpoints(self.out_dir)
        if resume is None or resume is False:
            if existing:
                raise ValueError(
                    f"{self.out_dir} already holds checkpoints ({existing[-1].name}); resume the run "
                    "(--resume) or choose another output directory (--out)"
                )
            return None
        if resume is True or resume == "auto":
            if not existing:
                logger.info("no checkpoint in %s: starting from scratch", self.out_dir)
                return None
            return latest_checkpoint(self.out_dir)
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path

    def _load(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise ValueError(f"cannot read training checkpoint {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a promptseg training checkpoint")
        saved = json.loads(state["config"])
        try:
            self.network.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:  # another architecture, or other parameters trained
            now = self.config.to_dict()
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(
                f"cannot resume from {path}: its model or optimizer state does not fit this config (changed since "
                f"the checkpoint: {', '.join(changed) or 'nothing'}); resume with the run's config or start a new "
                f"run (--out)"
            ) from err
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_schedule()
        if self.average is not None:
            if "average" in state:
                self.average.load_state_dict(state["average"], device=self.device)
            else:
                logger.warning("%s holds no weight average: averaging starts afresh from step %d", path, int(state["step"]))
        self.step = int(state["step"])
        self.epoch = int(state["data"]["epoch"])
        self.batch_in_epoch = int(state["data"]["batch"])
        if saved.get("batch_size") != self.config.batch_size or state.get("world_size") != self.dist.world_size:
            logger.warning("resuming with a different batch size or world size: the data order is not continued exactly")
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            seed_everything(derive_seed(self.config.seed, 0xD12, self.dist.rank, self.step))
        logger.info("resumed from %s at step %d", path, self.step)

    def _apply_schedule(self) -> None:
        """Give the resumed scheduler the warmup/milestones/gamma of the config in use, not the saved
        ones: a run can be extended (``--max-steps`` with later milestones) and, as long as no milestone
        has been passed, continues exactly as if it had been started with the new config."""
        schedule = WarmupStepDecay(self.config.warmup, self.config.milestones, self.config.lr_gamma)
        changed = False
        for fn in self.scheduler.lr_lambdas:
            if isinstance(fn, WarmupStepDecay) and vars(fn) != vars(schedule):
                logger.info("resumed run follows the lr schedule of its config %s (was %s)", vars(schedule), vars(fn))
                fn.__dict__.update(vars(schedule))
                changed = True
        if changed:  # the saved lrs are the old schedule's for the step about to be taken: recompute them
            step = self.scheduler.last_epoch
            for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                group["lr"] = base * fn(step)

    def _save(self) -> Path:
        rng = capture_rng_state()
        all_rng = [rng]
        if self.dist.enabled:
            all_rng = [None] * self.dist.world_size  # type: ignore[list-item]
            dist.all_gather_object(all_rng, rng)
        path = checkpoint_path(self.out_dir, self.step)
        if self.dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": self.step,
                "config": json.dumps(self.config.to_dict()),
                "world_size": self.dist.world_size,
                "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "data": {"epoch": self.epoch, "batch": self.batch_in_epoch},
                "rng": all_rng,
            }
            model_config = getattr(self.network, "config", None)
            if hasattr(model_config, "to_dict"):  # so that the file alone rebuilds its model (promptseg average)
                state["model_config"] = model_config.to_dict()
            if self.average is not None:
                state["average"] = self.average.state_dict()
            atomic_write(path, lambda tmp: torch.save(state, tmp), durable=True)  # resume needs it whole
            atomic_write(path.parent / LATEST_FILE, lambda tmp: Path(tmp).write_text(path.name + "\n", encoding="utf-8"))
            keep = self.config.keep_checkpoints
            if keep:  # those of later steps, left by a run resumed from an earlier one, go first: never this one
                for old in sorted(list_checkpoints(self.out_dir), key=lambda p: p.name <= path.name)[:-keep]:
                    old.unlink(missing_ok=True)
        if self.dist.enabled:
            dist.barrier()
        return path

    # -------------------------------------------------------------------------------------------- data
    def _batches(self) -> Iterator[Dict[str, Any]]:
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.batch_in_epoch * self.config.batch_size
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        nb = self.device.type == "cuda"
        return {
            "images": [im.to(self.device, non_blocking=nb) for im in batch["images"]],
            "targets": batch["targets"].to(self.device, non_blocking=nb),
            "image_valid": batch["image_valid"].to(self.device, non_blocking=nb),
            "image_indices": batch["image_indices"].to(self.device, non_blocking=nb),
        }

    # ----------------------------------------------------------------------------------------- logging
    def _open_logs(self) -> None:
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = self.config.to_json() + "\n"
        atomic_write(self.out_dir / "config.json", lambda tmp: Path(tmp).write_text(text))
        csv_path = self.out_dir / "metrics.csv"
        rows: List[List[str]] = []
        if (self.resume_from is not None or self.step > 0) and csv_path.is_file():  # drop rows after this step
            with open(csv_path, newline="") as f:
                reader = csv.reader(f)
                next(reader, None)
                rows = [r for r in reader if r and int(r[0]) <= self.step]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.csv_columns)
                writer.writerows(rows)

        atomic_write(csv_path, write)
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed: logging to metrics.csv only")
            else:
                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1)

    def _log(self, row: Dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out_dir / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([int(row["step"])] + [repr(float(row[k])) for k in self.csv_columns[1:]])
        if self._writer is not None:
            for key in self.csv_columns[1:]:
                self._writer.add_scalar(f"train/{key}", row[key], int(row["step"]))

    # ------------------------------------------------------------------------------------------- train
    def train_step(self, batches: Iterator[Dict[str, Any]]) -> Dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches); returns its metrics (means over ranks)."""
        cfg = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(len(self.metric_names), device=self.device)
        round_backward = {"backward_scale": 1.0 / cfg.grad_accum} if getattr(cfg, "round_backward", False) else {}
        for micro in range(cfg.grad_accum):
            batch = self._to_device(next(batches))
            if "targets" in batch:  # SAM batches: masks that reached training (see _check_masks_seen)
                self._masks_seen = (self._masks_seen or 0) + int(batch["targets"].shape[0])
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(cfg.seed, self.step, micro, self.dist.rank))
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.model.no_sync()  # type: ignore[operator]
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    out = self.model(generator=generator, **batch, **round_backward)
                if not round_backward:
                    (out["loss"] / cfg.grad_accum).backward()
            sums += torch.stack([out[k].detach().float() for k in self.metric_names])
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip_grad_norm)
        lr = self.optimizer.param_groups[-1]["lr"]  # the last group (decoder side) has lr_scale 1
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.average is not None:
            self.average.update(self.network, self.step)
        metrics = sums / cfg.grad_accum
        if self.dist.enabled:
            dist.all_reduce(metrics)
            metrics /= self.dist.world_size
        values = metrics.tolist()
        return {"step": float(self.step), "lr": float(lr), **dict(zip(self.metric_names, values))}

    def _check_masks_seen(self, steps: int) -> None:
        """Fail when the first ``steps`` steps of this call trained no mask on any process: every mask was
        empty or outside the area limits, and the run would export a model changed only by weight decay."""
        if self._masks_seen is None:  # batches without SAM targets (SegGPT pairs check their own)
            return
        count = torch.tensor([self._masks_seen], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            dist.all_reduce(count)
        if count.item() == 0:
            cfg = self.config
            raise ValueError(
                f"no mask reached training in {steps} step(s): every mask of those images was empty or outside "
                f"min_mask_area {getattr(cfg, 'min_mask_area', None)} / max_mask_area "
                f"{getattr(cfg, 'max_mask_area', None)} (fractions of the image); check the dataset and these limits"
            )

    def train(self, max_steps: Optional[int] = None, time_limit: Optional[float] = None) -> TrainResult:
        """Train until ``max_steps`` (default: the config's) optimiser steps; export the final model.

        ``time_limit`` (seconds of this call): once a step ends past it, write a checkpoint, export the
        model trained so far and return with ``time_limited`` set — a job under a wall-clock limit (a
        cluster's, a lease's) stops cleanly and ``--resume`` continues it exactly."""
        from tqdm.auto import tqdm

        cfg = self.config
        total = cfg.max_steps if max_steps is None else max_steps
        self._open_logs()
        result = TrainResult(steps=self.step, out_dir=self.out_dir)
        batches = self._batches()
        bar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (cfg.progress and self.dist.is_main))
        start, first_step = time.perf_counter(), self.step
        self._masks_seen = None
        last_saved: Optional[Path] = None
        try:
            while self.step < total:
                row = self.train_step(batches)
                result.history.append(row)
                if not all(math.isfinite(row[k]) for k in self.metric_names):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {row}")
                bar.set_postfix(loss=f"{row['loss']:.4f}", miou=f"{row['miou']:.3f}", refresh=False)
                bar.update(1)  # shows this step's postfix
                if self.step - first_step == min(cfg.log_every, total - first_step):
                    self._check_masks_seen(self.step - first_step)
                if self.step % cfg.log_every == 0 or self.step == total:
                    self._log(row)
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    last_saved = self._save()
                if time_limit is not None and self.step < total and self._out_of_time(start, time_limit):
                    if last_saved != checkpoint_path(self.out_dir, self.step):
                        last_saved = self._save()
                    result.time_limited = True
                    logger.info("time limit of %.0f s reached at step %d: checkpoint written", time_limit, self.step)
                    break
        finally:
            batches.close()  # the loader's worker processes stop now, not when an exception's traceback is freed
            bar.close()
            if self._writer is not None:
                self._writer.close()
        result.seconds = time.perf_counter() - start
        done = self.step - first_step
        result.steps_per_second = done / result.seconds if result.seconds > 0 and done else 0.0
        result.steps = self.step
        result.last_checkpoint = last_saved
        if self.dist.is_main:
            result.model_path = self.out_dir / "model.safetensors"
            if self.average is not None and self.average.count:
                result.raw_model_path = self.out_dir / "model_raw.safetensors"
                self.export_model(result.raw_model_path)
                with self.average.swapped_in(self.network):
                    self.export_model(result.model_path)
            else:
                if self.average is not None:
                    logger.warning("no step averaged yet (averaging starts after step %d): %s holds the "
                                   "optimiser's weights", self.average.start, result.model_path)
                self.export_model(result.model_path)
        if self.dist.enabled:
            dist.barrier()
        return result

    def _out_of_time(self, start: float, limit: float) -> bool:
        """Whether ``limit`` seconds have passed since ``start`` — rank 0's clock decides for every rank."""
        over = time.perf_counter() - start >= limit
        if not self.dist.enabled:
            return over
        flag = torch.tensor(float(over), device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def close(self) -> None:
        if self.dist.created_group and dist.is_initialized():
            dist.destroy_process_group()


def train(
    config: TrainConfig, resume: Union[None, bool, str, PathLike] = None, max_steps: Optional[int] = None,
    trainer_class: type = Trainer, time_limit: Optional[float] = None,
) -> TrainResult:
    """Build a ``trainer_class`` (:class:`Trainer` or a subclass) for ``config`` and run it (see
    :class:`Trainer` for ``resume``, :meth:`Trainer.train` for ``time_limit`` in seconds)."""
    trainer = trainer_class(config, resume=resume)
    try:
        return trainer.train(max_steps, time_limit=time_limit)
    finally:
        trainer.close()
