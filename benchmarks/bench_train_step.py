"""Where a training step's time goes, for a train config on this machine's device (CPU or GPU).

    python benchmarks/bench_train_step.py configs/default_sam_gpu.json            # CUDA when available
    python benchmarks/bench_train_step.py configs/tiny_debug.json --device cpu --workers 0

Run it first in a GPU session, before a long training run: it prints (1) the data pipeline alone —
per item in this process and per batch through a ``DataLoader`` with the config's workers, pinned and not;
(2) the image encoder's forward + backward on one batch (forward only where the config freezes it);
(3) whole training steps (the §A simulated session with the config's rounds, then with fewer) on that
same batch, with the peak device memory;
(4) one round's loss through the fused focal/dice kernel and through the plain functions, with the ratio.
The slowest of (1) and (3) bounds the steps per second of ``promptseg train``. There is no reference
trainer to compare against (segment-anything ships none), so the numbers are absolute.

The first GPU session that trained with promptseg found a step of 2.3 s for the default GPU config, of
which 1 s was the image encoder's blocked CPU attention kernel and most of the rest a per-mask loop of
the decoder, both CPU inference paths; after routing them off the CPU the step took ≈ 1.4 s (0.7
steps/s) at 23 % GPU utilisation. The last line printed here explains most of that: one step of the
11-round simulated session dispatches ≈ 80,000 ATen operator calls (views and autocast casts included),
whatever the batch size, so at a few µs to ~10 µs of host time each the step is bound by dispatch, not by
the GPU. More images and masks per step (36 GB at 262 masks on an H200; ``round_backward`` keeps one round's
decoder activations instead of 11, which makes room for several times more), CUDA graphs or
``torch.compile`` are the levers; profile here before scaling a run up.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Callable, List, Optional

import torch


def _clock(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def main(argv: Optional[List[str]] = None) -> int:
    from torch.utils.data import DataLoader

    from promptseg.train.config import TrainConfig
    from promptseg.train.datasets import build_dataset
    from promptseg.train.trainer import SamTrainingModel, TrainSamples, build_model, collate_train, resolve_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config (.json)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda … (default: the config's)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    parser.add_argument("--batches", type=int, default=8, help="batches timed through the DataLoader")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per setting")
    args = parser.parse_args(argv)

    cfg = TrainConfig.from_json(args.config)
    device = resolve_device(args.device or cfg.device)
    workers = cfg.num_workers if args.workers is None else args.workers
    now = _clock(device)
    sam = build_model(cfg)
    img_size = sam.image_encoder.img_size
    samples = TrainSamples(build_dataset(cfg.dataset.type, cfg.dataset.options), img_size, cfg.masks_per_image,
                           cfg.max_mask_area, cfg.seed, cfg.min_mask_area)
    n = min(len(samples), 10_000)
    t = now()
    samples[(0, 0)]
    print(f"data: first item {now() - t:.2f} s (loads the dataset's resources)")
    t = now()
    count = min(10, n - 1)
    for i in range(1, count + 1):
        samples[(0, i)]
    print(f"data: {(now() - t) / max(count, 1) * 1e3:.1f} ms per item in this process")
    keys = [(0, i % n) for i in range(cfg.batch_size * (args.batches + 2))]
    batch = None
    for pin in ((False, True) if device.type == "cuda" else (False,)):
        loader = DataLoader(samples, batch_size=cfg.batch_size, sampler=keys, collate_fn=collate_train,
                            num_workers=workers, pin_memory=pin)
        it = iter(loader)
        t = now()
        batch = next(it)
        t1 = now()
        for _ in range(args.batches):
            batch = next(it)
        print(f"data: DataLoader ({workers} workers, pin_memory={pin}): first batch {t1 - t:.1f} s, "
              f"then {(now() - t1) / args.batches:.3f} s per batch of {cfg.batch_size}")
        del it, loader
    assert batch is not None

    sam.to(device)
    model = SamTrainingModel(sam, cfg).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    on_device = {
        "images": [im.to(device) for im in batch["images"]],
        "targets": batch["targets"].to(device),
        "image_valid": batch["image_valid"].to(device),
        "image_indices": batch["image_indices"].to(device),
    }
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.bf16 else contextlib.nullcontext
    print(f"step: {len(on_device['targets'])} masks from {len(on_device['images'])} images, bf16={cfg.bf16}")
    with autocast():
        x = torch.stack([sam.preprocess(im) for im in on_device["images"]])
    frozen = "image_encoder" in model.frozen  # training runs it forward only, without gradients
    for i in range(args.steps + 1):
        t = now()
        with autocast(), torch.no_grad() if frozen else contextlib.nullcontext():
            emb = sam.image_encoder(x)
        if not frozen:
            emb.float().square().mean().backward()
        if i:
            what = "forward (frozen by the config)" if frozen else "forward + backward"
            print(f"step: image encoder {what} {now() - t:.3f} s")
    opt.zero_grad(set_to_none=True)
    for rounds in sorted({cfg.rounds, max(1, cfg.rounds // 2)}, reverse=True):
        model.rounds = rounds
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(args.steps + 1):  # the first is a warm-up
            generator = torch.Generator(device=device).manual_seed(i)
            t = now()
            with autocast():
                out = model(generator=generator, **on_device)
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                mem = f", peak memory {torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB" if device.type == "cuda" else ""
                print(f"step: {rounds} rounds, whole step {now() - t:.3f} s{mem}")
    print(f"step: {_ops_per_step(model, on_device, autocast, device)} operator calls per step (forward + backward)")
    _loss_kernels(model, on_device, now, args.steps)
    return 0


def _loss_kernels(model: torch.nn.Module, batch: dict, now: Callable[[], float], repeats: int) -> None:
    """One round's loss (all 4 tokens of every mask, against the step's targets at the loss resolution),
    forward + backward, through the fused focal/dice kernel and through the plain autograd functions it
    is tested against — the same numbers, timed in this run."""
    from promptseg.train.losses import SamLoss

    targets, valid = batch["targets"], batch["image_valid"][batch["image_indices"]]
    b = len(targets)
    low = model.sam.prompt_encoder.mask_input_size
    gen = torch.Generator(device=targets.device).manual_seed(0)
    logits = torch.randn((b, 4, *low), generator=gen, device=targets.device)
    iou = torch.rand((b, 4), generator=gen, device=targets.device)
    times = {}
    for fused in (True, False, True, False):  # interleaved; the first of each is a warm-up
        loss = SamLoss(recompute=False, fused=fused)
        runs = []
        for _ in range(max(repeats, 1)):
            x = logits.clone().requires_grad_(True)
            t = now()
            loss(x, iou, targets, valid, multimask_output=True).loss.backward()
            runs.append(now() - t)
        times[fused] = sorted(runs)[len(runs) // 2]
    print(f"loss: one round, {b} masks × 3 candidates at {tuple(targets.shape[-2:])}, forward + backward: "
          f"fused {times[True] * 1e3:.1f} ms, plain {times[False] * 1e3:.1f} ms ({times[False] / times[True]:.2f}×)")


def _ops_per_step(model: torch.nn.Module, batch: dict, autocast: Callable[[], object], device: torch.device) -> int:
    """ATen operator calls (views included) dispatched by one step: each costs host time on any device,
    so a step whose device time is far below ``calls × ~10 µs`` is dispatch-bound — batch more per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generator = torch.Generator(device=device).manual_seed(0)
        with autocast():  # type: ignore[attr-defined]
            out = model(generator=generator, **batch)
        out["loss"].backward()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


if __name__ == "__main__":
    raise SystemExit(main())
