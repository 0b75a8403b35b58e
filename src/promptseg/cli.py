"""The ``promptseg`` command line.

Commands::

    promptseg segment IMAGE --point X,Y[,LABEL] ... --box X0,Y0,X1,Y1 ... -o OUT [--checkpoint CKPT]
    promptseg convert SRC.pth DST.safetensors [--model-type vit_b|vit_l|vit_h] [--patch-size N] [--insert-blocks I,...]
    promptseg average SRC SRC ... -o DST.safetensors [--weights W W ...] [--model-type vit_b|vit_l|vit_h | --config-from CKPT]
    promptseg info CKPT [--json]
    promptseg demo [-o OUTDIR] [--checkpoint CKPT]

Coordinates are pixels of the original image, ``x`` right and ``y`` down. A user error (bad prompt syntax,
a point outside the image, a missing file, an unreadable checkpoint, no model) prints one line on stderr
and exits with status 2 — never a traceback. Heavy modules (torch) are imported only by the commands.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from promptseg import __version__

EXIT_USAGE = 2
DTYPES = ("float32", "bfloat16")
MODEL_TYPES = ("vit_b", "vit_l", "vit_h")

Point = Tuple[float, float, int]
Box = Tuple[float, float, float, float]


class UsageError(Exception):
    """A mistake in the command line; the message is shown as is."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        for option, syntax in (("--point", "X,Y"), ("--box", "X0,Y0,X1,Y1")):
            if message == f"argument {option}: expected one argument":  # argparse reads "-5,10" as an option
                message += f" (a value starting with '-' must be attached: {option}={syntax})"
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# --------------------------------------------------------------------------------------------- parsing
def number_type(convert: Any, low: float, strict: bool = False) -> Any:
    """An argparse ``type``: ``convert(text)`` (int or float), finite and ≥ ``low`` (> with ``strict``)."""
    what = "an integer" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {what} {'>' if strict else '≥'} {low:g}, got {text!r}")
        return value

    return parse


def _numbers(text: str, count: Sequence[int], what: str, syntax: str) -> List[float]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in count:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected {syntax}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected {syntax} with numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: coordinates must be finite numbers")
    return values


def parse_point(text: str) -> Point:
    """``"X,Y"`` or ``"X,Y,LABEL"`` → ``(x, y, label)``; LABEL is 1 (object, the default) or 0 (background)."""
    syntax = "X,Y or X,Y,LABEL (LABEL 1 = object, 0 = background)"
    values = _numbers(text, (2, 3), "point", syntax)
    label = 1
    if len(values) == 3:
        if values[2] not in (0.0, 1.0):
            raise argparse.ArgumentTypeError(f"invalid point {text!r}: LABEL must be 1 (object) or 0 (background)")
        label = int(values[2])
    return values[0], values[1], label


def parse_box(text: str) -> Box:
    """``"X0,Y0,X1,Y1"`` (top-left and bottom-right corners) → a tuple with ``x0 ≤ x1`` and ``y0 ≤ y1``."""
    x0, y0, x1, y1 = _numbers(text, (4,), "box", "X0,Y0,X1,Y1 (top-left and bottom-right corners)")
    if x0 > x1 or y0 > y1:
        raise argparse.ArgumentTypeError(
            f"invalid box {text!r}: expected X0,Y0,X1,Y1 with X0 ≤ X1 and Y0 ≤ Y1 (top-left, then bottom-right)"
        )
    return x0, y0, x1, y1


