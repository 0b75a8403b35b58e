"""Checkpoint I/O: strict loading, safe reading of untrusted files, SAM config inference, the hub."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import promptseg
from promptseg import CheckpointError, build_sam, load_model, load_sam, save_sam
from promptseg.checkpoint import CONFIG_KEY, load_state_dict_strict, read_state_dict
from promptseg.hub import NoDefaultModelError
from promptseg.models.sam.config import SAM_PRESETS, SamConfig
from promptseg.models.sam.weights import convert_checkpoint, infer_sam_config, with_inserted_blocks, with_patch_size

MARKER = "promptseg_pwned_marker.txt"


class _Payload:
    """Unpickling this object would create a marker file: proof that pickled code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Arbitrary:
    """A harmless custom class — still not allowed in a weights-only checkpoint."""

    def __init__(self) -> None:
        self.value = 3


@pytest.fixture
def small_model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


# ---------------------------------------------------------------------------------------------------
# load_state_dict_strict


def test_strict_load_accepts_an_exact_state_dict(small_model):
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    load_state_dict_strict(small_model, other.state_dict())
    assert torch.equal(small_model[0].weight, other[0].weight)


def test_strict_load_names_missing_unexpected_and_mismatched_keys(small_model):
    state = dict(small_model.state_dict())
    del state["2.bias"]
    state["3.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 3)
    before = small_model[0].weight.clone()
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(small_model, state, source="my.pth")
    message = str(info.value)
    assert "my.pth" in message
    assert "missing" in message and "2.bias" in message
    assert "unexpected" in message and "3.weight" in message
    assert "shape" in message and "0.weight" in message and "(5, 3)" in message and "(4, 3)" in message
    assert torch.equal(small_model[0].weight, before)  # nothing loaded


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_strict_load_each_problem_alone(small_model, problem):
    state = dict(small_model.state_dict())
    if problem == "missing":
        state.pop("0.bias")
        key = "0.bias"
    elif problem == "unexpected":
        state["extra.weight"] = torch.zeros(2)
        key = "extra.weight"
    else:
        state["2.weight"] = torch.zeros(2, 5)
        key = "2.weight"
    with pytest.raises(CheckpointError, match=problem) as info:
        load_state_dict_strict(small_model, state)
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)


def test_strict_load_into_sam_names_the_keys(tiny_sam):
    state = dict(tiny_sam.state_dict())
    state.pop("mask_decoder.iou_token.weight")
    state["image_encoder.blocks.0.attn.rel_pos_h"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight") as info:
        load_state_dict_strict(build_sam(tiny_sam.config), state)
    assert "image_encoder.blocks.0.attn.rel_pos_h" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# read_state_dict: untrusted files never execute code


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_random_bytes_raise_checkpoint_error(tmp_path):
    # Random bytes fail torch's weights-only unpickler in several ways (UnpicklingError, IndexError,
    # KeyError, UnicodeDecodeError, ...): each must come out as the same CheckpointError.
    path = tmp_path / "random.pth"
    rng = np.random.default_rng(0)
    for _ in range(300):
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError, match="random.pth"):
            read_state_dict(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_truncated_checkpoint_raises_checkpoint_error(tmp_path, small_model, fraction):
    path = tmp_path / "truncated.pth"
    torch.save(small_model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        read_state_dict(path)


@pytest.mark.parametrize("fraction", [0.9, 0.99])
def test_checkpoint_truncated_near_the_end_raises_checkpoint_error(tmp_path, fraction):
    path = tmp_path / "truncated.pth"
    torch.save({"weight": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        read_state_dict(path)


def test_text_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello world\n")
    with pytest.raises(CheckpointError, match="notes.pth"):
        read_state_dict(path)


def test_empty_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "raw_pickle", "nested"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / MARKER
    payload = _Payload(str(marker))
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "raw_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"model": {"weight": torch.zeros(2)}, "extra": payload}, path)
    assert not marker.exists()  # pickling itself does not run the payload
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state_dict(path)
    assert not marker.exists(), "unpickling executed code from the checkpoint"
    with pytest.raises(CheckpointError):
        load_sam(path)
    assert not marker.exists()


def test_arbitrary_class_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"weight": torch.zeros(2), "obj": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="custom.pth"):
        read_state_dict(path)


def test_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"weight": torch.zeros(2), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="state dict"):
        read_state_dict(path)
    path2 = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path2)
    with pytest.raises(CheckpointError, match="state dict"):
        read_state_dict(path2)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError):
        load_sam(tmp_path / "nope.safetensors")


