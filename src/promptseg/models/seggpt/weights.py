"""SegGPT weights in and out: transformers directories, the official Painter ``.pth``, promptseg safetensors.

Three state-dict layouts describe the same tensors:

* **promptseg** — :class:`~promptseg.models.seggpt.model.SegGpt`'s own names (``embeddings.…``,
  ``encoder.layers.N.attention.qkv.weight``, ``decoder.decoder_pred.conv.weight`` …);
* **transformers** — ``SegGptForImageSegmentation``: promptseg's names with a ``model.`` prefix on the
  embeddings and encoder, and ``patch_embeddings.projection`` for ``patch_embeddings.proj``;
* **painter** — the official ``seggpt_vit_large.pth`` of BAAI's Painter repository (``patch_embed.proj``,
  ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``, ``segment_token_x`` …; the mapping is that of transformers'
  ``convert_seggpt_to_hf.py``).

Every loader detects the layout, converts to promptseg's names and loads strictly, so a missing,
unexpected or mis-shaped tensor is a :class:`~promptseg.checkpoint.CheckpointError` naming it. Files are
read without unpickling arbitrary objects (``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from promptseg.checkpoint import (
    CheckpointError,
    PathLike,
    load_state_dict_strict,
    read_state_dict,
    save_safetensors,
)
from promptseg.config_utils import missing_keys
from promptseg.models.seggpt.build import build_seggpt, resolve_seggpt_config
from promptseg.models.seggpt.config import SegGptConfig
from promptseg.models.seggpt.model import SegGpt

FORMAT = "promptseg-seggpt"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

StateDict = Dict[str, Tensor]

# ---------------------------------------------------------------------------------------------------
# Key mappings. Each table maps a promptseg name (regex on the left) to a foreign one and back.

#: promptseg ↔ Painter, for names outside the transformer blocks.
_PAINTER_FIXED: Tuple[Tuple[str, str], ...] = (
    ("embeddings.patch_embeddings.proj.weight", "patch_embed.proj.weight"),
    ("embeddings.patch_embeddings.proj.bias", "patch_embed.proj.bias"),
    ("embeddings.mask_token", "mask_token"),
    ("embeddings.segment_token_input", "segment_token_x"),
    ("embeddings.segment_token_prompt", "segment_token_y"),
    ("embeddings.type_token_semantic", "type_token_cls"),
    ("embeddings.type_token_instance", "type_token_ins"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("encoder.layernorm.weight", "norm.weight"),
    ("encoder.layernorm.bias", "norm.bias"),
    ("decoder.decoder_embed.weight", "decoder_embed.weight"),
    ("decoder.decoder_embed.bias", "decoder_embed.bias"),
    ("decoder.decoder_pred.conv.weight", "decoder_pred.0.weight"),
    ("decoder.decoder_pred.conv.bias", "decoder_pred.0.bias"),
    ("decoder.decoder_pred.layernorm.weight", "decoder_pred.1.weight"),
    ("decoder.decoder_pred.layernorm.bias", "decoder_pred.1.bias"),
    ("decoder.decoder_pred.head.weight", "decoder_pred.3.weight"),
    ("decoder.decoder_pred.head.bias", "decoder_pred.3.bias"),
)

#: promptseg ↔ Painter inside block ``N`` (suffixes after ``encoder.layers.N.`` / ``blocks.N.``).
_PAINTER_BLOCK: Tuple[Tuple[str, str], ...] = (
    ("attention.", "attn."),  # qkv, proj, rel_pos_h, rel_pos_w keep their names
    ("mlp.lin1.", "mlp.fc1."),
    ("mlp.lin2.", "mlp.fc2."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
)

_OURS_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.*)")
_PAINTER_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.*)")


def _rename(state: Mapping[str, Tensor], fn: Callable[[str], Optional[str]], what: str) -> StateDict:
    """Apply ``fn`` to every key; a key ``fn`` cannot map is a CheckpointError naming it."""
    out: StateDict = {}
    unknown: List[str] = []
    for key, value in state.items():
        new = fn(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:10]) + (f", … ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise CheckpointError(f"unexpected keys for the {what} layout: {shown}")
    return out


def _block_key(key: str, pattern: re.Pattern[str], prefix: str, table: Tuple[Tuple[str, str], ...], forward: bool) -> Optional[str]:
    m = pattern.fullmatch(key)
    if m is None:
        return None
    index, rest = m.groups()
    for ours, theirs in table:
        src, dst = (ours, theirs) if forward else (theirs, ours)
        if rest.startswith(src):
            return f"{prefix}{index}.{dst}{rest[len(src):]}"
    return None


_TO_PAINTER = dict(_PAINTER_FIXED)
_FROM_PAINTER = {theirs: ours for ours, theirs in _PAINTER_FIXED}


def _to_painter_key(key: str) -> Optional[str]:
    if key in _TO_PAINTER:
        return _TO_PAINTER[key]
    return _block_key(key, _OURS_BLOCK, "blocks.", _PAINTER_BLOCK, forward=True)


def _from_painter_key(key: str) -> Optional[str]:
    if key in _FROM_PAINTER:
        return _FROM_PAINTER[key]
    return _block_key(key, _PAINTER_BLOCK_RE, "encoder.layers.", _PAINTER_BLOCK, forward=False)


_HF_PROJ = ("embeddings.patch_embeddings.proj.", "embeddings.patch_embeddings.projection.")


def _to_hf_key(key: str) -> Optional[str]:
    if key.startswith(_HF_PROJ[0]):
        key = _HF_PROJ[1] + key[len(_HF_PROJ[0]) :]
    if key.startswith(("embeddings.", "encoder.")):
        return "model." + key
    return key if key.startswith("decoder.") else None


def _from_hf_key(key: str) -> Optional[str]:
    if key.startswith("model."):
        key = key[len("model.") :]
        if not key.startswith(("embeddings.", "encoder.")):
            return None
        if key.startswith(_HF_PROJ[1]):
            key = _HF_PROJ[0] + key[len(_HF_PROJ[1]) :]
        return key
    return key if key.startswith("decoder.") else None


def _state_of(model_or_state: Union[SegGpt, Mapping[str, Tensor]]) -> Mapping[str, Tensor]:
    return model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state


def to_painter_state_dict(model_or_state: Union[SegGpt, Mapping[str, Tensor]]) -> StateDict:
    """promptseg model (or its state dict) → the official Painter layout (``blocks.N.attn.qkv.weight`` …)."""
    return _rename(_state_of(model_or_state), _to_painter_key, "promptseg")


def from_painter_state_dict(state: Mapping[str, Tensor]) -> StateDict:
    """Official Painter state dict → promptseg names."""
    return _rename(state, _from_painter_key, "Painter")


def to_hf_state_dict(model_or_state: Union[SegGpt, Mapping[str, Tensor]]) -> StateDict:
    """promptseg model (or its state dict) → ``transformers.SegGptForImageSegmentation`` names."""
    return _rename(_state_of(model_or_state), _to_hf_key, "promptseg")


def from_hf_state_dict(state: Mapping[str, Tensor]) -> StateDict:
    """``transformers.SegGptForImageSegmentation`` state dict → promptseg names."""
    return _rename(state, _from_hf_key, "transformers")


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """``"promptseg"``, ``"transformers"`` or ``"painter"`` from the patch-embedding key of ``state``."""
    markers = {
        "embeddings.patch_embeddings.proj.weight": "promptseg",
        "model.embeddings.patch_embeddings.projection.weight": "transformers",
        "patch_embed.proj.weight": "painter",
    }
    found = [layout for key, layout in markers.items() if key in state]
    if len(found) != 1:
        raise CheckpointError(
            "not a SegGPT checkpoint: expected exactly one of the patch-embedding keys "
            f"{sorted(markers)}, found {len(found)}"
        )
    return found[0]


def to_promptseg_state_dict(state: Mapping[str, Tensor]) -> StateDict:
    """A state dict in any of the three layouts → promptseg names."""
    layout = detect_layout(state)
    if layout == "transformers":
        return from_hf_state_dict(state)
    if layout == "painter":
        return from_painter_state_dict(state)
    return dict(state)


# ---------------------------------------------------------------------------------------------------
# Configs.

#: transformers config keys with the same meaning in :class:`SegGptConfig`.
_HF_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_dim",
    "num_channels",
    "image_size",
    "merge_index",
    "intermediate_hidden_state_indices",
    "decoder_hidden_size",
    "qkv_bias",
    "layer_norm_eps",
    "use_relative_position_embeddings",
    "drop_path_rate",
    "beta",
)
#: Generic transformers bookkeeping that does not affect the computation (ignored when present).
_HF_IGNORED = frozenset(
    {
        "transformers_version",
        "architectures",
        "initializer_range",  # random-init scale only
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "_commit_hash",
        "_attn_implementation_autoset",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "tie_word_embeddings",
    }
)


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"transformers config: {name} must be square, got {value!r}")
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"transformers config: {name} must be an int, got {value!r}")
    return value


def config_from_hf(data: Mapping[str, Any]) -> SegGptConfig:
    """A transformers ``SegGptConfig`` dict (``config.json``) → :class:`SegGptConfig`.

    Bookkeeping keys (``transformers_version``, ``architectures``, ``initializer_range`` …) are ignored;
    ``model_type`` must be ``"seggpt"``, ``hidden_act`` ``"gelu"`` and ``hidden_dropout_prob`` 0 (the
    only values the released model and promptseg use). Any other unknown key is a ValueError naming it.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"transformers config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    model_type = data.pop("model_type", "seggpt")
    if model_type != "seggpt":
        raise ValueError(f"transformers config: model_type must be 'seggpt', got {model_type!r}")
    act = data.pop("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"transformers config: hidden_act {act!r} is not supported (only 'gelu')")
    dropout = data.pop("hidden_dropout_prob", 0.0)
    if dropout:
        raise ValueError(f"transformers config: hidden_dropout_prob {dropout!r} is not supported (only 0)")
    kwargs: Dict[str, Any] = {k: data.pop(k) for k in _HF_FIELDS if k in data}
    for name in ("patch_size", "pretrain_image_size"):
        if name in data:
            kwargs[name] = _square(data.pop(name), name)
    if isinstance(kwargs.get("image_size"), int):
        kwargs["image_size"] = (kwargs["image_size"], kwargs["image_size"])
    unknown = sorted(k for k in data if k not in _HF_IGNORED)
    if unknown:
        raise ValueError(f"unknown key(s) in transformers SegGPT config: {unknown}")
    return SegGptConfig.from_dict(kwargs)


def config_to_hf(config: SegGptConfig) -> Dict[str, Any]:
    """:class:`SegGptConfig` → a transformers ``config.json`` dict (inverse of :func:`config_from_hf`)."""
    data = {k: v for k, v in config.to_dict().items() if k in _HF_FIELDS}
    data.update(
        model_type="seggpt",
        architectures=["SegGptForImageSegmentation"],
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        patch_size=config.patch_size,
        pretrain_image_size=config.pretrain_image_size,
        mlp_dim=config.hidden_mlp_dim,
    )
    return data


def infer_seggpt_config(state: Mapping[str, Tensor]) -> SegGptConfig:
    """Recover the architecture of a state dict (any layout) from its tensor shapes.

    ``merge_index`` and which layers feed the decoder are not visible in the weights: the decoder's
    ``k`` inputs are assumed to be ``k`` evenly spaced layers ending with the last (the released model's
    ``(5, 11, 17, 23)``) and the merge to happen after layer ``min(2, first feature layer)``.
    """
    ours = to_promptseg_state_dict(state)
    try:
        patch = ours["embeddings.patch_embeddings.proj.weight"]
        hidden, channels, patch_size, _ = patch.shape
        layers = 1 + max(int(m.group(1)) for k in ours if (m := _OURS_BLOCK.fullmatch(k)))
        rel_h = ours.get("encoder.layers.0.attention.rel_pos_h")
        rel_w = ours.get("encoder.layers.0.attention.rel_pos_w")
        if rel_h is None or rel_w is None:
            raise CheckpointError("cannot infer the image size or head count without relative position embeddings")
        head_dim = rel_h.shape[1]
        pos = ours["embeddings.position_embeddings"].shape[1] - 1
        pretrain_grid = math.isqrt(pos)
        if pretrain_grid * pretrain_grid != pos:
            raise CheckpointError(f"position embeddings hold {pos} + 1 positions, not a square grid plus [CLS]")
        k = ours["decoder.decoder_embed.weight"].shape[1] // hidden
        indices = tuple((i + 1) * layers // k - 1 for i in range(k))
        mlp_dim = ours["encoder.layers.0.mlp.lin1.weight"].shape[0]
        config = SegGptConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // head_dim,
            mlp_dim=None if mlp_dim == 4 * hidden else mlp_dim,
            patch_size=patch_size,
            num_channels=channels,
            image_size=(((rel_h.shape[0] + 1) // 2) * patch_size, ((rel_w.shape[0] + 1) // 2) * patch_size),
            pretrain_image_size=pretrain_grid * patch_size,
            merge_index=min(2, indices[0]),
            intermediate_hidden_state_indices=indices,
            decoder_hidden_size=ours["decoder.decoder_pred.conv.weight"].shape[0],
            qkv_bias="encoder.layers.0.attention.qkv.bias" in ours,
        )
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"cannot infer a SegGPT config from the checkpoint: {err}") from err
    return config


# ---------------------------------------------------------------------------------------------------
# Reading.


def _hf_weights_in(directory: Path) -> Path:
    for name in HF_WEIGHTS:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no {' or '.join(HF_WEIGHTS)} in transformers directory {directory}")


def read_seggpt_checkpoint(path: PathLike) -> Tuple[StateDict, Optional[SegGptConfig]]:
    """Read any supported checkpoint → ``(promptseg state dict, config or None)``.

    ``path`` is a transformers directory (``config.json`` + ``model.safetensors``), a file in one (its
    ``config.json`` is used), a promptseg ``.safetensors`` (embedded config) or a Painter ``.pth``.
    """
    path = Path(path)
    hf_config: Optional[Path] = None
    if path.is_dir():
        hf_config = path / HF_CONFIG
        if not hf_config.is_file():
            raise FileNotFoundError(f"{path} is a directory without {HF_CONFIG}: not a transformers model directory")
        path = _hf_weights_in(path)
    elif (path.parent / HF_CONFIG).is_file() and path.name in HF_WEIGHTS:
        hf_config = path.parent / HF_CONFIG
    state, stored = read_state_dict(path)
    config: Optional[SegGptConfig] = None
    if stored is not None:
        config = _stored_config(stored, path)
    elif hf_config is not None:
        try:
            config = config_from_hf(json.loads(hf_config.read_text()))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"malformed {hf_config}: {err}") from err
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{hf_config} is not a valid transformers SegGPT config: {err}") from err
    try:
        return to_promptseg_state_dict(state), config
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from err


def _stored_config(stored: Mapping[str, Any], source: PathLike) -> SegGptConfig:
    """The SegGPT config embedded in checkpoint ``source``; a :class:`CheckpointError` naming the file if
    invalid or incomplete (promptseg writes every field: a default for a missing one, such as
    ``merge_index``, would silently build another model than the file's)."""
    try:
        config = SegGptConfig.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {source} has an invalid embedded SegGPT config: {err}") from err
    missing = missing_keys(config, stored)
    if missing:
        raise CheckpointError(f"checkpoint {source} has an invalid embedded SegGPT config: missing key(s) {missing}")
    return config


def load_seggpt_state(model: SegGpt, path: PathLike) -> SegGpt:
    """Strictly load the checkpoint at ``path`` (any supported layout) into ``model``."""
    state, _ = read_seggpt_checkpoint(path)
    load_state_dict_strict(model, state, source=f"SegGPT checkpoint {path}")
    return model


def load_seggpt(
    path: PathLike,
    *,
    config: Optional[Union[SegGptConfig, str]] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SegGpt:
    """Build and load a SegGPT from ``path`` (see :func:`read_seggpt_checkpoint` for the layouts).

    The architecture comes from ``config`` if given, else from the checkpoint (embedded config or
    ``config.json``), else it is inferred from the tensor shapes (:func:`infer_seggpt_config`).
    """
    state, stored = read_seggpt_checkpoint(path)
    if config is not None:
        resolved = resolve_seggpt_config(config)
    else:
        try:
            resolved = stored if stored is not None else infer_seggpt_config(state)
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint {path}: {err}") from err
    model = build_seggpt(resolved)
    load_state_dict_strict(model, state, source=f"SegGPT checkpoint {path}")
    return model.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# Writing.


def save_seggpt(model: SegGpt, path: PathLike) -> None:
    """Save ``model`` in promptseg's format: float32 safetensors with the JSON config in the header."""
    config = model.config if isinstance(model, SegGpt) else None
    if config is None:
        raise TypeError(f"model must be a SegGpt built by build_seggpt or load_seggpt, got {type(model).__name__}")
    floats = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_safetensors(floats, path, config.to_dict(), FORMAT)


def convert_seggpt(src: PathLike, dst: PathLike, config: Optional[Union[SegGptConfig, str]] = None) -> SegGptConfig:
    """Convert any loadable SegGPT checkpoint (transformers, Painter, promptseg) to promptseg safetensors."""
    model = load_seggpt(src, config=config)
    save_seggpt(model, dst)
    assert model.config is not None
    return model.config