def index_list(text: str) -> List[int]:
    """``"I,J,..."`` → a list of integers ≥ -1 (block indexes; range checks are the model's)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid index list {text!r}: expected integers such as 0,3,4") from None
    if any(v < -1 for v in values):
        raise argparse.ArgumentTypeError(f"invalid index list {text!r}: indexes must be ≥ -1")
    return values


def add_part_dtype_options(p: argparse.ArgumentParser) -> None:
    """``--encoder-dtype`` and ``--transformer-dtype``: precisions of two parts of the model on their own."""
    p.add_argument("--encoder-dtype", choices=DTYPES, default=None,
                   help="image encoder precision (default: --dtype); bfloat16 with --dtype float32 is the fast "
                        "mode whose masks stay closest to float32's")
    p.add_argument("--transformer-dtype", choices=DTYPES, default=None,
                   help="precision of the mask decoder's two-way transformer (default: --dtype); bfloat16 with "
                        "--encoder-dtype bfloat16 is the fastest mode that keeps automatic masks within IoU 0.95")


def _add_model_options(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    p.add_argument("--checkpoint", metavar="CKPT", help=checkpoint_help)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="model precision (default: float32)")
    add_part_dtype_options(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")


SUBCOMMAND_MODULES = ("promptseg.data.cli", "promptseg.train.cli", "promptseg.eval.cli", "promptseg.amg.cli",
                      "promptseg.incontext.cli", "promptseg.train.seggpt_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="promptseg",
        description="Promptable segmentation (Segment Anything) from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"promptseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "segment",
        help="segment an image from point and box prompts",
        description=(
            "Segment IMAGE from clicks and/or boxes. Writes OUT/mask.png (the best-scoring mask; mask_0.png, "
            "mask_1.png, … with several boxes), OUT/overlay.png and, with --rle, OUT/masks.json "
            "(such files of an earlier run into OUT are removed). Coordinates are pixels, x right and y down."
        ),
    )
    p.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, …)")
    p.add_argument(
        "--point", action="append", type=parse_point, default=[], metavar="X,Y[,LABEL]",
        help="a click; LABEL 1 = object (default), 0 = background; repeat for several clicks",
    )
    p.add_argument(
        "--box", action="append", type=parse_box, default=[], metavar="X0,Y0,X1,Y1",
        help="a box around an object; repeat to segment several objects (one mask per box)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory (created if needed)")
    mm = p.add_mutually_exclusive_group()
    mm.add_argument(
        "--multimask", dest="multimask", action="store_const", const=True,
        help="predict 3 candidate masks per prompt and keep the best-scoring one",
    )
    mm.add_argument(
        "--single", dest="multimask", action="store_const", const=False,
        help="predict one mask per prompt (default: 3 candidates for a single click, else one)",
    )
    p.add_argument("--rle", action="store_true", help="also write masks.json: COCO RLE, score and bbox (XYWH) per mask")
    _add_model_options(p, "SAM checkpoint: official .pth or promptseg .safetensors (default: the bundled model)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "convert",
        help="convert an official SAM .pth checkpoint to promptseg .safetensors",
        description="Convert an official SAM checkpoint (e.g. sam_vit_b_01ec64.pth) to promptseg's safetensors "
        "format, which embeds the model config. The architecture is inferred from the weights unless "
        "--model-type is given.",
    )
    p.add_argument("src", metavar="SRC", help="official SAM checkpoint (.pth)")
    p.add_argument("dst", metavar="DST", help="output file (.safetensors)")
    p.add_argument("--model-type", choices=MODEL_TYPES, help="official architecture (default: inferred from the weights)")
    p.add_argument(
        "--patch-size", type=number_type(int, 1), metavar="N",
        help="resize the image encoder to N-px patches (N divides the current patch size P; a fine-tuning start "
        "with (P/N)² times as many image tokens, see docs/default_model_history.md)",
    )
    p.add_argument(
        "--insert-blocks", type=index_list, metavar="I[,I...]",
        help="deepen the image encoder: a new windowed block after each encoder block index I (-1: before the "
        "first), initialised as the identity so the converted model computes what SRC computes; a fine-tuning "
        "start with more capacity, see docs/default_model_history.md",
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "average",
        help="average the weights of SAM checkpoints (a model soup, or weight averaging of a run's checkpoints)",
        description="Write the weighted mean of the weights of SAM checkpoints fine-tuned from one start — the "
        "step_*.pt checkpoints of a training run, the ends of several training cycles — to one promptseg "
        ".safetensors file. The architecture comes from the promptseg files among the sources (they must "
        "agree), else from --model-type, else it is inferred from the weights.",
    )
    p.add_argument("src", metavar="SRC", nargs="+", help="checkpoints: promptseg .safetensors, official .pth, "
                   "promptseg training checkpoints (step_*.pt)")
    p.add_argument("-o", "--output", required=True, metavar="DST", help="output file (.safetensors)")
    p.add_argument("--weights", type=number_type(float, 0.0, strict=True), nargs="+", metavar="W",
                   help="one weight > 0 per SRC (default: equal), normalised to sum 1")
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--model-type", choices=MODEL_TYPES, help="official architecture (default: from the files)")
    arch.add_argument("--config-from", metavar="CKPT",
                      help="take the architecture from CKPT, a promptseg .safetensors or training checkpoint that "
                      "embeds it (its weights are not averaged): for sources that carry none, such as checkpoints "
                      "written before promptseg stored it in them")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser(
        "info",
        help="show the config and size of a checkpoint",
        description="Print the architecture of a checkpoint (embedded in promptseg files, inferred from the "
        "weights of official ones) and its parameter count.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="official .pth or promptseg .safetensors checkpoint")
    p.add_argument("--json", action="store_true", help="print the full config as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "demo",
        help="segment the bundled sample photos and write overlays",
        description="Segment each bundled sample photo with a click, with a box and automatically (§B), and write overlay PNGs.",
    )
    p.add_argument("-o", "--output", default="promptseg-demo", metavar="OUTDIR",
                   help="output directory (default: ./promptseg-demo)")
    _add_model_options(p, "SAM checkpoint: official .pth or promptseg .safetensors (default: the bundled model)")
    p.add_argument("--points-per-side", type=int, default=16, metavar="N",
                   help="point grid of the automatic masks (default 16: §D.2's grid; 32 is the reference's)")
    # The reference's 0.88 / 0.95 suit the official models; the small default model, trained on synthetic
    # scenes only, is far less confident on photos (docs/default_model.md): hub.DEFAULT_MODEL_AMG_FILTERS.
    p.add_argument("--pred-iou-thresh", type=float, default=None, metavar="T",
                   help="automatic masks: predicted-IoU filter (default 0.35 with the bundled model, else the "
                        "reference's 0.88)")
    p.add_argument("--stability-thresh", type=float, default=None, metavar="T",
                   help="automatic masks: stability-score filter (default 0.35 with the bundled model, else the "
                        "reference's 0.95)")
    p.set_defaults(func=cmd_demo)

    for module in SUBCOMMAND_MODULES:  # data, train, eval: each registers its own sub-command
        importlib.import_module(module).register(sub)
    return parser


# --------------------------------------------------------------------------------------------- helpers
def _output_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _load_model(args: argparse.Namespace) -> Any:
    """The SAM of ``args.checkpoint`` (or the bundled one) with ``args.device`` and the ``--*dtype`` options."""
    from promptseg import hub

    dtypes = hub.precisions(args.dtype, getattr(args, "encoder_dtype", None), getattr(args, "transformer_dtype", None))
    return hub.load_model(args.checkpoint, device=hub.usable_device(args.device), **dtypes)


def _check_inside(points: Sequence[Point], boxes: Sequence[Box], image: str, size: Tuple[int, int]) -> None:
    h, w = size
    where = f"the image {image} ({w}×{h} pixels: x in [0, {w}], y in [0, {h}])"
    for x, y, label in points:
        if not (0 <= x <= w and 0 <= y <= h):
            raise ValueError(f"--point {x:g},{y:g} lies outside {where}")
    for x0, y0, x1, y1 in boxes:
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise ValueError(f"--box {x0:g},{y0:g},{x1:g},{y1:g} reaches outside {where}")


def _mask_line(path: Path, score: float, mask: Any) -> str:
    area = int(mask.sum())
    return f"{path}  score {score:.3f}  area {area} px ({100.0 * area / mask.size:.1f}% of the image)"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def describe_config(config: Any, source: str) -> List[str]:
    """Human-readable lines for a :class:`SamConfig` or a :class:`SegGptConfig`; ``source`` says where it
    came from."""
    from promptseg.models.sam.config import SAM_PRESETS
    from promptseg.models.seggpt.config import SegGptConfig

    if isinstance(config, SegGptConfig):
        return [
            f"architecture: SegGPT (config {source})",
            f"ViT: input {config.image_size[0]}×{config.image_size[1]} (prompt above query), patch "
            f"{config.patch_size}, width {config.hidden_size}, depth {config.num_hidden_layers}, "
            f"{config.num_attention_heads} heads, pair streams merged after block {config.merge_index}, "
            f"decoder features from blocks {list(config.intermediate_hidden_state_indices)}",
        ]
    enc, pe, dec = config.image_encoder, config.prompt_encoder, config.mask_decoder
    preset = next((name for name, c in SAM_PRESETS.items() if c == config), None)
    name = f"SAM ViT-{preset.split('_')[1].upper()}" if preset else "custom SAM"
    return [
        f"architecture: {name} (config {source})",
        f"image encoder: ViT, input {enc.img_size}×{enc.img_size}, patch {enc.patch_size}, width {enc.embed_dim}, "
        f"depth {enc.depth}, {enc.num_heads} heads, mlp ratio {enc.mlp_ratio:g}, window {enc.window_size}, "
        f"global blocks {list(enc.global_attn_indexes)}, output channels {enc.out_chans}",
        f"prompt encoder: width {pe.embed_dim}, mask channels {pe.mask_in_chans}",
        f"mask decoder: width {dec.transformer_dim}, depth {dec.transformer_depth}, {dec.num_heads} heads, "
        f"mlp {dec.mlp_dim}, {dec.num_multimask_outputs} multimask outputs + 1 single, "
        f"IoU head {dec.iou_head_depth}×{dec.iou_head_hidden_dim}",
    ]


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


#: The ``source`` of :func:`_read_checkpoint_summary` for files that carry their config.
EMBEDDED_CONFIG = "embedded in the file"


def _read_checkpoint_summary(path: Path) -> Tuple[Any, str, int, List[str], str]:
    """``(config, source, parameter count, dtypes, format)`` of a checkpoint, reading as little as possible."""
    from promptseg.checkpoint import CONFIG_KEY, CheckpointError, read_state_dict
    from promptseg.models.sam.weights import _inferred_config, _stored_config

    def stored_config(stored: Any) -> Any:
        if isinstance(stored, dict) and "merge_index" in stored:  # a SegGPT file (promptseg incontext)
            from promptseg.models.seggpt.weights import _stored_config as seggpt_stored_config

            return seggpt_stored_config(stored, path)
        return _stored_config(stored, path)

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":  # shapes and metadata only: no tensor is loaded
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
                dtypes = sorted({_SAFETENSORS_DTYPES.get(d, d) for d in (f.get_slice(k).get_dtype() for k in f.keys())})
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {err}") from err
        count = sum(math.prod(s) for s in shapes.values())
        if CONFIG_KEY in metadata:
            try:
                stored = json.loads(metadata[CONFIG_KEY])
            except json.JSONDecodeError as err:
                raise CheckpointError(f"checkpoint {path} has an invalid embedded config: {err}") from err
            return stored_config(stored), EMBEDDED_CONFIG, count, dtypes, "promptseg safetensors"
        state, stored = read_state_dict(path)
        fmt = "safetensors without a promptseg config"
    else:
        state, stored = read_state_dict(path)
        fmt = "PyTorch state dict (official SAM layout)"
    count = sum(int(t.numel()) for t in state.values())
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in state.values()})
    if stored is not None:  # a promptseg training checkpoint (step_*.pt)
        return stored_config(stored), EMBEDDED_CONFIG, count, dtypes, "promptseg training checkpoint"
    config = _inferred_config(state, path)
    return config, "inferred from the weights; decoder heads assumed 8", count, dtypes, fmt


# --------------------------------------------------------------------------------------------- commands
def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from promptseg import io

    points: List[Point] = args.point
    boxes: List[Box] = args.box
    if not points and not boxes:
        raise UsageError("promptseg segment: error: give at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1")
    if points and len(boxes) > 1:
        raise UsageError(
            "promptseg segment: error: --point can be combined with at most one --box; "
            f"got {len(points)} point(s) and {len(boxes)} boxes (segment each box separately to add clicks)"
        )
    image = io.read_image(args.image)
    size = image.shape[:2]
    _check_inside(points, boxes, args.image, size)
    if args.rle:
        io.mask_to_rle(np.zeros((1, 1), dtype=bool))  # fails now, not after the slow encoder, without pycocotools
    out = _output_dir(args.output)

    from promptseg.predictor import SamPredictor  # torch: imported once the command line is known to be good

    model = _load_model(args)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    coords = np.array([[(x, y) for x, y, _ in points]], dtype=np.float64) if points else None
    labels = np.array([[label for _, _, label in points]], dtype=np.int64) if points else None
    box_array = np.array(boxes, dtype=np.float64) if boxes else None
    multimask = "auto" if args.multimask is None else args.multimask
    masks, scores, _ = predictor.predict_many(coords, labels, box_array, multimask_output=multimask)
    count = masks.shape[0]
    best = scores.argmax(axis=1)
    chosen = masks[np.arange(count), best]
    chosen_scores = scores[np.arange(count), best].astype(float)

    names = ["mask.png"] if count == 1 else [f"mask_{i}.png" for i in range(count)]
    records: List[Dict[str, Any]] = []
    for i, name in enumerate(names):
        path = io.save_mask_png(chosen[i], out / name)
        print(_mask_line(path, chosen_scores[i], chosen[i]))
        prompt: Dict[str, Any] = {}
        if points:
            prompt["points"] = [[x, y] for x, y, _ in points]
            prompt["labels"] = [label for _, _, label in points]
        if boxes:
            prompt["box"] = list(boxes[i])
        records.append({
            "id": i,
            "file": name,
            "score": round(float(chosen_scores[i]), 6),
            "area": int(chosen[i].sum()),
            "bbox": io.mask_bbox(chosen[i]),
            "prompt": prompt,
        })
    overlay = out / "overlay.png"
    io.save_overlay_png(
        image, chosen, overlay,
        points=coords[0] if coords is not None else None,
        labels=labels[0] if labels is not None else None,
        boxes=box_array, scores=chosen_scores,
    )
    print(f"overlay: {overlay}")
    if args.rle:
        for record, mask in zip(records, chosen):
            record["segmentation"] = io.mask_to_rle(mask)
        doc = {
            "image": str(args.image),
            "height": int(size[0]),
            "width": int(size[1]),
            "checkpoint": str(args.checkpoint) if args.checkpoint else "default",
            "bbox_format": "XYWH (x, y of the top-left corner, width, height) in pixels",
            "masks": records,
        }
        print(f"masks (COCO RLE): {io.save_json(doc, out / 'masks.json')}")
    _remove_stale_outputs(out, keep=set(names) | ({"masks.json"} if args.rle else set()))
    return 0


def _remove_stale_outputs(out: Path, keep: set) -> None:
    """Delete what an earlier ``segment`` into ``out`` wrote and this one did not (``mask_3.png`` of a run
    with more boxes, ``masks.json`` of a run with ``--rle``), so the folder describes one run. Only
    ``segment``'s own names are touched, and only after the new files are written."""
    import re

    for path in out.iterdir():
        ours = re.fullmatch(r"mask(_\d+)?\.png|masks\.json", path.name)
        if ours and path.name not in keep and path.is_file():
            path.unlink()
            print(f"removed stale {path} (from an earlier run)")