def test_corrupt_safetensors_raise_checkpoint_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_state_dict(path)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_plain_and_wrapped_state_dicts(tmp_path, small_model, wrapper):
    state = small_model.state_dict()
    obj = state if wrapper is None else {wrapper: state, "epoch": 7, "optimizer": {"lr": 0.1}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded, config = read_state_dict(path)
    assert config is None
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_wrapped_official_layout_loads_a_sam(tmp_path, tiny_pair):
    ref, ours = tiny_pair
    path = tmp_path / "train.pth"
    torch.save({"model": ref.state_dict(), "epoch": 1}, path)
    model = load_sam(path, config=ours.config)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.state_dict().items())


# ---------------------------------------------------------------------------------------------------
# promptseg's safetensors format


def test_save_sam_embeds_the_config(tmp_path, tiny_sam):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    save_sam(tiny_sam, path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert SamConfig.from_dict(json.loads(metadata[CONFIG_KEY])) == tiny_sam.config
    state, config = read_state_dict(path)
    assert SamConfig.from_dict(config) == tiny_sam.config
    assert all(torch.equal(state[k], v) for k, v in tiny_sam.state_dict().items())
    assert not [p for p in tmp_path.iterdir() if p.name != "m.safetensors"]  # no temporary file left


@pytest.mark.parametrize("header", ["[1, 2]", '"vit_b"', '{"image_encoder": {"img_size": "128"}}', '{"foo": 1}'])
def test_invalid_embedded_config_is_a_checkpoint_error_naming_the_file(tmp_path, tiny_sam, header):
    """Valid JSON that is no SAM config (a list, wrong types, unknown keys) is a CheckpointError naming the
    file — not a bare TypeError, which the CLI would show as a traceback."""
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sam.state_dict().items()}, str(path), metadata={CONFIG_KEY: header})
    with pytest.raises(CheckpointError, match="odd.safetensors has an invalid embedded SAM config"):
        load_sam(path)


@pytest.mark.parametrize("drop", [("mask_decoder", "num_heads"), ("image_encoder", "window_size"), (None, "pixel_std")])
def test_an_embedded_config_missing_a_key_is_refused_not_defaulted(tmp_path, tiny_sam, drop):
    """A header config without, say, the decoder's head count (4 here) built the default (8) and loaded —
    shapes do not show it — silently another model; every field must be there (promptseg writes them all)."""
    from safetensors.torch import save_file

    part, key = drop
    config = tiny_sam.config.to_dict()
    del (config[part] if part else config)[key]
    path = tmp_path / "partial.safetensors"
    state = {k: v.contiguous() for k, v in tiny_sam.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(config)})
    name = f"{part}.{key}" if part else key
    match = f"partial.safetensors has an invalid embedded SAM config: missing .*'{name}'"
    with pytest.raises(CheckpointError, match=match):
        load_sam(path)


