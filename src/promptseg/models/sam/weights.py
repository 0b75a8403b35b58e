"""SAM weights in and out: official checkpoints, promptseg safetensors, config inference."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from promptseg.checkpoint import (
    CheckpointError,
    PathLike,
    average_state_dicts,
    load_state_dict_strict,
    read_state_dict,
    save_safetensors,
)
from promptseg.config_utils import missing_keys
from promptseg.layers.positions import resize_pos_grid, resize_rel_pos
from promptseg.models.sam.build import build_sam
from promptseg.models.sam.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from promptseg.models.sam.sam import Sam

FORMAT = "promptseg-sam"
logger = logging.getLogger(__name__)


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_sam_config(state: Mapping[str, Tensor]) -> SamConfig:
    """Recover the architecture of an official-layout SAM state dict from its tensor shapes.

    Decoder head counts are not visible in the weights; the official value (8) is assumed.
    """
    try:
        patch = state["image_encoder.patch_embed.proj.weight"]
        embed_dim, _, patch_size, _ = patch.shape
        depth = _count(state, "image_encoder.blocks.")
        pos = state.get("image_encoder.pos_embed")
        rel = "image_encoder.blocks.0.attn.rel_pos_h"
        head_dim = state[rel].shape[1] if rel in state else 64
        grid = pos.shape[1] if pos is not None else None
        rel_lengths = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)] if rel in state else []
        if grid is None:
            if len(set(rel_lengths)) < 2:  # all windowed or all global: the grid is not in the weights
                raise CheckpointError(
                    "cannot infer the input size: no pos_embed, and no global-attention block told apart from the "
                    "windowed ones by its relative-position table; pass the model's config"
                )
            grid = (max(rel_lengths) + 1) // 2
        global_idx = tuple(i for i, n in enumerate(rel_lengths) if n == 2 * grid - 1)
        window = min(((n + 1) // 2 for n in rel_lengths if n != 2 * grid - 1), default=14)
        encoder = ImageEncoderConfig(
            img_size=grid * patch_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dim,
            mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
            out_chans=state["image_encoder.neck.0.weight"].shape[0],
            qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state,
            use_abs_pos=pos is not None,
            use_rel_pos=rel in state,
            window_size=window,
            global_attn_indexes=global_idx,
        )
        dim = state["mask_decoder.iou_token.weight"].shape[1]
        q_proj = state["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"]
        decoder = MaskDecoderConfig(
            transformer_dim=dim,
            transformer_depth=_count(state, "mask_decoder.transformer.layers."),
            mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            attention_downsample_rate=dim // q_proj.shape[0],
            num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_depth=_count(state, "mask_decoder.iou_prediction_head.layers."),
            iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        )
        prompt = PromptEncoderConfig(
            embed_dim=dim, mask_in_chans=state["prompt_encoder.mask_downscaling.3.weight"].shape[0]
        )
    except KeyError as err:
        raise CheckpointError(f"not a SAM checkpoint: key {err.args[0]!r} is missing") from err
    except (ValueError, ZeroDivisionError) as err:  # shapes no SAM config fits, e.g. a 32-wide ViT taken for 64-dim heads
        raise CheckpointError(f"cannot infer a SAM config from the tensor shapes ({err}); pass the model's config") from err
    return SamConfig(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def _stored_config(stored: Mapping[str, Any], source: PathLike) -> SamConfig:
    """The SAM config embedded in checkpoint ``source``; a :class:`CheckpointError` naming the file if invalid
    or incomplete (promptseg writes every field: a default for a missing one, such as the decoder's head
    count, would silently build another model than the file's)."""
    try:
        config = SamConfig.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {source} has an invalid embedded SAM config: {err}") from err
    missing = missing_keys(config, stored)
    if missing:
        raise CheckpointError(f"checkpoint {source} has an invalid embedded SAM config: missing key(s) {missing}")
    return config


def _inferred_config(state: Mapping[str, Tensor], source: PathLike) -> SamConfig:
    """:func:`infer_sam_config` of checkpoint ``source``'s weights; its errors name the file."""
    try:
        return infer_sam_config(state)
    except ValueError as err:  # CheckpointError included
        raise CheckpointError(f"checkpoint {source}: {err}") from err


def load_sam(
    checkpoint: PathLike,
    *,
    config: Optional[Union[SamConfig, str]] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder_dtype: Optional[torch.dtype] = None,
    transformer_dtype: Optional[torch.dtype] = None,
) -> Sam:
    """Build and load a SAM from ``checkpoint`` (official ``.pth`` or promptseg ``.safetensors``).

    The architecture comes from ``config`` if given, else from the file's embedded config, else it is
    inferred from the tensor shapes. ``encoder_dtype`` (default ``dtype``) sets the image encoder's
    precision on its own: ``dtype=torch.float32, encoder_dtype=torch.bfloat16`` runs the encoder — nearly
    all the FLOPs — in bfloat16 and the light decoder in float32, whose masks stay closer to float32's
    than an all-bfloat16 model's. ``transformer_dtype`` (default ``dtype``) likewise sets the mask decoder's
    two-way transformer alone: with both in bfloat16 (and the mask upscaling, heads and prompt encoder in
    float32) automatic mask generation runs ≈ 1.25× faster than float32 and keeps the reference's mask set
    (IoU ≥ 0.95 matches), where an all-bfloat16 model loses a few percent of them.
    """
    parts = {"encoder_dtype": encoder_dtype, "transformer_dtype": transformer_dtype}
    for name, value in {"dtype": dtype, **{k: v for k, v in parts.items() if v is not None}}.items():
        if not (isinstance(value, torch.dtype) and value.is_floating_point):
            raise TypeError(f"{name} must be a floating torch.dtype such as torch.bfloat16, got {value!r}")
    from promptseg.hub import usable_device

    device = usable_device(device, "device")
    state, stored = read_state_dict(checkpoint)
    if config is None:
        config = _stored_config(stored, checkpoint) if stored is not None else _inferred_config(state, checkpoint)
    model = build_sam(config)
    load_state_dict_strict(model, state, source=f"checkpoint {checkpoint}")
    model = model.to(device=device, dtype=dtype)
    if encoder_dtype is not None and encoder_dtype != dtype:
        model.image_encoder.to(dtype=encoder_dtype)
    if transformer_dtype is not None and transformer_dtype != dtype:
        model.mask_decoder.transformer.to(dtype=transformer_dtype)
    return model


def _config_of(model: Sam) -> SamConfig:
    if model.config is None:
        raise ValueError("model has no config; build it with promptseg.build_sam or load_sam")
    return model.config


def save_sam(model: Sam, path: PathLike) -> None:
    """Save ``model`` in promptseg's format: float32 safetensors with the JSON config in the header."""
    config = _config_of(model)
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_safetensors(state, path, config.to_dict(), FORMAT)


def with_patch_size(model: Sam, patch_size: int) -> Sam:
    """A copy of ``model`` whose image encoder cuts ``patch_size``-px patches of the same input size.

    ``patch_size`` must divide the current patch size (factor ``f``): the new model has ``f×f`` as many
    image tokens (and ``f``× the mask resolution). Each ``f×f`` block of the old patch kernel is summed,
    so the new patch embedding of an image equals the old one of that image upsampled ``f``× by
    nearest neighbour; the absolute position table is resized bicubically and the global blocks'
    relative tables linearly (as :func:`~promptseg.models.sam.image_encoder.get_rel_pos` resizes them
    at run time). Windowed blocks keep their window in tokens, so it covers ``1/f`` of the pixels.
    Prompt encoder and mask decoder are resolution-free and copied unchanged. This gives a
    fine-tuning start at the finer token grid, not a model equal to the original.
    """
    enc = _config_of(model).image_encoder
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1 or enc.patch_size % patch_size:
        raise ValueError(f"patch_size must be a positive integer dividing the current patch size {enc.patch_size}, got {patch_size!r}")
    factor = enc.patch_size // patch_size
    config = dataclasses.replace(model.config, image_encoder=dataclasses.replace(enc, patch_size=patch_size))
    resized = build_sam(config)
    target = resized.state_dict()
    state: Dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().float() if value.is_floating_point() else value
        shape = target[key].shape
        if key == "image_encoder.patch_embed.proj.weight":
            c, i, kh, kw = value.shape
            value = value.reshape(c, i, kh // factor, factor, kw // factor, factor).sum((3, 5))
        elif key == "image_encoder.pos_embed":
            value = resize_pos_grid(value, tuple(shape[1:3]))
        elif key.endswith((".rel_pos_h", ".rel_pos_w")):
            value = resize_rel_pos(value, shape[0])
        state[key] = value
    load_state_dict_strict(resized, state, source=f"{enc.patch_size}-px model resized to {patch_size}-px patches")
    return resized


def with_inserted_blocks(model: Sam, after: Sequence[int]) -> Sam:
    """A deeper copy of ``model``: a new windowed ViT block after each encoder block index in ``after``.

    Function-preserving growth (zero-initialised residual branches): each new block copies the norms,
    attention and MLP input weights of the nearest windowed block at or before its place (the first
    windowed block if none) and has its attention output projection and second MLP layer set to zero,
    so it starts as the identity and the grown model computes what ``model`` computes; training then
    uses the new capacity. Global blocks keep their global attention at their shifted indexes. An index
    may repeat (two new blocks in a row); ``-1`` inserts before the first block. The copy is a float32
    model on the CPU, like :func:`with_patch_size`'s.
    """
    enc = _config_of(model).image_encoder
    if isinstance(after, (str, bytes)) or not isinstance(after, Sequence) or not after:
        raise ValueError(f"after must be a non-empty sequence of block indexes in [-1, {enc.depth - 1}], got {after!r}")
    bad = [i for i in after if not isinstance(i, int) or isinstance(i, bool) or not -1 <= i < enc.depth]
    if bad:
        raise ValueError(f"after must hold block indexes in [-1, {enc.depth - 1}], got {bad}")
    windowed = [i for i in range(enc.depth) if i not in enc.global_attn_indexes]
    if not windowed:
        raise ValueError("the encoder has no windowed block to copy the new blocks from")
    order: List[Tuple[int, bool]] = []  # per block of the grown encoder: (block copied from, is it new)
    for old in range(-1, enc.depth):
        if old >= 0:
            order.append((old, False))
        template = max((i for i in windowed if i <= old), default=windowed[0])
        order.extend([(template, True)] * list(after).count(old))
    global_idx = tuple(n for n, (src, new) in enumerate(order) if not new and src in enc.global_attn_indexes)
    config = dataclasses.replace(
        model.config, image_encoder=dataclasses.replace(enc, depth=len(order), global_attn_indexes=global_idx)
    )
    grown = build_sam(config)
    old_state = model.state_dict()
    state: Dict[str, Tensor] = {}
    for key, value in old_state.items():  # loading copies, so the model's tensors can be passed as they are
        if not key.startswith("image_encoder.blocks."):
            state[key] = value
    for n, (src, new) in enumerate(order):
        prefix = f"image_encoder.blocks.{src}."
        for key in (k for k in old_state if k.startswith(prefix)):
            value = old_state[key]
            name = key[len(prefix):]
            if new and name.startswith(("attn.proj.", "mlp.lin2.")):  # the residual branch's last layers
                value = torch.zeros_like(value)
            state[f"image_encoder.blocks.{n}.{name}"] = value
    load_state_dict_strict(grown, state, source=f"{enc.depth}-block encoder grown to {len(order)} blocks")
    return grown


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    config: Optional[Union[SamConfig, str]] = None,
    patch_size: Optional[int] = None,
    insert_blocks: Optional[Sequence[int]] = None,
) -> SamConfig:
    """Convert an official SAM ``.pth`` (or any loadable SAM checkpoint) to promptseg safetensors,
    optionally with finer patches (:func:`with_patch_size`) and then a deeper encoder
    (:func:`with_inserted_blocks`)."""
    model = load_sam(src, config=config)
    if patch_size is not None:
        model = with_patch_size(model, patch_size)
    if insert_blocks is not None:
        model = with_inserted_blocks(model, insert_blocks)
    save_sam(model, dst)
    return model.config


def _architecture(config: SamConfig) -> SamConfig:
    """``config`` without its training-only setting, the encoder's drop-path rate (no-op in eval mode): what
    the checkpoints of one averaging must share (siblings trained with and without drop path average)."""
    return dataclasses.replace(config, image_encoder=dataclasses.replace(config.image_encoder, drop_path_rate=0.0))


def average_checkpoints(
    sources: Sequence[PathLike],
    dst: PathLike,
    weights: Optional[Sequence[float]] = None,
    config: Optional[Union[SamConfig, str]] = None,
) -> SamConfig:
    """Write the weighted mean of the SAM checkpoints ``sources`` to ``dst`` (promptseg safetensors).

    Averaging the weights of models fine-tuned from one start — the checkpoints of a run (stochastic weight
    averaging after the fact) or the ends of several training cycles (a "model soup") — often gives a model
    better than each. Sources are any files :func:`load_sam` reads, training checkpoints (``step_*.pt``)
    included (their optimiser's weights, not a run's weight average, which only ``model.safetensors``
    holds); ``weights`` (default: equal) are normalised. The architecture is the config promptseg files and
    training checkpoints among the sources embed (the first's; they must agree with each other and with
    ``config`` if given, but for the training-only drop-path rate), else ``config``, else inferred from the
    weights (decoder head count assumed official: a warning says so). Mismatched files raise ``ValueError``
    naming the file.
    """
    sources = list(sources)
    if not sources:
        raise ValueError("sources: give at least one checkpoint to average")
    weights = [1.0] * len(sources) if weights is None else list(weights)
    if len(weights) != len(sources):
        raise ValueError(f"weights: {len(weights)} weights for {len(sources)} checkpoints")
    embedded: Dict[str, SamConfig] = {}

    def states():
        for src in sources:
            state, stored = read_state_dict(src)
            if stored is not None:
                embedded[str(src)] = _stored_config(stored, src)
            # in float32: the mean comes back in the first state's dtype (not bfloat16 if that is the first
            # file's) and is saved as float32 anyway
            yield str(src), {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    averaged = average_state_dicts(states(), weights)
    if embedded:  # sources that embed their architecture must agree, whatever ``config`` says
        (first_name, first), *others = embedded.items()
        for name, other in others:
            if _architecture(other) != _architecture(first):
                raise ValueError(f"{name} embeds another architecture than {first_name}: not averageable")
    if config is None and embedded:
        config = first
    elif config is None:
        config = _inferred_config(averaged, sources[0])
        logger.warning("no source embeds its architecture: inferred from the weights, with the official "
                       "decoder head count (8); pass the config (--model-type) if that is wrong")
    model = build_sam(config)
    if embedded and _architecture(model.config) != _architecture(first):
        raise ValueError(f"config: the given architecture is not the one {first_name} embeds: not averageable "
                         "(leave it unset to use the embedded one)")
    load_state_dict_strict(model, averaged, source=f"the average of {len(sources)} checkpoints")
    save_sam(model, dst)
    return _config_of(model)
