"""SegGPT weights and configs: transformers directories, the Painter layout, promptseg safetensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from promptseg.checkpoint import CheckpointError, read_state_dict
from promptseg.models.seggpt import (
    SEGGPT_PRESETS,
    SegGpt,
    SegGptConfig,
    build_seggpt,
    convert_seggpt,
    load_seggpt,
    save_seggpt,
    seggpt_model_registry,
    to_hf_state_dict,
    to_painter_state_dict,
)
from promptseg.models.seggpt.weights import (
    config_from_hf,
    config_to_hf,
    detect_layout,
    from_hf_state_dict,
    from_painter_state_dict,
    infer_seggpt_config,
)

TINY = SEGGPT_PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny(helpers) -> SegGpt:
    """A tiny promptseg SegGPT with every tensor perturbed."""
    torch.manual_seed(0)
    return helpers.perturb_(build_seggpt(TINY), 1, 0.05)


def assert_same_weights(a: SegGpt, b: SegGpt) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def inputs(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    h, w = TINY.single_image_size
    return {k: torch.randn(1, 3, h, w, generator=gen) for k in ("pixel_values", "prompt_pixel_values", "prompt_masks")}


# ---------------------------------------------------------------------------------------------------
# Key layouts.

#: Every key of the official ``seggpt_vit_large.pth`` outside the blocks, and the keys of block 0.
PAINTER_FIXED = {
    "patch_embed.proj.weight", "patch_embed.proj.bias", "mask_token", "segment_token_x", "segment_token_y",
    "type_token_cls", "type_token_ins", "pos_embed", "norm.weight", "norm.bias", "decoder_embed.weight",
    "decoder_embed.bias", "decoder_pred.0.weight", "decoder_pred.0.bias", "decoder_pred.1.weight",
    "decoder_pred.1.bias", "decoder_pred.3.weight", "decoder_pred.3.bias",
}  # fmt: skip
PAINTER_BLOCK = {
    f"blocks.0.{k}"
    for k in (
        "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "attn.rel_pos_h", "attn.rel_pos_w",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
    )
}  # fmt: skip


def test_painter_layout_has_the_official_keys(tiny):
    painter = to_painter_state_dict(tiny)
    assert PAINTER_FIXED | PAINTER_BLOCK <= set(painter)
    assert len(painter) == len(PAINTER_FIXED) + len(PAINTER_BLOCK) * TINY.num_hidden_layers
    assert detect_layout(painter) == "painter"
    assert torch.equal(painter["segment_token_x"], tiny.embeddings.segment_token_input)
    assert torch.equal(painter["type_token_cls"], tiny.embeddings.type_token_semantic)
    assert torch.equal(painter["blocks.3.mlp.fc2.weight"], tiny.encoder.layers[3].mlp.lin2.weight)
    assert torch.equal(painter["decoder_pred.3.weight"], tiny.decoder.decoder_pred.head.weight)


def test_layout_conversions_are_inverse(tiny):
    state = tiny.state_dict()
    for there, back in ((to_painter_state_dict, from_painter_state_dict), (to_hf_state_dict, from_hf_state_dict)):
        restored = back(there(state))
        assert sorted(restored) == sorted(state)
        assert all(restored[k] is state[k] for k in state)


def test_hf_layout_matches_transformers_names(tiny):
    transformers = pytest.importorskip("transformers")
    ref = transformers.SegGptForImageSegmentation(transformers.SegGptConfig.from_dict(config_to_hf(TINY)))
    assert set(to_hf_state_dict(tiny)) == set(ref.state_dict())
    assert detect_layout(ref.state_dict()) == "transformers"


def test_unknown_foreign_keys_are_named():
    with pytest.raises(CheckpointError, match="blocks.0.ls1.gamma"):
        from_painter_state_dict({"patch_embed.proj.weight": torch.zeros(1), "blocks.0.ls1.gamma": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="model.pooler.weight"):
        from_hf_state_dict({"model.pooler.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a SegGPT checkpoint"):
        detect_layout({"image_encoder.patch_embed.proj.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------------
# Round trips.


def test_transformers_directory_round_trip(tiny, tmp_path: Path):
    """transformers ``save_pretrained`` dir → promptseg (same outputs) → safetensors → load: equal."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.SegGptForImageSegmentation(transformers.SegGptConfig.from_dict(config_to_hf(TINY)))
    ref.load_state_dict(to_hf_state_dict(tiny))
    ref.save_pretrained(tmp_path / "hf")
    loaded = load_seggpt(tmp_path / "hf")
    assert loaded.config == TINY
    assert_same_weights(loaded, tiny)
    with torch.no_grad():
        expected = ref.eval()(**inputs()).pred_masks
        got = loaded(**inputs()).pred_masks
    assert (got - expected).abs().max().item() <= 1e-5
    # the weights file alone finds its config.json
    assert load_seggpt(tmp_path / "hf" / "model.safetensors").config == TINY

    save_seggpt(loaded, tmp_path / "tiny.safetensors")
    again = load_seggpt(tmp_path / "tiny.safetensors")
    assert again.config == TINY
    assert_same_weights(again, tiny)