def cmd_convert(args: argparse.Namespace) -> int:
    from promptseg.checkpoint import CheckpointError
    from promptseg.models.sam.weights import convert_checkpoint

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if dst.suffix != ".safetensors":
        raise ValueError(f"DST {dst} must end in .safetensors (promptseg picks the reader from the file extension)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"DST {dst} is the source file; choose another path")
    try:
        config = convert_checkpoint(
            src, dst, config=args.model_type, patch_size=args.patch_size, insert_blocks=args.insert_blocks
        )
    except CheckpointError as err:
        if args.model_type is None:
            raise
        raise CheckpointError(
            f"{src} is not a SAM {args.model_type} checkpoint (omit --model-type to infer the architecture): {err}"
        ) from err
    print(f"converted {src} -> {dst} ({_human_bytes(dst.stat().st_size)})")
    if args.model_type:
        source = f"--model-type {args.model_type}"
    elif src.suffix.lower() == ".safetensors":  # the header only, when the file embeds its config
        source = f"{_read_checkpoint_summary(src)[1]} {src.name}"
    else:
        source = "inferred from the weights; decoder heads assumed 8"
    if args.patch_size is not None:
        source += f", resized to {args.patch_size}-px patches"
    if args.insert_blocks is not None:
        source += f", {len(args.insert_blocks)} identity-initialised encoder blocks inserted"
    for line in describe_config(config, source):
        print(line)
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from promptseg.models.sam.config import SamConfig
    from promptseg.models.sam.weights import average_checkpoints

    sources, dst = [Path(s) for s in args.src], Path(args.output)
    if len(sources) < 2:
        raise ValueError("SRC: give at least two checkpoints to average")
    for src in sources:
        if not src.is_file():
            raise FileNotFoundError(f"checkpoint not found: {src}")
    if dst.suffix != ".safetensors":
        raise ValueError(f"DST {dst} must end in .safetensors (promptseg picks the reader from the file extension)")
    if dst.exists() and any(dst.resolve() == src.resolve() for src in sources):
        raise ValueError(f"DST {dst} is one of the sources; choose another path")
    if args.weights is not None and len(args.weights) != len(sources):
        raise ValueError(f"--weights: {len(args.weights)} weights for {len(sources)} checkpoints")
    config, origin = args.model_type, f"--model-type {args.model_type}" if args.model_type else "from the sources"
    if args.config_from is not None:
        config, how, *_ = _read_checkpoint_summary(Path(args.config_from))
        if how != EMBEDDED_CONFIG:
            raise ValueError(f"--config-from: {args.config_from} embeds no architecture (its config would be {how})")
        if not isinstance(config, SamConfig):
            raise ValueError(f"--config-from: {args.config_from} is a SegGPT checkpoint; give a SAM one")
        origin = f"of {args.config_from}"
    config = average_checkpoints(sources, dst, weights=args.weights, config=config)
    weights = args.weights or [1.0] * len(sources)
    total = sum(weights)
    print(f"averaged {len(sources)} checkpoints -> {dst} ({_human_bytes(dst.stat().st_size)})")
    for src, weight in zip(sources, weights):
        print(f"  {weight / total:.4f}  {src}")
    for line in describe_config(config, origin):
        print(line)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    config, source, count, dtypes, fmt = _read_checkpoint_summary(path)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    print(f"checkpoint: {path} ({fmt}, {_human_bytes(path.stat().st_size)})")
    for line in describe_config(config, source):
        print(line)
    print(f"parameters: {count:,} ({count / 1e6:.1f} M), dtype {', '.join(dtypes)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from promptseg import io
    from promptseg.amg import SamAutomaticMaskGenerator
    from promptseg.amg.outputs import render_masks_overlay, write_png
    from promptseg.hub import default_model_amg_filters

    photos = io.sample_images()
    if not photos:
        raise FileNotFoundError("this promptseg installation has no sample photos in promptseg/assets")
    model = _load_model(args)
    out = _output_dir(args.output)
    # automatic masks (§B): a point grid, filtered by predicted IoU and stability, then NMS
    given = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_thresh}
    filters = {k: v for k, v in given.items() if v is not None}  # unset: the bundled model's, else the reference's
    filters.update(default_model_amg_filters(args.checkpoint, filters))
    generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **filters)
    predictor = generator.predictor  # one encoding per photo serves the click, the box and the automatic masks
    lines: List[str] = []
    for photo in tqdm(photos, desc="segmenting sample photos", unit="photo", file=sys.stderr):
        image = io.read_image(photo)
        prompts = io.sample_prompts(photo, image.shape[:2])
        predictor.set_image(image)  # the slow part: the image encoder

        point = np.array([prompts["point"]], dtype=np.float64)
        masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
        best = int(scores.argmax())
        path = out / f"{photo.stem}_point.png"
        io.save_overlay_png(image, masks[best], path, points=point, labels=[1], scores=[float(scores[best])])
        lines.append(f"{path}  click on {prompts['point_target']}  score {scores[best]:.3f}")

        box = np.array(prompts["box"], dtype=np.float64)
        masks, scores, _ = predictor.predict(box=box, multimask_output=False)
        path = out / f"{photo.stem}_box.png"
        io.save_overlay_png(image, masks[0], path, boxes=box, scores=[float(scores[0])])
        lines.append(f"{path}  box around {prompts['box_target']}  score {scores[0]:.3f}")

        records = generator.generate(image, predictor=predictor)
        path = out / f"{photo.stem}_auto.png"
        write_png(render_masks_overlay(image, records), path)
        lines.append(f"{path}  automatic masks: {len(records)}")
    for line in lines:
        print(line)
    print(f"{len(lines)} overlays written to {out}")
    return 0


# --------------------------------------------------------------------------------------------- entry point
def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error)."""
    from promptseg.io import MissingDependencyError

    parser = build_parser()
    command = "promptseg"
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        command = f"promptseg {args.command}"
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BrokenPipeError:  # e.g. `promptseg info CKPT | head -1`: stop quietly
        try:  # the recipe of the Python docs: no second error when the interpreter flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except UsageError as err:
        print(_one_line(str(err)), file=sys.stderr)
    except (ValueError, OSError, MissingDependencyError) as err:  # CheckpointError is a ValueError
        message = _one_line(str(err)) or type(err).__name__
        print(f"{command}: error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
