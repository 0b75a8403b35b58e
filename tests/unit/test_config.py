"""``SamConfig``: frozen, validated, JSON round trip, strict ``from_dict``; presets and builders."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import promptseg
from promptseg import SamConfig, build_sam
from promptseg.models.sam.config import (
    SAM_PRESETS,
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
)


def test_defaults_are_vit_b():
    assert SamConfig() == SAM_PRESETS["vit_b"]
    assert SamConfig().image_encoder.img_size == 1024 and SamConfig().image_encoder.grid_size == 64


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_presets_match_the_official_architectures(name):
    enc = SAM_PRESETS[name].image_encoder
    expected = {
        "vit_b": (768, 12, 12, (2, 5, 8, 11)),
        "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    }[name]
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.global_attn_indexes) == expected
    assert (enc.img_size, enc.patch_size, enc.window_size, enc.out_chans) == (1024, 16, 14, 256)
    dec = SAM_PRESETS[name].mask_decoder
    assert (dec.transformer_dim, dec.transformer_depth, dec.num_heads, dec.mlp_dim) == (256, 2, 8, 2048)


@pytest.mark.parametrize("config", [SamConfig(), SAM_PRESETS["vit_b"], "tiny"])
def test_dict_and_json_round_trip(config, tiny_config):
    config = tiny_config if config == "tiny" else config
    data = config.to_dict()
    assert isinstance(data["image_encoder"], dict)
    assert SamConfig.from_dict(data) == config
    restored = SamConfig.from_dict(json.loads(json.dumps(data)))  # tuples come back as lists
    assert restored == config
    assert isinstance(restored.image_encoder.global_attn_indexes, tuple)
    assert isinstance(restored.pixel_mean, tuple)
    hash(restored)  # frozen dataclasses with tuples are hashable


def test_from_dict_partial_uses_defaults():
    config = SamConfig.from_dict({"image_encoder": {"depth": 4, "global_attn_indexes": [1, 3]}})
    assert config.image_encoder.depth == 4 and config.image_encoder.embed_dim == 768
    assert config.mask_decoder == MaskDecoderConfig()


@pytest.mark.parametrize(
    "data, where",
    [
        ({"image_encoders": {}}, "image_encoders"),
        ({"image_encoder": {"embed_dims": 3}}, "embed_dims"),
        ({"prompt_encoder": {"mask_channels": 3}}, "mask_channels"),
        ({"mask_decoder": {"heads": 8}}, "heads"),
    ],
)
def test_from_dict_rejects_unknown_keys(data, where):
    with pytest.raises(ValueError, match="unknown key") as info:
        SamConfig.from_dict(data)
    assert where in str(info.value)


def test_from_dict_nested_error_names_the_section():
    with pytest.raises(ValueError, match="image_encoder"):
        SamConfig.from_dict({"image_encoder": {"bogus": 1}})


def test_from_dict_rejects_non_mappings():
    with pytest.raises(TypeError):
        SamConfig.from_dict({"image_encoder": [1, 2]})


def test_configs_are_frozen():
    config = SamConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_format = "BGR"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_encoder.depth = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ImageEncoderConfig(img_size=1000, patch_size=16), "patch_size"),
        (lambda: ImageEncoderConfig(embed_dim=100, num_heads=12), "num_heads"),
        (lambda: ImageEncoderConfig(depth=4, global_attn_indexes=(1, 4)), "global_attn_indexes"),
        (lambda: SamConfig(prompt_encoder=PromptEncoderConfig(embed_dim=128)), "widths"),
        (lambda: SamConfig(image_format="RGBA"), "image_format"),
    ],
)
def test_invalid_configs_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_sam_from_preset_name_and_config(tiny_config):
    model = build_sam(tiny_config)
    assert model.config == tiny_config and not model.training
    assert model.image_encoder.img_size == 128
    assert model.prompt_encoder.mask_input_size == (32, 32)
    assert model.mask_decoder.transformer.layers[0].self_attn.num_heads == 4
    with pytest.raises(ValueError, match="vit_x"):
        build_sam("vit_x")


def test_build_sam_matches_the_reference_state_dict_layout(tiny_pair):
    ref, ours = tiny_pair
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == v.shape for k, v in ref_state.items())


def test_registry_has_the_reference_keys():
    import segment_anything

    assert set(promptseg.sam_model_registry) == set(segment_anything.sam_model_registry)
    assert promptseg.sam_model_registry["default"] is promptseg.sam_model_registry["vit_h"]


def test_registry_vit_b_without_checkpoint():
    import segment_anything

    model = promptseg.sam_model_registry["vit_b"](checkpoint=None)
    assert model.config == SAM_PRESETS["vit_b"] and model.image_encoder.img_size == 1024
    with torch.device("meta"):
        ref = segment_anything.sam_model_registry["vit_b"]()
    ref_state = ref.state_dict()
    our_state = model.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == v.shape for k, v in ref_state.items())
    assert model.image_format == "RGB" and model.mask_threshold == 0.0


@pytest.mark.parametrize("data", [[1, 2], "vit_b", None, [("image_format", "BGR")]])
def test_from_dict_rejects_a_top_level_non_mapping(data):
    with pytest.raises(TypeError, match="SamConfig must be a mapping"):
        SamConfig.from_dict(data)
