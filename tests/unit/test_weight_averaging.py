"""Weight averaging: the running average of training (EMA / uniform), averages of saved state dicts and
SAM checkpoints (``promptseg average``)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn

from promptseg import load_sam, save_sam
from promptseg.checkpoint import average_state_dicts, read_state_dict
from promptseg.models.sam.build import build_sam
from promptseg.models.sam.weights import average_checkpoints
from promptseg.train.averaging import WeightAverage
from promptseg.train.config import check_average


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def set_weights(net: Net, value: float) -> None:
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.fill_(value + i)
        net.scale.fill_(2 * value)
        net.steps.fill_(int(value))


# ------------------------------------------------------------------------------------- WeightAverage
def test_uniform_average_is_the_mean_of_the_weights_after_the_steps_past_start():
    net, avg = Net(), WeightAverage("uniform", start=2)
    values = [1.0, 2.0, 4.0, 8.0, 16.0]
    for step, value in enumerate(values, start=1):
        set_weights(net, value)
        avg.update(net, step)
    assert avg.count == 3  # steps 3, 4, 5
    state = avg.averaged_state(net)
    mean = sum(values[2:]) / 3
    assert torch.allclose(state["lin.weight"], torch.full((2, 3), mean))
    assert torch.allclose(state["lin.bias"], torch.full((2,), mean + 1))
    assert torch.allclose(state["scale"], torch.full((2,), 2 * mean))  # floating buffers are averaged
    assert state["steps"].item() == 16 and state["steps"].dtype == torch.long  # integer ones are the network's


def test_ema_follows_its_recurrence():
    net, avg = Net(), WeightAverage("ema", decay=0.9)
    expected = None
    for step, value in enumerate([1.0, 3.0, -2.0, 5.0], start=1):
        set_weights(net, value)
        avg.update(net, step)
        expected = value if expected is None else 0.9 * expected + 0.1 * value  # the first step starts it
    assert torch.allclose(avg.averaged_state(net)["lin.weight"], torch.full((2, 3), expected))


def test_average_keeps_the_entry_dtype_and_no_average_before_start():
    net, avg = Net().to(torch.bfloat16), WeightAverage("uniform", start=5)
    avg.update(net, 5)
    with pytest.raises(RuntimeError, match="after step 5"):
        avg.averaged_state(net)
    avg.update(net, 6)
    assert avg.tensors["lin.weight"].dtype == torch.float32
    assert avg.averaged_state(net)["lin.weight"].dtype == torch.bfloat16


def test_swapped_in_restores_the_trained_weights_even_after_an_error():
    net, avg = Net(), WeightAverage("uniform")
    for step, value in enumerate([1.0, 3.0], start=1):
        set_weights(net, value)
        avg.update(net, step)
    with avg.swapped_in(net):
        assert torch.allclose(net.lin.weight, torch.full((2, 3), 2.0))
    assert torch.equal(net.lin.weight, torch.full((2, 3), 3.0))
    with pytest.raises(KeyError):
        with avg.swapped_in(net):
            raise KeyError("boom")
    assert torch.equal(net.lin.weight, torch.full((2, 3), 3.0))


def test_state_dict_round_trip_continues_the_same_average():
    net = Net()
    one, two = WeightAverage("uniform"), WeightAverage("uniform")
    for step, value in enumerate([1.0, 2.0, 6.0], start=1):
        set_weights(net, value)
        one.update(net, step)
        if step == 2:
            two.load_state_dict(one.state_dict())
        elif step == 3:
            two.update(net, step)
    assert two.count == one.count == 3
    assert torch.equal(two.averaged_state(net)["lin.weight"], one.averaged_state(net)["lin.weight"])


@pytest.mark.parametrize("field, value", [("kind", "ema"), ("decay", 0.5), ("start", 3)])
def test_loading_an_average_with_other_settings_names_the_field(field, value):
    saved = WeightAverage("uniform", decay=0.999, start=0)
    saved.update(Net(), 1)
    settings = {"kind": "uniform", "decay": 0.999, "start": 0, field: value}
    with pytest.raises(ValueError, match=field):
        WeightAverage(**settings).load_state_dict(saved.state_dict())


@pytest.mark.parametrize("kind, decay, start, match", [
    ("swa", 0.9, 0, "average must be one of"),
    ("ema", 1.0, 0, "average_decay"),
    ("ema", 0.0, 0, "average_decay"),
    ("uniform", 0.9, -1, "average_start"),
])
def test_bad_average_settings(kind, decay, start, match):
    with pytest.raises(ValueError, match=match):
        check_average(kind, decay, start)
    with pytest.raises(ValueError, match=match):
        WeightAverage(kind, decay, start)


# -------------------------------------------------------------------------------- average_state_dicts
def test_average_state_dicts_weighted_mean_in_float64():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(3)}
    out = average_state_dicts([("a", a), ("b", b)], [1.0, 3.0])
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0])) and out["w"].dtype == torch.float32
    assert torch.equal(out["n"], torch.tensor(3))
    # float64 sums: 1e8 + 1 averaged with itself stays exact although float32 steps are 8 apart there
    big = {"w": torch.tensor([1e8, 1.0], dtype=torch.float64)}
    assert average_state_dicts([("x", big)] * 3, [1, 1, 1])["w"].tolist() == [1e8, 1.0]


def test_average_state_dicts_reads_states_one_at_a_time():
    seen = []

    def states():
        for i in range(3):
            seen.append(i)
            yield f"s{i}", {"w": torch.full((2,), float(i))}

    assert torch.allclose(average_state_dicts(states(), [1, 1, 1])["w"], torch.ones(2))
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("other, match", [
    ({"w": torch.zeros(2)}, "missing"),
    ({"w": torch.zeros(2), "n": torch.tensor(3), "x": torch.zeros(1)}, "unexpected"),
    ({"w": torch.zeros(3), "n": torch.tensor(3)}, "shapes"),
    ({"w": torch.zeros(2), "n": torch.tensor(4)}, "non-floating"),
])
def test_average_state_dicts_names_the_mismatched_file(other, match):
    first = {"w": torch.zeros(2), "n": torch.tensor(3)}
    with pytest.raises(ValueError, match=f"second.*{match}"):
        average_state_dicts([("first", first), ("second", other)], [1, 1])


@pytest.mark.parametrize("weights, match", [
    ([], "none"), ([1.0, 0.0], "> 0"), ([1.0, float("nan")], "> 0"), ([1.0], "one too many"), ([1, 1, 1], "3 weights for 2"),
])
def test_average_state_dicts_checks_weights(weights, match):
    state = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match=match):
        average_state_dicts([("a", state), ("b", state)], weights)


# ------------------------------------------------------------------------------- average_checkpoints
@pytest.fixture()
def two_heads_config(tiny_config):
    """A tiny SAM whose decoder has 2 heads: a head count the weights do not show."""
    return dataclasses.replace(tiny_config, mask_decoder=dataclasses.replace(tiny_config.mask_decoder, num_heads=2))


def perturbed(config, seed: int):
    torch.manual_seed(seed)
    model = build_sam(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_average_checkpoints_of_every_kind_of_file(tmp_path, two_heads_config):
    models = [perturbed(two_heads_config, s) for s in (1, 2, 3)]
    save_sam(models[0], tmp_path / "a.safetensors")
    # a promptseg training checkpoint carries its model's config beside the weights
    torch.save({"format": "promptseg-train", "model": models[1].state_dict(),
                "model_config": two_heads_config.to_dict()}, tmp_path / "b.pt")
    torch.save(models[2].state_dict(), tmp_path / "c.pth")  # a plain state dict
    sources = [tmp_path / n for n in ("a.safetensors", "b.pt", "c.pth")]
    config = average_checkpoints(sources, tmp_path / "avg.safetensors", weights=[2, 1, 1])
    assert config == two_heads_config
    avg = load_sam(tmp_path / "avg.safetensors")
    assert avg.config == two_heads_config
    for name, value in avg.state_dict().items():
        states = [m.state_dict()[name].double() for m in models]
        expected = (2 * states[0] + states[1] + states[2]) / 4
        assert torch.allclose(value.double(), expected, atol=1e-6), name
    _, stored = read_state_dict(tmp_path / "b.pt")
    assert stored == two_heads_config.to_dict()


def test_average_of_a_model_with_itself_is_the_model(tmp_path, tiny_sam):
    save_sam(tiny_sam, tmp_path / "m.safetensors")
    average_checkpoints([tmp_path / "m.safetensors"] * 2, tmp_path / "avg.safetensors")
    again = load_sam(tmp_path / "avg.safetensors")
    for name, value in tiny_sam.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_averaging_without_an_embedded_config_infers_it_and_warns(tmp_path, tiny_sam, caplog):
    for n in ("a", "b"):
        torch.save(tiny_sam.state_dict(), tmp_path / f"{n}.pth")
    with caplog.at_level(logging.WARNING, logger="promptseg.models.sam.weights"):
        config = average_checkpoints([tmp_path / "a.pth", tmp_path / "b.pth"], tmp_path / "avg.safetensors")
    assert "inferred from the weights" in caplog.text
    assert config.image_encoder == tiny_sam.config.image_encoder


def test_averaging_refuses_other_architectures(tmp_path, tiny_config, two_heads_config):
    save_sam(perturbed(tiny_config, 1), tmp_path / "a.safetensors")
    save_sam(perturbed(two_heads_config, 2), tmp_path / "b.safetensors")  # same shapes, other head count
    with pytest.raises(ValueError, match="b.safetensors embeds another architecture"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "avg.safetensors")
    deeper = dataclasses.replace(tiny_config, image_encoder=dataclasses.replace(
        tiny_config.image_encoder, depth=tiny_config.image_encoder.depth + 1))
    save_sam(perturbed(deeper, 3), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="c.safetensors does not match"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "avg.safetensors")
    assert not (tmp_path / "avg.safetensors").exists()


def test_averaging_refuses_other_architectures_even_with_a_given_config(tmp_path, tiny_config, two_heads_config):
    """A config passed in (--model-type / --config-from) does not bypass the check that the sources' embedded
    architectures agree, nor may it contradict them."""
    save_sam(perturbed(tiny_config, 1), tmp_path / "a.safetensors")
    save_sam(perturbed(two_heads_config, 2), tmp_path / "b.safetensors")  # same shapes, other head count
    sources = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for config in (tiny_config, two_heads_config):
        with pytest.raises(ValueError, match="b.safetensors embeds another architecture"):
            average_checkpoints(sources, tmp_path / "avg.safetensors", config=config)
    with pytest.raises(ValueError, match="a.safetensors embeds"):
        average_checkpoints(sources[:1] * 2, tmp_path / "avg.safetensors", config=two_heads_config)
    assert not (tmp_path / "avg.safetensors").exists()
    average_checkpoints(sources[:1] * 2, tmp_path / "avg.safetensors", config=tiny_config)  # the same: fine


def test_siblings_trained_with_and_without_drop_path_average(tmp_path, tiny_config):
    """The encoder's drop-path rate is a training setting (identity in eval mode), not architecture: files
    that differ in it alone average (they were "another architecture"), the mean embedding the first's."""
    dp = dataclasses.replace(tiny_config, image_encoder=dataclasses.replace(tiny_config.image_encoder,
                                                                            drop_path_rate=0.1))
    models = [perturbed(tiny_config, 1), perturbed(dp, 2)]
    save_sam(models[0], tmp_path / "a.safetensors")
    save_sam(models[1], tmp_path / "b.safetensors")
    sources = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    assert average_checkpoints(sources, tmp_path / "avg.safetensors") == tiny_config
    avg = load_sam(tmp_path / "avg.safetensors")
    for name, value in avg.state_dict().items():
        expected = (models[0].state_dict()[name].double() + models[1].state_dict()[name].double()) / 2
        assert torch.allclose(value.double(), expected, atol=1e-6), name
    assert average_checkpoints(sources, tmp_path / "avg2.safetensors", config=dp) == dp
    with pytest.raises(ValueError, match="embeds another architecture"):  # heads still count
        two = dataclasses.replace(dp, mask_decoder=dataclasses.replace(dp.mask_decoder, num_heads=2))
        save_sam(perturbed(two, 3), tmp_path / "c.safetensors")
        average_checkpoints([tmp_path / "b.safetensors", tmp_path / "c.safetensors"], tmp_path / "avg3.safetensors")


