"""``promptseg amg`` — automatic mask generation over image files, folders or lists, resumable.

Usage::

    promptseg amg INPUT... -o OUTDIR [--checkpoint CKPT] [--preset default|edges|proposals|sa1b]
                  [--points-per-side 32] [--points-per-batch 64] [--pred-iou-thresh 0.88]
                  [--stability-score-thresh 0.95] [--box-nms-thresh 0.7] [--crop-n-layers 0]
                  [--crop-n-points-downscale-factor 1] [--min-mask-region-area 0]
                  [--formats sa1b,coco,png,geojson,overlay] [--polygon-tolerance 1.0]
                  [--geotransform GT0,GT1,GT2,GT3,GT4,GT5 [--crs EPSG:N] | --georef]
                  [--engine local|ray] [--ray-address ADDR] [--num-workers N] [--threads N]
                  [--dtype float32|bfloat16] [--encoder-dtype float32|bfloat16]
                  [--transformer-dtype float32|bfloat16] [--device cpu] [--generator MODULE:CLASS] [--force] [--quiet]

:func:`register` adds the command to the main ``promptseg`` parser; :func:`main` runs it on its own
(``python -m promptseg.amg.cli INPUT -o OUT``). Exit status: 0 when every image is done or skipped, 1 when
some image failed (the others are written; run again to retry them), 2 for a usage error (bad option,
missing input, no model), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from promptseg.cli import DTYPES, add_part_dtype_options, number_type

EXIT_USAGE = 2
EXIT_FAILED = 1

#: Generator options exposed on the command line: (option, keyword, type, help).
_GENERATOR_OPTIONS = (
    ("--points-per-side", "points_per_side", int, "points along each side of the prompt grid (default 32)"),
    ("--points-per-batch", "points_per_batch", int, "points the decoder runs at once; memory vs speed (default 64)"),
    ("--pred-iou-thresh", "pred_iou_thresh", float,
     "keep masks whose predicted IoU is above this (default 0.88, 0.35 with the bundled model; 0 = off)"),
    ("--stability-score-thresh", "stability_score_thresh", float,
     "keep masks whose stability score is ≥ this (default 0.95, 0.35 with the bundled model; 0 = off)"),
    ("--box-nms-thresh", "box_nms_thresh", float, "box IoU above which NMS drops duplicates (default 0.7)"),
    ("--crop-n-layers", "crop_n_layers", int, "layers of zoomed-in crops: 0 none, 1 adds 2×2, 2 adds 4×4 (default 0)"),
    ("--crop-n-points-downscale-factor", "crop_n_points_downscale_factor", int,
     "points per side shrink by this factor per crop layer (default 1)"),
    ("--min-mask-region-area", "min_mask_region_area", int,
     "remove components and fill holes smaller than this many pixels (default 0 = off)"),
)


def _format_list(text: str) -> List[str]:
    from promptseg.amg.outputs import FORMATS

    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(FORMATS)
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(bad) or repr(text)}; choose from "
                                         f"{', '.join(FORMATS)} (comma-separated) or all")
    return list(dict.fromkeys(items))


def _geotransform(text: str) -> List[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected 6 comma-separated numbers GT0,...,GT5 (GDAL order), got {text!r}")
    return values


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``amg`` command to ``subparsers`` (from ``add_subparsers``); it sets ``func``."""
    from promptseg.amg.batch import DEFAULT_GENERATOR, ENGINES, PRESETS, REFERENCE_GENERATOR

    p = subparsers.add_parser(
        "amg",
        help="automatic mask generation over many images (SA-1B JSON, COCO, label PNG, GeoJSON, overlays)",
        description=(
            "Segment everything in each image with the automatic mask generator (a grid of point prompts, "
            "§B of the SAM paper) and write OUTDIR/<key>.json (SA-1B), <key>.coco.json (COCO results), "
            "<key>.labels.png (label map: 0 = none, k = annotation id k; smaller masks drawn over larger), "
            "<key>.geojson (polygons with holes; MultiPolygon for several parts) and <key>.overlay.png, where "
            "<key> is the image's path relative to the inputs' common folder without its extension. "
            "Resumable: run the same command again after an interruption and finished images are skipped."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file, folder (searched recursively) or .txt list of paths (relative to the list)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="SAM checkpoint: official .pth or promptseg .safetensors (default: the bundled model)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="generator settings: default (the generator's), edges (§D.2: 16×16 points, no "
                        "IoU/stability filter), proposals (§D.3: 64×64 points, no filter, NMS 0.9, at most "
                        "1000 masks with promptseg's generator), sa1b (§B: 2 crop layers, 100 px clean-up); "
                        "options below override the preset")
    for flag, _key, typ, text in _GENERATOR_OPTIONS:
        p.add_argument(flag, type=typ, default=None, metavar="N" if typ is int else "X", help=text)
    p.add_argument("--formats", type=_format_list, default=None, metavar="LIST",
                   help="comma-separated outputs: sa1b,coco,png,geojson,overlay (default: all)")
    p.add_argument("--polygon-tolerance", type=number_type(float, 0), default=1.0, metavar="PX",
                   help="Douglas–Peucker tolerance of the GeoJSON polygons in pixels (default 1.0; 0 = exact)")
    geo = p.add_mutually_exclusive_group()
    geo.add_argument("--geotransform", type=_geotransform, metavar="GT0,...,GT5",
                     help="GDAL geotransform mapping pixel corners to world coordinates for every image's GeoJSON "
                          "(default: pixel coordinates); write --geotransform=-1.5,... when GT0 is negative")
    geo.add_argument("--georef", action="store_true",
                     help="read each image's world file (.jgw, .pgw, .tfw, .wld) or GeoTIFF tags for its GeoJSON")
    p.add_argument("--crs", metavar="NAME", help="CRS written in the GeoJSON, e.g. EPSG:32633 (with --geotransform)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: a loop in this process; ray: Ray Data actors (default local)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join (e.g. ray://head:10001 or auto); default: a local Ray runtime")
    p.add_argument("--num-workers", type=number_type(int, 1), default=1, metavar="N",
                   help="Ray actors, each with its own model (default 1; --engine ray)")
    p.add_argument("--threads", type=number_type(int, 1), default=None, metavar="N",
                   help="torch threads per worker (default: torch's for local, 1 per Ray actor)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="model precision (default float32)")
    add_part_dtype_options(p)
    p.add_argument("--device", default="cpu",
                   help="torch device, e.g. cpu or cuda (default cpu); with --engine ray each actor takes a GPU")
    p.add_argument("--generator", default=DEFAULT_GENERATOR, metavar="MODULE:CLASS",
                   help=f"mask generator class (default {DEFAULT_GENERATOR}; {REFERENCE_GENERATOR} is the reference)")
    p.add_argument("--force", action="store_true", help="process every image again, even finished ones")
    p.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                   help="leave glibc's malloc thresholds as they are (default: raised in every worker, so the "
                        "encoder's large activations are reused between images instead of page-faulted in again; "
                        "see promptseg.runtime.tune_allocator)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_amg)
    return p


def generator_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The generator options given on the command line (they override the preset's)."""
    options: Dict[str, Any] = {}
    for _flag, key, _typ, _text in _GENERATOR_OPTIONS:
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if options.get("points_per_side", 1) < 1:
        raise ValueError(f"--points-per-side must be ≥ 1, got {options['points_per_side']}")
    if options.get("points_per_batch", 1) < 1:
        raise ValueError(f"--points-per-batch must be ≥ 1, got {options['points_per_batch']}")
    if options.get("crop_n_layers", 0) < 0:
        raise ValueError(f"--crop-n-layers must be ≥ 0, got {options['crop_n_layers']}")
    if options.get("min_mask_region_area", 0) < 0:
        raise ValueError(f"--min-mask-region-area must be ≥ 0, got {options['min_mask_region_area']}")
    return options


def cmd_amg(args: argparse.Namespace) -> int:
    from promptseg.amg.batch import BatchError, GeneratorFactory

    if args.crs and not args.geotransform:
        raise ValueError("--crs needs --geotransform (with --georef the CRS comes from each GeoTIFF)")
    if args.ray_address and args.engine != "ray":
        raise ValueError("--ray-address needs --engine ray")
    threads = args.threads if args.threads is not None else (1 if args.engine == "ray" else None)
    options = generator_options(args)
    if args.preset in ("default", "sa1b"):  # presets that filter as the reference
        from promptseg.hub import default_model_amg_filters

        bundled = default_model_amg_filters(args.checkpoint, options)
        if bundled and not args.quiet:
            print(f"the bundled default model: {', '.join(f'{k} {v}' for k, v in bundled.items())} (its scores are "
                  "calibrated on synthetic scenes; see docs/default_model.md); set the options to change",
                  file=sys.stderr)
        options.update(bundled)
    factory = GeneratorFactory(
        checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else None,  # as each Ray worker must see it
        generator=args.generator,
        options=options,
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        encoder_dtype=args.encoder_dtype,
        transformer_dtype=args.transformer_dtype,
        threads=threads,
        tune_allocator=args.tune_allocator,
    )
    try:
        summary = _run(args, factory, threads)
    except BatchError as err:  # Ray failed, or another job holds OUTDIR: nothing to fix in the command line
        print(f"promptseg amg: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_FAILED
    for line in summary.lines():
        print(line)
    return EXIT_FAILED if summary.failed else 0


def _run(args: argparse.Namespace, factory: Any, threads: Optional[int]) -> Any:
    from promptseg.amg.batch import run_batch
    from promptseg.amg.outputs import FORMATS

    return run_batch(
        args.inputs,
        args.output,
        factory,
        args.formats or FORMATS,
        polygon_tolerance=args.polygon_tolerance,
        geotransform=args.geotransform,
        crs=args.crs,
        georef=args.georef,
        engine=args.engine,
        num_workers=args.num_workers,
        ray_address=args.ray_address,
        cpus_per_worker=float(threads or 1),
        gpus_per_worker=1.0 if args.engine == "ray" and args.device.startswith("cuda") else 0.0,
        force=args.force,
        progress=not args.quiet,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``promptseg amg`` with ``argv`` (a leading ``"amg"`` is accepted); returns the exit status."""
    from promptseg.cli import UsageError, _one_line, _Parser
    from promptseg.io import MissingDependencyError

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "amg":
        args_list = args_list[1:]
    parser = _Parser(prog="promptseg")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    try:
        args = parser.parse_args(["amg", *args_list])
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UsageError as err:
        print(_one_line(str(err)), file=sys.stderr)
    except (ValueError, OSError, MissingDependencyError) as err:
        print(f"promptseg amg: error: {_one_line(str(err)) or type(err).__name__}", file=sys.stderr)
    except KeyboardInterrupt:
        print("promptseg amg: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