def test_a_state_dict_that_is_no_sam_names_the_file(tmp_path, tiny_sam):
    path = tmp_path / "other.pth"  # e.g. SAM nested inside a larger model
    torch.save({f"backbone.{k}": v for k, v in tiny_sam.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match=r"other\.pth: not a SAM checkpoint"):
        load_sam(path)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compiled_state_dicts_load(tmp_path, tiny_sam, prefix):
    """``state_dict()`` of a DDP-wrapped (``module.``) or ``torch.compile``d (``_orig_mod.``) model loads
    as the plain model's, from a .pth (also wrapped in {"model": …}) and from a .safetensors."""
    from safetensors.torch import save_file

    state = {f"{prefix}{k}": v for k, v in tiny_sam.state_dict().items()}
    torch.save({"model": state}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ddp.SAFETENSORS")
    for name in ("ddp.pth", "ddp.SAFETENSORS"):
        loaded = load_sam(tmp_path / name)
        for key, value in tiny_sam.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)
    assert list(read_state_dict(tmp_path / "ddp.pth")[0]) == list(tiny_sam.state_dict())


def test_a_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_model(tmp_path)


def test_an_unusable_device_is_refused_before_loading(tmp_path, tiny_sam, monkeypatch):
    import promptseg.models.sam.weights as weights

    path = tmp_path / "m.safetensors"
    save_sam(tiny_sam, path)
    monkeypatch.setattr(weights, "read_state_dict", lambda *a: pytest.fail("the checkpoint was read"))
    for name in ("gpu", "cuda:7" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(ValueError, match=rf"^device {name} cannot be used on this machine"):
            load_model(path, device=name)


def test_load_sam_device_and_dtype(tmp_path, tiny_sam):
    path = tmp_path / "m.safetensors"
    save_sam(tiny_sam, path)
    model = load_sam(path, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    mixed = load_sam(path, encoder_dtype=torch.bfloat16)  # bf16 encoder, float32 decoder
    assert mixed.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in mixed.image_encoder.parameters())
    assert all(p.dtype == torch.float32 for p in mixed.mask_decoder.parameters())
    for bad in (dict(encoder_dtype="bfloat16"), dict(transformer_dtype=torch.int8), dict(dtype=None)):
        with pytest.raises(TypeError, match=f"{next(iter(bad))} must be a floating torch.dtype"):
            load_sam(path, **bad)
    trunk = load_sam(path, encoder_dtype=torch.bfloat16, transformer_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in trunk.mask_decoder.transformer.parameters())
    assert trunk.mask_decoder.output_upscaling[0].weight.dtype == torch.float32 and trunk.dtype == torch.float32
    # saved back as float32
    save_sam(model, tmp_path / "bf16.safetensors")
    state, _ = read_state_dict(tmp_path / "bf16.safetensors")
    assert all(v.dtype == torch.float32 for v in state.values())


def test_convert_checkpoint(tmp_path, tiny_pair):
    ref, ours = tiny_pair
    src, dst = tmp_path / "official.pth", tmp_path / "converted.safetensors"
    torch.save(ref.state_dict(), src)
    config = convert_checkpoint(src, dst, config=ours.config)
    assert config == ours.config
    model = load_sam(dst)  # the config comes from the file
    assert model.config == ours.config
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.state_dict().items())


# ---------------------------------------------------------------------------------------------------
# with_patch_size: a finer token grid from a trained model


def _encoder_config(**kw):
    from promptseg.models.sam.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig

    enc = dict(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, window_size=2, global_attn_indexes=(1,), out_chans=32)
    enc.update(kw)
    return SamConfig(
        image_encoder=ImageEncoderConfig(**enc),
        prompt_encoder=PromptEncoderConfig(embed_dim=32, mask_in_chans=16),
        mask_decoder=MaskDecoderConfig(transformer_dim=32, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32),
    )


@pytest.mark.parametrize("patch_size", [8, 4])
def test_with_patch_size_equals_the_original_on_a_nearest_upsampled_image(patch_size):
    """Exact algebra: the resized encoder on an image == the original weights, at ``f``× the input size
    with the same resized position table, on that image upsampled ``f``× by nearest neighbour (global
    blocks resize their relative tables at run time exactly as ``with_patch_size`` stores them)."""
    import dataclasses

    torch.manual_seed(0)
    model = build_sam(_encoder_config()).eval()
    with torch.no_grad():  # non-trivial position tables
        for name, p in model.image_encoder.named_parameters():
            if "pos" in name:
                p.normal_()
    factor = 16 // patch_size
    resized = with_patch_size(model, patch_size).eval()
    assert resized.config.image_encoder.patch_size == patch_size and resized.config.image_encoder.img_size == 64
    assert resized.prompt_encoder.image_embedding_size == (64 // patch_size,) * 2
    big_cfg = dataclasses.replace(model.config.image_encoder, img_size=64 * factor)
    big = build_sam(dataclasses.replace(model.config, image_encoder=big_cfg)).eval()
    state = dict(model.state_dict())
    state["image_encoder.pos_embed"] = resized.image_encoder.pos_embed.detach()
    for key in [k for k in state if ".rel_pos_" in k and state[k].shape != big.state_dict()[k].shape]:
        state[key] = resized.state_dict()[key]  # the run-time resize of the original, stored
    big.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    up = x.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    with torch.no_grad():
        torch.testing.assert_close(resized.image_encoder(x), big.image_encoder(up), rtol=1e-4, atol=1e-4)
    # the run-time resize that the stored tables reproduce
    from promptseg.models.sam.image_encoder import get_rel_pos

    grid = 64 // patch_size
    original = model.image_encoder.blocks[1].attn.rel_pos_h
    torch.testing.assert_close(get_rel_pos(grid, grid, original), get_rel_pos(grid, grid, resized.image_encoder.blocks[1].attn.rel_pos_h))
    # the resolution-free parts are copied as they are
    for key, value in model.state_dict().items():
        if not key.startswith("image_encoder."):
            assert torch.equal(resized.state_dict()[key], value), key
        elif value.shape == resized.state_dict()[key].shape:
            assert torch.equal(resized.state_dict()[key], value), key


def test_with_patch_size_rejects_bad_sizes_and_models():
    model = build_sam(_encoder_config())
    for bad in (3, 0, -8, 32, 8.0, True):
        with pytest.raises(ValueError, match="patch_size"):
            with_patch_size(model, bad)
    model.config = None
    with pytest.raises(ValueError, match="config"):
        with_patch_size(model, 8)


def test_convert_checkpoint_with_patch_size(tmp_path):
    torch.manual_seed(1)
    model = build_sam(_encoder_config())
    save_sam(model, tmp_path / "p16.safetensors")
    config = convert_checkpoint(tmp_path / "p16.safetensors", tmp_path / "p8.safetensors", patch_size=8)
    assert config.image_encoder.patch_size == 8
    loaded = load_sam(tmp_path / "p8.safetensors")
    expected = with_patch_size(model, 8).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    predictor = promptseg.SamPredictor(loaded)  # the finer grid end to end: 4× finer low-res masks
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    masks, scores, low = predictor.predict(np.array([[20.0, 30.0]]), np.array([1]))
    assert masks.shape == (3, 48, 64) and scores.shape == (3,) and low.shape == (3, 32, 32)


# with_inserted_blocks: a deeper encoder that starts as the same function


def _randomised(model):
    with torch.no_grad():  # every parameter non-trivial, so copies and zeros are visible
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("after", [[0], [-1, 2], [1, 1, 2], [0, 1, 2]])
def test_with_inserted_blocks_computes_what_the_original_computes(after):
    torch.manual_seed(0)
    model = _randomised(build_sam(_encoder_config())).eval()
    grown = with_inserted_blocks(model, after).eval()
    enc = grown.config.image_encoder
    assert enc.depth == 3 + len(after)
    # the global block (old index 1) keeps global attention at its shifted index
    assert enc.global_attn_indexes == (1 + sum(i < 1 for i in after),)
    assert grown.image_encoder.blocks[enc.global_attn_indexes[0]].window_size == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grown.image_encoder(x), model.image_encoder(x), rtol=0, atol=0)
    positions = []  # where each old block went
    n = 0
    for old in range(-1, 3):
        if old >= 0:
            positions.append(n)
            n += 1
        n += after.count(old)
    state, grown_state = model.state_dict(), grown.state_dict()
    for old, new in enumerate(positions):
        for key, value in state.items():
            if key.startswith(f"image_encoder.blocks.{old}."):
                assert torch.equal(grown_state[key.replace(f"blocks.{old}.", f"blocks.{new}.")], value), key
    for new in sorted(set(range(enc.depth)) - set(positions)):
        block = grown.image_encoder.blocks[new]
        assert block.window_size == 2
        for zero in (block.attn.proj, block.mlp.lin2):
            assert not zero.weight.any() and not zero.bias.any()
        assert block.attn.qkv.weight.abs().sum() > 0  # copied from a windowed block, not zero
    for key, value in state.items():
        if not key.startswith("image_encoder.blocks."):
            assert torch.equal(grown_state[key], value), key


def test_inserted_blocks_train():
    """The zero residual branches get gradients: one step makes the new blocks do something."""
    torch.manual_seed(0)
    grown = with_inserted_blocks(_randomised(build_sam(_encoder_config())), [0])
    x = torch.randn(1, 3, 64, 64)
    grown.image_encoder(x).square().mean().backward()
    new = grown.image_encoder.blocks[1]
    assert new.attn.proj.weight.grad.abs().sum() > 0 and new.mlp.lin2.weight.grad.abs().sum() > 0


def test_with_inserted_blocks_rejects_bad_indexes_and_models():
    model = build_sam(_encoder_config())
    for bad in ([], [3], [-2], [0.0], [True], "0", 0, None):
        with pytest.raises(ValueError, match="after"):
            with_inserted_blocks(model, bad)
    model.config = None
    with pytest.raises(ValueError, match="config"):
        with_inserted_blocks(model, [0])


def test_convert_checkpoint_inserting_blocks(tmp_path):
    torch.manual_seed(1)
    model = build_sam(_encoder_config())
    save_sam(model, tmp_path / "src.safetensors")
    config = convert_checkpoint(tmp_path / "src.safetensors", tmp_path / "deep.safetensors", insert_blocks=[2])
    assert config.image_encoder.depth == 4
    loaded = load_sam(tmp_path / "deep.safetensors")
    expected = with_inserted_blocks(model, [2]).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_save_sam_requires_a_config(tiny_pair, tmp_path):
    model = build_sam(tiny_pair[1].config)
    model.config = None
    with pytest.raises(ValueError, match="config"):
        save_sam(model, tmp_path / "unused.safetensors")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# infer_sam_config


def test_infer_tiny_config(helpers):
    import dataclasses

    base = helpers.TINY_CONFIG
    config = dataclasses.replace(base, mask_decoder=dataclasses.replace(base.mask_decoder, num_heads=8))
    ref, _ = helpers.make_pair(config, seed=3)
    assert infer_sam_config(ref.state_dict()) == config


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_infer_official_configs(name):
    """The official architectures (built on the meta device: shapes only) are recognised exactly."""
    import segment_anything

    with torch.device("meta"):
        ref = segment_anything.sam_model_registry[name]()
    assert infer_sam_config(ref.state_dict()) == SAM_PRESETS[name]


def test_infer_config_of_a_non_sam_state_dict():
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        infer_sam_config({"weight": torch.zeros(2)})


def test_load_sam_of_a_non_sam_checkpoint(tmp_path, small_model):
    path = tmp_path / "other.pth"
    torch.save(small_model.state_dict(), path)
    with pytest.raises(CheckpointError):
        load_sam(path)


def test_build_sam_with_a_checkpoint_of_another_architecture(tmp_path, tiny_pair):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_pair[0].state_dict(), path)
    with pytest.raises(CheckpointError, match="shape"):
        promptseg.sam_model_registry["vit_b"](checkpoint=path)


