"""Automatic mask generation speed and memory: promptseg vs the reference ``segment-anything``.

    python benchmarks/bench_amg.py                  # ViT-B, 768×1024 image, 32×32 points (reference ≈ 6 min)
    python benchmarks/bench_amg.py --quick          # tiny model, seconds (smoke test)
    python benchmarks/bench_amg.py --rss            # + peak RSS of a 3000×2000 image with crop_n_layers=1
    python benchmarks/bench_amg.py --rss --rss-reference   # the reference's too (slow, several GB)

Both generators get identical random weights (every tensor perturbed, as in ``bench_sam.py``) and the
same image, in the same process, reference first. Filters and NMS are disabled (``pred_iou_thresh=0,
stability_score_thresh=0, box_nms_thresh=1.0``) so that every mask — 3 per point — is upsampled,
measured and returned: no shortcut can skip work. Each generator runs once after a small warm-up call
(its time is printed too);
the reference's and promptseg's masks are then matched (IoU ≥ 0.95) to show the run kept parity.
promptseg runs at float32 with its default settings (other ``points_per_batch`` values with
``--batches``; the fastest is reported as well). The encoder is timed on its own too, so the ratio of the rest (decoder,
upsampling, filtering, encoding) can be read off.

Peak RSS (``--rss``): each generator runs in a fresh subprocess on a 3000×2000 image with
``crop_n_layers=1`` (5 crops), filters and NMS disabled and ``output_mode="coco_rle"`` (so the output's
own size does not dominate), and reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (and the RSS
before ``generate``: both models are built in the child, for identical weights). ``--rss-points 8``
keeps the reference's run short: its peak is set by one batch of 64 points, whatever the grid.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sam import build_pair, smooth_image  # noqa: E402  (same weights and images as bench_sam)

# promptseg's faster precisions: the parts of the model that run in bfloat16
MODES = {"bf16-encoder": ("encoder",), "bf16-encoder-transformer": ("encoder", "transformer"), "bf16": ("model",)}
NO_FILTERS = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def masks_of(records: List[Dict[str, Any]]) -> np.ndarray:
    from promptseg.amg.helpers import rle_to_mask

    out = []
    for r in records:
        seg = r["segmentation"]
        if isinstance(seg, dict):
            if isinstance(seg["counts"], str):
                from pycocotools import mask as mask_utils

                seg = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
            else:
                seg = rle_to_mask(seg)
        out.append(np.asarray(seg, bool).reshape(-1))
    return np.stack(out) if out else np.zeros((0, 0), bool)


def match(expected: List[Dict[str, Any]], got: List[Dict[str, Any]]) -> Dict[str, float]:
    """How well promptseg's masks reproduce the reference's: the fraction of reference masks matched
    (IoU ≥ 0.95) by a promptseg mask from the same point and crop (all masks if none is), and among the
    matched ones the fraction with equal bbox and area, the mean and minimum IoU, and the largest
    relative area difference."""
    if not expected:
        return {"reference": 0, "promptseg": len(got), "matched": 1.0, "same_bbox_area": 1.0}
    e, g = masks_of(expected), masks_of(got)
    by_point: Dict[Any, List[int]] = {}
    for j, r in enumerate(got):
        by_point.setdefault((tuple(r["point_coords"][0]), tuple(r["crop_box"])), []).append(j)
    g_area = g.sum(1)
    ious, same, area_rel = [], [], []
    for i, r in enumerate(expected):
        cand = by_point.get((tuple(r["point_coords"][0]), tuple(r["crop_box"])), [])
        best, best_j = 0.0, -1
        for pool in (cand, range(len(got))):
            for j in pool:
                inter = np.count_nonzero(e[i] & g[j])
                union = r["area"] + int(g_area[j]) - inter
                iou = 1.0 if union == 0 else inter / union
                if iou > best:
                    best, best_j = iou, j
            if best >= 0.95:
                break
        ious.append(best)
        if best >= 0.95:
            o = got[best_j]
            same.append(o["bbox"] == r["bbox"] and o["area"] == r["area"])
            area_rel.append(abs(o["area"] - r["area"]) / max(1, r["area"]))
    ious_a = np.asarray(ious)
    return {
        "reference": len(expected),
        "promptseg": len(got),
        "matched": float((ious_a >= 0.95).mean()),
        "same_bbox_area": float(np.mean(same)) if same else 0.0,
        "mean_iou": float(ious_a.mean()),
        "min_iou": float(ious_a.min()),
        "max_rel_area_diff": float(max(area_rel)) if area_rel else 0.0,
    }


def timed(fn) -> tuple:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def rss_child(args: argparse.Namespace) -> int:
    """Subprocess: one generate() on a 3000×2000 image with crop_n_layers=1; print peak RSS as JSON."""
    import resource

    torch.manual_seed(0)
    ref, ours = build_pair(args.quick, seed=0)
    h, w = (args.rss_height, args.rss_width)
    image = smooth_image(h, w, seed=1)
    options = dict(NO_FILTERS, crop_n_layers=1, output_mode="coco_rle", points_per_side=args.rss_points)
    if args.rss_child == "reference":
        del ours
        import segment_anything

        gen = segment_anything.SamAutomaticMaskGenerator(ref, **options)
    else:
        del ref
        from promptseg import SamAutomaticMaskGenerator

        gen = SamAutomaticMaskGenerator(ours, **options)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        records, seconds = timed(lambda: gen.generate(image))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": args.rss_child, "masks": len(records), "seconds": seconds,
                      "peak_rss_mb": peak / 1024, "rss_before_generate_mb": before / 1024}))
    return 0


def run_rss(args: argparse.Namespace, impl: str) -> Optional[Dict[str, Any]]:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", impl, "--rss-points", str(args.rss_points),
           "--rss-height", str(args.rss_height), "--rss-width", str(args.rss_width)]
    if args.quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"RSS run of {impl} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and image, for a smoke test")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--points-per-side", type=int, default=None, help="default 32 (8 with --quick)")
    parser.add_argument("--batches", default="64", help="promptseg points_per_batch values to time (comma-separated)")
    parser.add_argument("--skip-reference", action="store_true", help="time promptseg only")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="promptseg's faster precisions to time as well (comma-separated, '' for none): "
                             "bf16-encoder (bfloat16 image encoder, float32 decoder), bf16-encoder-transformer "
                             "(also the decoder's two-way transformer), bf16 (the whole model)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS (3000×2000, crop_n_layers=1)")
    parser.add_argument("--rss-reference", action="store_true", help="measure the reference's peak RSS too")
    parser.add_argument("--rss-points", type=int, default=None, help="points per side of the RSS runs (default: as --points-per-side)")
    parser.add_argument("--rss-height", type=int, default=None)
    parser.add_argument("--rss-width", type=int, default=None)
    parser.add_argument("--rss-child", choices=["reference", "promptseg"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.points_per_side is None:
        args.points_per_side = 8 if args.quick else 32
    if args.rss_points is None:
        args.rss_points = args.points_per_side
    if args.rss_height is None:
        args.rss_height, args.rss_width = (750, 500) if args.quick else (2000, 3000)
    if args.rss_child:
        return rss_child(args)

    import segment_anything

    from promptseg import SamAutomaticMaskGenerator

    torch.manual_seed(0)
    ref, ours = build_pair(args.quick, seed=0)
    h, w = (args.height // 4, args.width // 4) if args.quick else (args.height, args.width)
    image = smooth_image(h, w)
    batches = [int(b) for b in args.batches.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown --modes {sorted(unknown)}; use some of {', '.join(MODES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; image {h}×{w}; "
          f"model {'tiny' if args.quick else 'ViT-B'}; {args.points_per_side}² points, filters and NMS off", flush=True)
    options = dict(NO_FILTERS, points_per_side=args.points_per_side)
    warm = smooth_image(64, 96, seed=2)
    results: Dict[str, Any] = {"image": [h, w], "points_per_side": args.points_per_side, "quick": args.quick}

    with torch.no_grad():
        # Encoder alone, once each (the part both implementations must do).
        from promptseg import SamPredictor

        rp, op = segment_anything.SamPredictor(ref), SamPredictor(ours)
        rp.set_image(warm), op.set_image(warm)
        _, results["encoder_reference_s"] = timed(lambda: rp.set_image(image))
        _, results["encoder_promptseg_s"] = timed(lambda: op.set_image(image))
        del rp, op

        expected = None
        if not args.skip_reference:
            gen = segment_anything.SamAutomaticMaskGenerator(ref, **options)
            _, results["reference_warmup_s"] = timed(lambda: gen.generate(warm))
            expected, results["reference_s"] = timed(lambda: gen.generate(image))
            print(f"reference: {results['reference_s']:.1f} s, {len(expected)} masks", flush=True)
            del gen
        for batch in batches:
            gen = SamAutomaticMaskGenerator(ours, **options, points_per_batch=batch)
            _, results[f"promptseg_ppb{batch}_warmup_s"] = timed(lambda: gen.generate(warm))
            got, seconds = timed(lambda: gen.generate(image))
            results[f"promptseg_ppb{batch}_s"] = seconds
            line = f"promptseg points_per_batch={batch}: {seconds:.1f} s, {len(got)} masks"
            if expected is not None:
                parity = match(expected, got)
                results[f"parity_ppb{batch}"] = parity
                line += (f"; parity: {parity['matched']:.2%} of reference masks matched (IoU ≥ 0.95; "
                         f"mean IoU {parity['mean_iou']:.6f}, min {parity['min_iou']:.4f}), "
                         f"{parity['same_bbox_area']:.2%} of them with equal bbox and area "
                         f"(largest area difference {parity['max_rel_area_diff']:.2e})")
            print(line, flush=True)
            del gen, got
        for mode in args.modes:
            fast = copy.deepcopy(ours)
            for part in MODES[mode]:  # as load_model(dtype=…, encoder_dtype=…, transformer_dtype=…) sets them
                {"model": fast, "encoder": fast.image_encoder, "transformer": fast.mask_decoder.transformer}[part].to(
                    torch.bfloat16
                )
            gen = SamAutomaticMaskGenerator(fast, **options, points_per_batch=batches[0])
            _, results[f"promptseg_{mode}_warmup_s"] = timed(lambda: gen.generate(warm))
            got, results[f"promptseg_{mode}_s"] = timed(lambda: gen.generate(image))
            line = f"promptseg {mode}: {results[f'promptseg_{mode}_s']:.1f} s, {len(got)} masks"
            if expected is not None:
                parity = results[f"parity_{mode}"] = match(expected, got)
                line += (f"; parity: {parity['matched']:.2%} of reference masks matched (IoU ≥ 0.95; "
                         f"mean IoU {parity['mean_iou']:.6f}, min {parity['min_iou']:.4f}), counts {len(expected)} / {len(got)}")
            print(line, flush=True)
            del gen, got, fast

    if args.rss:
        for impl in (["reference"] if args.rss_reference else []) + ["promptseg"]:
            out = run_rss(args, impl)
            if out is not None:
                results[f"rss_{impl}"] = out
                print(f"peak RSS {impl} ({args.rss_height}×{args.rss_width}, crop_n_layers=1, {args.rss_points}² points): "
                      f"{out['peak_rss_mb']:.0f} MB ({out['rss_before_generate_mb']:.0f} MB before generate), "
                      f"{out['seconds']:.1f} s, {out['masks']} masks", flush=True)

    print()
    print(f"{'measurement':36s} {'seconds':>9s} {'vs reference':>13s}")
    rows = [("encoder only, reference", results["encoder_reference_s"], results["encoder_reference_s"]),
            ("encoder only, promptseg", results["encoder_promptseg_s"], results["encoder_reference_s"])]
    if "reference_s" in results:
        rows.append(("generate, reference", results["reference_s"], results["reference_s"]))
    for batch in batches:
        rows.append((f"generate, promptseg ppb={batch}", results[f"promptseg_ppb{batch}_s"], results.get("reference_s")))
    for mode in args.modes:
        rows.append((f"generate, promptseg {mode}", results[f"promptseg_{mode}_s"], results.get("reference_s")))
    warmups = {k: v for k, v in results.items() if k.endswith("_warmup_s")}
    print("warm-up calls (64×96 image, not in the timings below): "
          + ", ".join(f"{k[:-len('_warmup_s')]} {v:.2f} s" for k, v in warmups.items()))
    for name, sec, base in rows:
        ratio = f"{base / sec:12.2f}×" if base else ""
        print(f"{name:36s} {sec:9.2f} {ratio:>13s}")
    if "reference_s" in results:
        default = results["promptseg_ppb64_s"] if 64 in batches else results[f"promptseg_ppb{batches[0]}_s"]
        fastest = min(results[f"promptseg_ppb{b}_s"] for b in batches)
        rest_ref = results["reference_s"] - results["encoder_reference_s"]
        rest_ours = fastest - results["encoder_promptseg_s"]
        results.update(ratio_default=results["reference_s"] / default, ratio_fastest=results["reference_s"] / fastest,
                       ratio_without_encoder=rest_ref / max(rest_ours, 1e-9))
        print(f"\nend to end: {results['ratio_default']:.2f}× (defaults), {results['ratio_fastest']:.2f}× (fastest batch); "
              f"everything but the encoder: {results['ratio_without_encoder']:.2f}×")
        for mode in args.modes:
            results[f"ratio_{mode}"] = results["reference_s"] / results[f"promptseg_{mode}_s"]
            print(f"{mode}: {results[f'ratio_{mode}']:.2f}× end to end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
