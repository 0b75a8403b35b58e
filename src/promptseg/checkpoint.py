"""Safe checkpoint I/O: official SAM ``.pth`` files and promptseg's safetensors format.

* Official checkpoints (``sam_vit_b_01ec64.pth`` …) are read with ``torch.load(weights_only=True)``: a
  file that would need arbitrary unpickling is refused with a clear error, never executed.
* promptseg's own format is a ``.safetensors`` file whose header metadata holds the model's JSON config
  (key ``promptseg.config``), so a file alone rebuilds its model.
* Loading is strict: missing, unexpected and mis-shaped keys are all named in one error.
* Writes are atomic (temporary file + rename): a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from promptseg.fileio import atomic_write  # noqa: F401  (re-exported)

PathLike = Union[str, "os.PathLike[str]"]
CONFIG_KEY = "promptseg.config"
FORMAT_KEY = "promptseg.format"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def read_state_dict(path: PathLike) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    """Read ``path`` → ``(state_dict, config_or_None)`` without executing any pickled code."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file (.pth or .safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        state, config = _read_safetensors(path)
        return strip_wrapper_prefixes(state), config
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - random bytes fail the weights-only unpickler in many ways
        # (UnpicklingError, IndexError, KeyError, UnicodeDecodeError, EOFError, BadZipFile, ...): all unreadable
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is corrupt, truncated, or not a weights-only PyTorch file "
            f"({type(err).__name__}); promptseg never unpickles arbitrary objects"
        ) from err
    config = None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):  # common training-checkpoint wrappers
            if key in obj and isinstance(obj[key], Mapping):
                if isinstance(obj.get("model_config"), Mapping):  # promptseg training checkpoints carry it
                    config = dict(obj["model_config"])
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return strip_wrapper_prefixes(dict(obj)), config


#: Key prefixes that wrappers add to every key of the model they wrap: DistributedDataParallel /
#: DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state`` without a wrapper prefix that *every* key carries (repeatedly: ``module._orig_mod.``), as
    saved from a DDP or compiled model's ``state_dict()``; other state dicts are returned unchanged."""
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _read_safetensors(path: Path) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {err}") from err
    config = None
    if CONFIG_KEY in metadata:
        try:
            config = json.loads(metadata[CONFIG_KEY])
        except json.JSONDecodeError as err:
            raise CheckpointError(f"checkpoint {path} has a malformed JSON config: {err}") from err
    return state, config


def key_mismatches(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    """``(missing, unexpected, other_shape)``: the sorted keys of ``expected`` absent from ``given``, those
    of ``given`` absent from ``expected``, and the shared keys whose tensors differ in shape."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))
    return missing, unexpected, shapes


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or mis-shaped key is an error naming them."""
    own = model.state_dict()
    missing, unexpected, other_shape = key_mismatches(own, state_dict)
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in other_shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", … ({len(keys)} in all)" if len(keys) > 10 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not fit the model — " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_into(model: nn.Module, path: PathLike) -> nn.Module:
    """Strictly load the weights at ``path`` (``.pth`` or ``.safetensors``) into ``model``."""
    state, _ = read_state_dict(path)
    load_state_dict_strict(model, state, source=f"checkpoint {path}")
    return model


def save_safetensors(
    state_dict: Mapping[str, Tensor], path: PathLike, config: Mapping[str, Any], fmt: str
) -> None:
    """Write ``state_dict`` with its JSON ``config`` in the header metadata, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {CONFIG_KEY: json.dumps(dict(config), sort_keys=True), FORMAT_KEY: fmt}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def average_state_dicts(
    states: Iterable[Tuple[str, Mapping[str, Tensor]]], weights: Sequence[float]
) -> Dict[str, Tensor]:
    """The weighted mean of state dicts with the same keys and shapes: a "model soup", or stochastic weight
    averaging from a run's saved checkpoints.

    ``states`` yields ``(name, state_dict)`` pairs (``name`` for error messages), consumed one at a time, so
    only the running sum and one state dict are in memory; ``weights`` holds one finite weight > 0 per state
    (normalised here). Floating-point tensors are summed in float64 and returned in the first state's dtype;
    other tensors (integer buffers) must be equal in every state and are returned as they are. A state whose
    keys, shapes or integer tensors differ from the first's raises ``ValueError`` naming it and the keys.
    """
    weights = [float(w) for w in weights]
    if not weights:
        raise ValueError("weights: expected one weight per state dict, got none")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"weights must be finite and > 0, got {weights}")
    total = sum(weights)
    sums: Dict[str, Tensor] = {}
    first: Dict[str, Tensor] = {}
    count = 0
    for name, state in states:
        if count == len(weights):
            raise ValueError(f"weights: {len(weights)} weights for more state dicts ({name} is one too many)")
        weight = weights[count]
        if count == 0:
            first = {k: v.detach() for k, v in state.items()}
        else:
            missing, unexpected, shapes = key_mismatches(first, state)
            if missing or unexpected or shapes:
                raise ValueError(
                    f"{name} does not match the first state dict: missing {missing[:5]}, unexpected "
                    f"{unexpected[:5]}, other shapes {shapes[:5]}"
                )
            fixed = sorted(k for k, v in first.items() if not v.is_floating_point() and not torch.equal(state[k], v))
            if fixed:
                raise ValueError(f"{name}: non-floating tensors differ from the first state dict's: {fixed[:5]}")
        for key, value in state.items():
            if value.is_floating_point():
                term = value.detach().double() * (weight / total)
                sums[key] = term if count == 0 else sums[key].add_(term)
        count += 1
    if count != len(weights):
        raise ValueError(f"weights: {len(weights)} weights for {count} state dicts")
    return {k: sums[k].to(v.dtype) if k in sums else v for k, v in first.items()}