def test_painter_round_trip(tiny, tmp_path: Path):
    path = tmp_path / "seggpt_tiny.pth"
    torch.save({"model": to_painter_state_dict(tiny)}, path)  # the official wrapper: {"model": state}
    loaded = load_seggpt(path, config="tiny")
    assert_same_weights(loaded, tiny)
    # without a config, the architecture is inferred from the shapes (tiny follows the official pattern)
    assert load_seggpt(path).config == TINY
    assert infer_seggpt_config(tiny.state_dict()) == TINY


def test_vit_l_config_is_inferred_from_shapes():
    """The official layout's shapes (meta tensors: no memory) give back the released config."""
    with torch.device("meta"):
        model = build_seggpt("vit_l")
    painter = to_painter_state_dict(model)
    assert infer_seggpt_config(painter) == SEGGPT_PRESETS["vit_l"]


def test_convert_seggpt(tiny, tmp_path: Path):
    src = tmp_path / "painter.pth"
    torch.save(to_painter_state_dict(tiny), src)
    config = convert_seggpt(src, tmp_path / "out.safetensors", config=TINY)
    assert config == TINY
    state, stored = read_state_dict(tmp_path / "out.safetensors")
    assert SegGptConfig.from_dict(stored) == TINY
    assert_same_weights(load_seggpt(tmp_path / "out.safetensors"), tiny)


def test_save_writes_float32(tiny, tmp_path: Path):
    half = build_seggpt(TINY).to(torch.bfloat16)
    save_seggpt(half, tmp_path / "h.safetensors")
    state, _ = read_state_dict(tmp_path / "h.safetensors")
    assert all(v.dtype == torch.float32 for v in state.values())
    with pytest.raises(TypeError, match="SegGpt"):
        save_seggpt(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")  # type: ignore[arg-type]


def test_build_with_checkpoint(tiny, tmp_path: Path):
    save_seggpt(tiny, tmp_path / "t.safetensors")
    assert_same_weights(build_seggpt("tiny", checkpoint=tmp_path / "t.safetensors"), tiny)
    assert_same_weights(seggpt_model_registry["tiny"](tmp_path / "t.safetensors"), tiny)


# ---------------------------------------------------------------------------------------------------
# Strict loading and unsafe files.


def test_strict_load_names_missing_unexpected_and_mismatched(tiny, tmp_path: Path):
    painter = to_painter_state_dict(tiny)
    del painter["blocks.1.norm2.bias"]
    painter["pos_embed"] = torch.zeros(1, 5, TINY.hidden_size)
    torch.save(painter, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_seggpt(tmp_path / "broken.pth", config=TINY)
    message = str(err.value)
    assert "encoder.layers.1.layernorm_after.bias" in message
    assert "embeddings.position_embeddings" in message

    state = dict(tiny.state_dict())
    state["encoder.layers.9.mlp.lin1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.layers\.9\.mlp\.lin1\.weight"):
        load_seggpt(tmp_path / "extra.pth", config="tiny")


def test_wrong_architecture_is_a_checkpoint_error(tiny, tmp_path: Path):
    save_seggpt(tiny, tmp_path / "t.safetensors")
    other = SegGptConfig(**{**TINY.to_dict(), "decoder_hidden_size": 4})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_seggpt(tmp_path / "t.safetensors", config=other)


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"mask_token": _Payload()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_seggpt(path, config="tiny")


def test_directory_without_config(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_seggpt(tmp_path)


@pytest.mark.parametrize("key", ["num_attention_heads", "layer_norm_eps", "beta"])
def test_an_embedded_config_missing_a_key_is_refused(tiny, tmp_path: Path, key: str):
    """promptseg writes every field: a missing one is not filled with its default (another model than the
    file's, silently for ``layer_norm_eps`` or ``beta``), and the error names the file."""
    from promptseg.checkpoint import save_safetensors
    from promptseg.models.seggpt.weights import FORMAT, read_seggpt_checkpoint

    config = TINY.to_dict()
    del config[key]
    path = tmp_path / "partial.safetensors"
    save_safetensors(tiny.state_dict(), path, config, FORMAT)
    with pytest.raises(CheckpointError, match=rf"partial\.safetensors.*missing key\(s\) \['{key}'\]"):
        read_seggpt_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"partial\.safetensors has an invalid embedded SegGPT config"):
        save_safetensors(tiny.state_dict(), path, {**TINY.to_dict(), "merge_index": 9}, FORMAT)
        load_seggpt(path)


def test_a_sam_checkpoint_is_refused_naming_the_file(tmp_path: Path, helpers):
    """A SAM file where a SegGPT one is expected: a CheckpointError naming the file, in both formats; a
    transformers folder whose config.json is not SegGPT's names that config.json."""
    from promptseg import build_sam, save_sam

    sam = build_sam(helpers.TINY_CONFIG)
    save_sam(sam, tmp_path / "sam.safetensors")
    with pytest.raises(CheckpointError, match=r"sam\.safetensors has an invalid embedded SegGPT config"):
        load_seggpt(tmp_path / "sam.safetensors")
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    for config in (None, "tiny"):
        with pytest.raises(CheckpointError, match=r"sam\.pth: not a SegGPT checkpoint"):
            load_seggpt(tmp_path / "sam.pth", config=config)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "sam"}))
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"config\.json is not a valid transformers SegGPT config.*'sam'"):
        load_seggpt(folder)