# ---------------------------------------------------------------------------------------------------
# hub


def test_load_model_without_a_bundled_model(monkeypatch):
    import promptseg.hub as hub

    monkeypatch.setattr(hub, "default_model_path", lambda: None)
    with pytest.raises(NoDefaultModelError, match="checkpoint") as info:
        load_model()
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(NoDefaultModelError):
        load_model(None)


def test_this_build_bundles_no_default_model():
    import promptseg.hub as hub

    if hub.default_model_path() is not None:
        pytest.skip("a default model is bundled")
    with pytest.raises(NoDefaultModelError, match="checkpoint"):
        load_model()


def test_load_model_from_a_checkpoint(tmp_path, tiny_sam):
    path = tmp_path / "m.safetensors"
    save_sam(tiny_sam, path)
    model = load_model(path)
    assert model.config == tiny_sam.config
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_sam.state_dict().items())
    assert load_model(str(path), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_bundled_default_model_is_used(tmp_path, tiny_sam, monkeypatch):
    import promptseg.hub as hub

    path = tmp_path / "sam_default.safetensors"
    save_sam(tiny_sam, path)
    monkeypatch.setattr(hub, "default_model_path", lambda: Path(path))
    assert load_model().config == tiny_sam.config


@pytest.mark.parametrize("name", ["nonsense", "xpu", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_usable_device_names_the_option_and_the_reason(name):
    from promptseg.hub import usable_device

    assert usable_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=rf"^--device {name} cannot be used on this machine \(.+\); use e.g. --device cpu$"):
        usable_device(name)
    with pytest.raises(ValueError, match=rf"^device {name} cannot be used"):
        usable_device(name, "device")


def test_precision_names_become_load_model_arguments():
    from promptseg.hub import precisions

    assert precisions() == {"dtype": torch.float32}
    assert precisions("float32", "bfloat16") == {"dtype": torch.float32, "encoder_dtype": torch.bfloat16}
    assert precisions("bfloat16", None, "float16") == {"dtype": torch.bfloat16, "transformer_dtype": torch.float16}
    for args, option in ((("float8",), "dtype"), (("float32", "int8"), "encoder_dtype"),
                         (("float32", None, "Tensor"), "transformer_dtype"), (("float8_e4m3fn",), "dtype"),
                         (("float32", "float8_e5m2"), "encoder_dtype")):
        with pytest.raises(ValueError, match=f"^{option}: unknown floating-point dtype"):
            precisions(*args)
