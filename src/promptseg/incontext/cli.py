"""``promptseg incontext`` — SegGPT in-context segmentation of images and videos, and prompt tuning.

Usage::

    promptseg incontext TARGET... --example IMG MASK [--example IMG MASK ...] -o OUTDIR
                        [--ensemble feature|spatial|none] [--checkpoint CKPT] [--semantic] [--colored]
    promptseg incontext TARGET... --prompt PROMPT.safetensors -o OUTDIR [--checkpoint CKPT]
    promptseg incontext video FRAMES_DIR_OR_VIDEO --first-mask PNG -o OUTDIR [--fifo K] [--checkpoint CKPT]
    promptseg incontext tune --pair IMG MASK [--pair IMG MASK ...] -o PROMPT.safetensors [--steps N] [--lr X]
    promptseg incontext eval oneshot DATASET [--examples 4] [--episodes N] [--checkpoint CKPT] [-o REPORT.json]
    promptseg incontext eval video [--sequences N --frames T --seed S] [--checkpoint CKPT] [-o REPORT.json]

Masks are PNG label maps (0 = background, k = object/category k; a 0/255 mask is one object; DAVIS palette
PNGs give their indices) or colour masks (each colour one label). Outputs: ``OUTDIR/<name>.png`` label maps
(same numbering as the example masks) and ``OUTDIR/<name>.overlay.png``; video frames go to
``OUTDIR/<frame>.png`` and ``OUTDIR/overlays/<frame>.png``. Exit status 0 on success, 2 for a usage error
(bad option, missing or unreadable file, no checkpoint and no bundled SegGPT), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from promptseg.cli import number_type

DTYPES = ("float32", "bfloat16")
MODES = ("video", "tune", "eval")


def _model_options(p: argparse.ArgumentParser, semantic: bool = True) -> None:
    """``--checkpoint``, ``--dtype``, ``--device`` and (with ``semantic``) ``--semantic``."""
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="SegGPT checkpoint: promptseg .safetensors, transformers folder/file or official .pth "
                        "(default: the bundled model)")
    if semantic:
        p.add_argument("--semantic", action="store_true",
                       help="categories rather than object instances (the model's semantic type token)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="model precision (default float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def _parsers(parser_class: Any) -> Dict[str, argparse.ArgumentParser]:
    """The parsers of ``incontext`` (images), ``incontext video``, ``incontext tune`` and ``incontext eval``."""
    from promptseg.incontext.eval_cli import eval_parser

    images = parser_class(
        prog="promptseg incontext",
        description="Segment TARGET images like the examples (SegGPT in-context segmentation). Also: "
                    "`promptseg incontext video --help` (propagate a mask through a video) and "
                    "`promptseg incontext tune --help` (learn a prompt from image/mask pairs) and "
                    "`promptseg incontext eval --help` (one-shot mIoU and video J&F reports).",
    )
    images.add_argument("targets", nargs="+", metavar="TARGET", help="image file or folder of images")
    images.add_argument("--example", nargs=2, action="append", default=[], metavar=("IMG", "MASK"),
                        help="an example image and its mask (label-map or colour PNG); repeat for several")
    images.add_argument("--prompt", metavar="PROMPT", help="a tuned prompt (.safetensors from `incontext tune`) "
                                                           "instead of examples")
    images.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    images.add_argument("--ensemble", choices=("feature", "spatial", "none"), default="feature",
                        help="how several examples combine: feature (averaged in the model, default), spatial "
                             "(tiled into one example), none (one example only)")
    images.add_argument("--max-distance", type=number_type(float, 0, strict=True), default=None, metavar="X",
                        help="colours farther than X (0–255 RGB units) from every label colour are background")
    images.add_argument("--colored", action="store_true", help="also write OUTDIR/<name>.colored.png (raw output)")
    images.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    _model_options(images)

    video = parser_class(
        prog="promptseg incontext video",
        description="Propagate the first frame's mask through a video (seggpt.txt §4.4): each frame is "
                    "predicted from the first frame and the previous K predicted frames (feature ensemble).",
    )
    video.add_argument("source", metavar="FRAMES_DIR_OR_VIDEO", help="folder of frame images or a video file")
    video.add_argument("--first-mask", required=True, metavar="PNG",
                       help="label map of the first frame (0 = background, k = object k)")
    video.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    video.add_argument("--fifo", type=number_type(int, 0), default=None, metavar="K",
                       help="previous frames used as extra examples (default 7: 8 frames in all, Table 4b)")
    video.add_argument("--ensemble", choices=("feature", "spatial"), default="feature",
                       help="how the frames combine (default feature)")
    video.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    video.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_options(video)

    tune = parser_class(
        prog="promptseg incontext tune",
        description="Learn a prompt (image + mask tensors) for a task from image/mask pairs with the model "
                    "frozen (seggpt.txt §4.6); use it with `promptseg incontext TARGET --prompt PROMPT`.",
    )
    tune.add_argument("--pair", nargs=2, action="append", default=[], metavar=("IMG", "MASK"),
                      help="a training image and its mask; repeat (at least one)")
    tune.add_argument("--init", nargs=2, metavar=("IMG", "MASK"), help="the example to start from (default: the first pair)")
    tune.add_argument("-o", "--output", required=True, metavar="PROMPT", help="output file (.safetensors)")
    tune.add_argument("--steps", type=number_type(int, 0), default=100, metavar="N", help="optimisation steps (default 100)")
    tune.add_argument("--lr", type=number_type(float, 0, strict=True), default=0.01, metavar="X", help="Adam learning rate (default 0.01)")
    tune.add_argument("--batch-size", type=number_type(int, 1), default=4, metavar="N", help="pairs per step (default 4)")
    tune.add_argument("--learn", choices=("both", "image", "mask"), default="both", help="which tensors to learn")
    tune.add_argument("--seed", type=number_type(int, 0), default=0, help="seed of the batch sampling (default 0)")
    tune.add_argument("--preview", action="store_true", help="also write PROMPT.png: the learned image above its mask")
    tune.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_options(tune)

    images.set_defaults(func=cmd_images)
    video.set_defaults(func=cmd_video)
    tune.set_defaults(func=cmd_tune)
    return {"images": images, "video": video, "tune": tune, "eval": eval_parser(parser_class)}


def _dispatch(parsers: Dict[str, argparse.ArgumentParser], args: Optional[Sequence[str]] = None,
              namespace: Optional[argparse.Namespace] = None) -> Tuple[argparse.Namespace, List[str]]:
    """``parse_known_args`` of the ``incontext`` parser: ``video``/``tune``/``eval`` first → their own parser."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in MODES:
        ns = parsers[argv[0]].parse_args(argv[1:], namespace)
        ns.mode = argv[0]
    else:
        ns = parsers["images"].parse_args(argv, namespace)
        ns.mode = "images"
    return ns, []


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``incontext`` command to ``subparsers`` (from ``add_subparsers``); it sets ``func``.

    ``promptseg incontext TARGET…`` segments images, while ``promptseg incontext video …``,
    ``promptseg incontext tune …`` and ``promptseg incontext eval …`` have their own options: the
    registered parser hands its arguments to the parser of the mode their first word names.
    """
    p = subparsers.add_parser(
        "incontext",
        help="SegGPT: segment images or videos like example image/mask pairs; tune prompts; evaluate",
        add_help=False,
    )
    parsers = _parsers(type(p))
    p.parse_known_args = functools.partial(_dispatch, parsers)  # type: ignore[method-assign]
    return p


# --------------------------------------------------------------------------------------------- helpers
def _predictor(args: argparse.Namespace) -> Any:
    import torch

    from promptseg.hub import usable_device
    from promptseg.incontext.predictor import SegGptPredictor, load_model

    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    model = load_model(args.checkpoint, device=usable_device(args.device), dtype=getattr(torch, args.dtype))
    return SegGptPredictor(model, embedding_type="semantic" if args.semantic else "instance")


def _pairs(items: Sequence[Sequence[str]], option: str) -> List[Tuple[Any, Any]]:
    from promptseg.incontext.palette import as_label_map, read_mask_array
    from promptseg.io import read_image

    out = []
    for i, (img, mask) in enumerate(items):
        image, pixels = read_image(img), read_mask_array(mask)
        labels, _ = as_label_map(pixels, name=f"mask {mask}")
        if image.shape[:2] != labels.shape:
            raise ValueError(f"{option} {img} {mask}: the image is {image.shape[1]}×{image.shape[0]} pixels but the "
                             f"mask is {labels.shape[1]}×{labels.shape[0]}")
        if not (labels > 0).any():
            raise ValueError(f"{option} {img} {mask}: the mask is empty (no pixel above 0)")
        # an RGB(A) mask stays colours: one colour is one label in every example (numbered over all of them,
        # a grey-only one among colour masks included, as the API does)
        out.append((image, pixels if pixels.ndim == 3 else labels))
    return out


def _targets(inputs: Sequence[str]) -> List[Path]:
    from promptseg.incontext.video import list_frame_files

    files: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_frame_files(path)
            if not found:
                raise ValueError(f"no images in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"target not found: {path}")
    return files


def _refuse_overwriting_inputs(outputs: Sequence[Tuple[str, Path]], inputs: Sequence[str],
                               targets: Sequence[Path] = ()) -> None:
    """ValueError when an output (``(shown name, path)``) is one of the ``inputs`` (example/prompt files) or
    ``targets``, before anything is written."""
    known = {Path(p).resolve(): f"input {p}" for p in inputs}
    known.update({f.resolve(): f"target {f}" for f in targets})
    for shown, path in outputs:
        what = known.get(path.resolve())
        if what is not None:
            raise ValueError(f"writing {shown} would overwrite the {what}; choose another -o")


def _output_names(files: Sequence[Path]) -> List[str]:
    """Output name per target: its stem, made unique with ``_2``, ``_3``… when stems repeat."""
    seen: Dict[str, int] = {}
    used = set()
    names = []
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        name = f.stem if seen[f.stem] == 1 else f"{f.stem}_{seen[f.stem]}"
        while name in used:  # a.jpg, a.png, a_2.png: the third may not reuse a.png's a_2
            seen[f.stem] += 1
            name = f"{f.stem}_{seen[f.stem]}"
        used.add(name)
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------- commands
def cmd_images(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from promptseg import io
    from promptseg.cli import _output_dir
    from promptseg.incontext.palette import save_label_png

    if bool(args.example) == bool(args.prompt):
        raise ValueError("give --example IMG MASK (repeatable) or --prompt PROMPT.safetensors (one of the two)")
    if args.ensemble == "none" and len(args.example) > 1:
        raise ValueError(f"--ensemble none takes one --example, got {len(args.example)}")
    files = _targets(args.targets)
    names = _output_names(files)
    suffixes = [".png"] + [".overlay.png"] * (not args.no_overlay) + [".colored.png"] * bool(args.colored)
    # every output against every input: a.jpg's a.png must not overwrite the target a.png
    _refuse_overwriting_inputs(
        [(f"OUTDIR/{n}{suffix}", Path(args.output) / f"{n}{suffix}") for n in names for suffix in suffixes],
        [p for pair in args.example for p in pair] + ([args.prompt] if args.prompt else []), files,
    )
    examples = _pairs(args.example, "--example") if args.example else None
    prompt = None
    if args.prompt:
        from promptseg.incontext.tuning import TunedPrompt

        prompt = TunedPrompt.load(args.prompt)
    out = _output_dir(args.output)
    predictor = _predictor(args)
    context = predictor.build_context(examples, prompt=prompt, ensemble=args.ensemble)
    for path, name in tqdm(list(zip(files, names)), desc="segmenting", unit="image", file=sys.stderr,
                           disable=len(files) < 2):
        image = io.read_image(path)
        result = predictor.predict_with_context(image, context, max_distance=args.max_distance)
        mask_path = save_label_png(result.labels, out / f"{name}.png")
        areas = ", ".join(f"{k + 1}: {int(m.sum())} px" for k, m in enumerate(result.masks))
        print(f"{mask_path}  labels {areas}")
        if not args.no_overlay:
            io.save_overlay_png(image, result.masks, out / f"{name}.overlay.png")
        if args.colored:
            io._save_png(result.colored, out / f"{name}.colored.png")
    print(f"{len(files)} image(s) segmented into {out}")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    from promptseg.cli import _output_dir
    from promptseg.incontext.palette import read_label_png
    from promptseg.incontext.video import DEFAULT_FIFO, open_frames, run_video

    frames = open_frames(args.source)
    first = read_label_png(args.first_mask)
    if not (first > 0).any():
        raise ValueError(f"--first-mask {args.first_mask} is empty (no pixel above 0)")
    predictor = _predictor(args)
    out = _output_dir(args.output)
    run = run_video(predictor, frames, first, out, fifo=DEFAULT_FIFO if args.fifo is None else args.fifo,
                    ensemble=args.ensemble, overlay=not args.no_overlay, progress=not args.quiet)
    print(f"{len(run.masks)} frame mask(s) written to {out}" + (f" (overlays in {out / 'overlays'})" if run.overlays else ""))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from promptseg.incontext.tuning import tune_prompt

    if not args.pair:
        raise ValueError("give at least one --pair IMG MASK to tune on")
    dst = Path(args.output)
    if dst.suffix != ".safetensors":
        raise ValueError(f"-o {dst} must end in .safetensors")
    outputs = [dst] + [dst.with_suffix(".png")] * bool(args.preview)  # a.png's preview of -o a.safetensors
    _refuse_overwriting_inputs([(str(out), out) for out in outputs],
                               [p for pair in args.pair + ([args.init] if args.init else []) for p in pair])
    pairs = _pairs(args.pair, "--pair")
    init = _pairs([args.init], "--init")[0] if args.init else None
    predictor = _predictor(args)
    result = tune_prompt(predictor.model, pairs, init=init, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                         embedding_type=predictor.embedding_type, learn=args.learn, seed=args.seed,
                         progress=not args.quiet)
    result.prompt.save(dst)
    print(f"tuned prompt: {dst}  loss {result.initial_loss:.4f} -> {result.final_loss:.4f} over {len(pairs)} pair(s), "
          f"{args.steps} step(s)")
    if args.preview:
        import numpy as np

        from promptseg.io import _save_png

        preview = _save_png(np.concatenate(result.prompt.to_images(), axis=0), dst.with_suffix(".png"))
        print(f"preview: {preview}")
    return 0


# --------------------------------------------------------------------------------------------- entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``promptseg incontext`` with ``argv`` (a leading ``"incontext"`` is accepted); returns the exit
    status. Errors are reported as by ``promptseg`` itself (one line on stderr, status 2)."""
    from promptseg.cli import main as promptseg_main

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "incontext":
        args_list = args_list[1:]
    return promptseg_main(["incontext", *args_list])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