def test_inference_errors_name_the_file(tiny, tmp_path: Path):
    painter = to_painter_state_dict(tiny)
    del painter["decoder_embed.weight"]
    torch.save(painter, tmp_path / "nodecoder.pth")
    with pytest.raises(CheckpointError, match=r"nodecoder\.pth: cannot infer a SegGPT config"):
        load_seggpt(tmp_path / "nodecoder.pth")


# ---------------------------------------------------------------------------------------------------
# Configs.


def test_config_round_trips_through_dict_and_json():
    for config in SEGGPT_PRESETS.values():
        assert SegGptConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        assert config_from_hf(config_to_hf(config)) == SegGptConfig(**{**config.to_dict(), "mlp_dim": config.hidden_mlp_dim})


def test_unknown_config_keys_raise():
    with pytest.raises(ValueError, match="hiden_size"):
        SegGptConfig.from_dict({"hiden_size": 8})
    with pytest.raises(ValueError, match="use_cache"):
        config_from_hf({**config_to_hf(TINY), "use_cache": True})


def test_hf_config_bookkeeping_and_checks():
    hf = {
        **config_to_hf(TINY),
        "transformers_version": "5.23.0",
        "initializer_range": 0.02,
        "dtype": "float32",
        "patch_size": [8, 8],
        "pretrain_image_size": [24, 24],
    }
    assert config_from_hf(hf).patch_size == 8
    assert config_from_hf({**hf, "image_size": 64}).image_size == (64, 64)
    for key, value, match in (
        ("hidden_act", "relu", "hidden_act"),
        ("model_type", "sam", "model_type"),
        ("hidden_dropout_prob", 0.1, "hidden_dropout_prob"),
        ("patch_size", [8, 4], "patch_size"),
    ):
        with pytest.raises(ValueError, match=match):
            config_from_hf({**hf, key: value})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"image_size": (60, 32)}, "multiple of patch_size"),
        ({"image_size": (72, 32)}, "even number of patches"),
        ({"num_attention_heads": 5}, "divisible"),
        ({"intermediate_hidden_state_indices": (1, 4)}, "out of range"),
        ({"merge_index": 2}, "merge_index"),
        ({"num_channels": 1}, "num_channels"),
        ({"pretrain_image_size": 20}, "pretrain_image_size"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        SegGptConfig(**{**TINY.to_dict(), **changes})


def test_config_types():
    with pytest.raises(TypeError, match="image_size"):
        SegGptConfig(image_size="896x448")  # type: ignore[arg-type]
    assert SegGptConfig(image_size=[64, 32], patch_size=8, pretrain_image_size=24, merge_index=0,
                        intermediate_hidden_state_indices=[0], num_hidden_layers=1).image_size == (64, 32)  # fmt: skip


def test_presets_and_registry():
    assert SEGGPT_PRESETS["vit_l"].grid_size == (56, 28)
    assert SEGGPT_PRESETS["vit_l"].single_image_size == (448, 448)
    assert SEGGPT_PRESETS["vit_l"].hidden_mlp_dim == 4096
    with pytest.raises(ValueError, match="unknown SegGPT preset"):
        build_seggpt("vit_xxl")
    with pytest.raises(TypeError, match="config"):
        build_seggpt(3)  # type: ignore[arg-type]
    model = seggpt_model_registry["tiny"]()
    assert isinstance(model, SegGpt) and not model.training and model.config == TINY


def test_a_new_model_is_initialised_for_training_from_scratch():
    from promptseg.models.seggpt import build_seggpt

    torch.manual_seed(0)
    model = build_seggpt("tiny")
    emb = model.embeddings
    for name in ("mask_token", "segment_token_input", "segment_token_prompt", "type_token_semantic", "type_token_instance"):
        assert getattr(emb, name).abs().sum() > 0, name  # distinguishable halves and task types from step 0
    pos = emb.position_embeddings
    assert 0.01 < pos.std().item() < 0.03  # (truncated) normal, std 0.02
    linear = model.encoder.layers[0].attention.qkv
    assert 0.01 < linear.weight.std().item() < 0.03 and (linear.bias == 0).all()
    assert (model.encoder.layers[0].attention.rel_pos_h == 0).all()  # relative positions start at 0
    torch.manual_seed(0)
    again = build_seggpt("tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