def test_averaging_a_low_precision_first_file_keeps_float32_precision(tmp_path, tiny_sam):
    """The mean does not depend on the order of the files: a bfloat16 first file does not round it to bfloat16."""
    save_sam(perturbed(tiny_sam.config, 1), tmp_path / "a.safetensors")
    torch.save({k: v.bfloat16() for k, v in perturbed(tiny_sam.config, 2).state_dict().items()}, tmp_path / "b.pth")
    ab, ba = tmp_path / "ab.safetensors", tmp_path / "ba.safetensors"
    average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.pth"], ab)
    average_checkpoints([tmp_path / "b.pth", tmp_path / "a.safetensors"], ba)
    first, second = read_state_dict(ab)[0], read_state_dict(ba)[0]
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_averaging_names_the_file_of_an_invalid_embedded_config(tmp_path, tiny_sam):
    from safetensors.torch import save_file

    from promptseg.checkpoint import CONFIG_KEY, CheckpointError

    save_sam(tiny_sam, tmp_path / "a.safetensors")
    state = {k: v.contiguous() for k, v in tiny_sam.state_dict().items()}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={CONFIG_KEY: "[1, 2]"})
    with pytest.raises(CheckpointError, match="bad.safetensors has an invalid embedded SAM config"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "bad.safetensors"], tmp_path / "avg.safetensors")
