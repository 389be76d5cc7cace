"""RunConfig: TOML round trip, ``--set section.key=value`` with type checks, validation, and the
strategy parameter checks done when a strategy is built."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from apoptosis.core.config import ModelConfig, RunConfig, StrategyConfig, _coerce, parse_set_option
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.registry import STRATEGIES
from apoptosis.core.strategy import build_strategy

StandardParams = STRATEGIES.get("standard").Params  # the class the entry point registers


def custom_config() -> RunConfig:
    config = RunConfig()
    config.model.n_layer = 2
    config.model.d_model = 48
    config.model.n_head = 3
    config.model.mlp_widths = [64, 48]
    config.model.dropout = 0.1
    config.data.path = "some dir/corpus ü.txt"
    config.data.val_fraction = 0.2
    config.trainer.steps = 123
    config.trainer.lr = 3e-4
    config.trainer.min_lr = 1.5e-5
    config.trainer.seed = 7
    config.trainer.device = "cuda:1"
    config.fitness.ema_decay = 0.95
    config.strategy.name = "standard"
    config.strategy.params = {"prune_rate": 0.25, "interval": 100, "outgoing": "split", "mutation_strength": 0.0}
    return config


# --- TOML round trip --------------------------------------------------------------------------


def test_toml_round_trip(tmp_path: Path) -> None:
    config = custom_config()
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    loaded = RunConfig.from_toml_file(path)
    assert loaded == config
    assert loaded.strategy.params == {
        "prune_rate": 0.25,
        "interval": 100,
        "outgoing": "split",
        "mutation_strength": 0.0,
    }
    assert loaded.model.mlp_widths == [64, 48]
    assert isinstance(loaded.trainer.lr, float) and loaded.trainer.lr == 3e-4
    # the strategy table is flat: name beside its parameters
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    assert table["strategy"] == {"name": "standard", **config.strategy.params}
    assert set(table) == {"model", "data", "trainer", "fitness", "strategy"}  # [then] only with a follower
    config.then = StrategyConfig(name="lazarus", params={"steps": 5})
    path.write_text(config.to_toml(), encoding="utf-8")
    assert tomllib.loads(path.read_text(encoding="utf-8"))["then"] == {"name": "lazarus", "steps": 5}
    assert RunConfig.from_toml_file(path) == config


def test_default_config_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "default.toml"
    path.write_text(RunConfig().to_toml(), encoding="utf-8")
    assert RunConfig.from_toml_file(path) == RunConfig()


def test_round_trip_keeps_built_strategy_params(tmp_path: Path) -> None:
    """What the trainer saves: every default filled in by the strategy's Params class."""
    config = RunConfig()
    config.strategy.params = build_strategy("standard", {"maturity": 3}).params.to_dict()
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    loaded = RunConfig.from_toml_file(path)
    assert loaded == config
    assert build_strategy(loaded.strategy.name, loaded.strategy.params).params == StandardParams(maturity=3)


def test_from_dict_round_trip() -> None:
    config = custom_config()
    assert RunConfig.from_dict(config.to_dict()) == config


def test_partial_toml_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "partial.toml"
    path.write_text("[model]\nn_layer = 2\n\n[trainer]\nlr = 1\n", encoding="utf-8")
    loaded = RunConfig.from_toml_file(path)
    expected = RunConfig()
    expected.model.n_layer = 2
    expected.trainer.lr = 1.0
    assert loaded == expected
    assert isinstance(loaded.trainer.lr, float)


def test_toml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ApoptosisError, match="config file not found"):
        RunConfig.from_toml_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer = 2\n", encoding="utf-8")
    with pytest.raises(ApoptosisError, match="not valid TOML"):
        RunConfig.from_toml_file(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[model]\nn_layers = 2\n", encoding="utf-8")
    with pytest.raises(ApoptosisError, match="n_layers") as e:
        RunConfig.from_toml_file(unknown)
    assert str(unknown) in str(e.value)
    not_table = tmp_path / "not_table.toml"
    not_table.write_text("model = 3\n", encoding="utf-8")
    with pytest.raises(ApoptosisError, match=r"\[model\] must be a table"):
        RunConfig.from_toml_file(not_table)


# --- set --------------------------------------------------------------------------------------


def test_set_int_float_str_list() -> None:
    config = RunConfig()
    config.set("model.n_layer", 2)
    config.set("trainer.lr", 0.01)
    config.set("trainer.min_lr", 0)  # an int is accepted for a float
    config.set("data.path", "foo.txt")
    config.set("model.mlp_widths", [64, 64])
    config.set("strategy.name", "none")
    config.set("strategy.prune_rate", 0.2)
    assert config.model.n_layer == 2
    assert config.trainer.lr == 0.01
    assert config.trainer.min_lr == 0.0 and isinstance(config.trainer.min_lr, float)
    assert config.data.path == "foo.txt"
    assert config.model.mlp_widths == [64, 64]
    assert config.strategy.name == "none"
    assert config.strategy.params == {"prune_rate": 0.2}
    assert config.model.widths() == [64, 64]


def test_set_from_parsed_options() -> None:
    config = RunConfig()
    for option in ("model.mlp_widths=[64,64]", "model.n_layer=2", "trainer.lr=1e-2", "data.path=foo.txt"):
        config.set(*parse_set_option(option))
    assert config.model.mlp_widths == [64, 64]
    assert config.model.n_layer == 2
    assert config.trainer.lr == 0.01
    assert config.data.path == "foo.txt"
    config.validate()


def test_coerce_bool() -> None:
    # no RunConfig section has a bool field yet; the checker must still handle one
    assert _coerce(bool, True, "x.flag", "--set") is True
    assert _coerce(bool, False, "x.flag", "--set") is False
    for bad in (1, 0, "true", 1.0):
        with pytest.raises(ApoptosisError, match="x.flag must be true or false"):
            _coerce(bool, bad, "x.flag", "--set")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("model.n_layer", True, "model.n_layer must be an integer"),  # bool is not an int
        ("model.n_layer", 2.0, "model.n_layer must be an integer"),
        ("model.n_layer", "2", "model.n_layer must be an integer"),
        ("trainer.steps", "abc", "trainer.steps must be an integer, got 'abc'"),
        ("trainer.lr", "0.1", "trainer.lr must be a number"),
        ("trainer.lr", False, "trainer.lr must be a number"),
        ("data.path", 3, "data.path must be a string"),
        ("model.mlp_widths", 64, "model.mlp_widths must be a list of int"),
        ("model.mlp_widths", [64, "64"], "model.mlp_widths must be an integer"),
        ("model.mlp_widths", [64, 1.5], "model.mlp_widths must be an integer"),
        ("strategy.name", 3, "strategy.name must be a string"),
    ],
)
def test_set_wrong_type(key: str, value: object, fragment: str) -> None:
    config = RunConfig()
    before = config.to_dict()
    with pytest.raises(ApoptosisError) as e:
        config.set(key, value)
    assert fragment in str(e.value)
    assert str(e.value).startswith("--set: ")
    assert config.to_dict() == before  # nothing changed


def test_set_unknown_key_lists_the_section_keys() -> None:
    with pytest.raises(ApoptosisError) as e:
        RunConfig().set("model.nope", 1)
    message = str(e.value)
    assert "'model.nope'" in message
    for key in ("block_size", "d_ff", "d_model", "dropout", "mlp_widths", "n_head", "n_layer", "vocab_size"):
        assert key in message
    assert "lr" not in message.split("model has", 1)[1]  # only the model section's keys


@pytest.mark.parametrize("key", ["nope.x", "model", "models.n_layer", ".n_layer", "model."])
def test_set_unknown_section(key: str) -> None:
    with pytest.raises(ApoptosisError) as e:
        RunConfig().set(key, 1)
    message = str(e.value)
    assert repr(key) in message
    for section in ("data", "fitness", "model", "strategy", "trainer"):
        assert section in message


def test_set_error_names_its_source() -> None:
    with pytest.raises(ApoptosisError, match=r"^--steps: trainer.steps must be an integer"):
        RunConfig().set("trainer.steps", "x", source="--steps")


# --- parse_set_option -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("model.n_layer=2", ("model.n_layer", 2)),
        ("data.path=foo.txt", ("data.path", "foo.txt")),
        ("trainer.lr=3e-4", ("trainer.lr", 3e-4)),
        ("trainer.lr=1", ("trainer.lr", 1)),
        ("model.mlp_widths=[64,64]", ("model.mlp_widths", [64, 64])),
        ("strategy.outgoing=split", ("strategy.outgoing", "split")),
        ('data.path="my file.txt"', ("data.path", "my file.txt")),
        ("data.path=a=b.txt", ("data.path", "a=b.txt")),
        (" model.n_layer = 3 ", ("model.n_layer", 3)),
        ("flag=true", ("flag", True)),
        ("data.path=", ("data.path", "")),
    ],
)
def test_parse_set_option(option: str, expected: tuple[str, object]) -> None:
    key, value = parse_set_option(option)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize("option", ["model.n_layer", "=2", "  =2", ""])
def test_parse_set_option_needs_key_and_equals(option: str) -> None:
    with pytest.raises(ApoptosisError, match="expected key=value"):
        parse_set_option(option)


# --- validate ---------------------------------------------------------------------------------


def test_default_config_is_valid() -> None:
    RunConfig().validate()
    config = RunConfig()
    config.trainer.device = "cuda:1"
    config.validate()


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"model.d_model": 30, "model.n_head": 4}, "divisible by model.n_head"),
        ({"model.n_layer": 0}, "model.n_layer"),
        ({"model.n_head": 0}, "model.n_head"),
        ({"model.block_size": 0}, "model.block_size"),
        ({"model.dropout": 1.0}, "model.dropout"),
        ({"model.mlp_widths": [64]}, "model.mlp_widths"),  # n_layer is 4
        ({"model.n_layer": 2, "model.mlp_widths": [64, 0]}, "model.mlp_widths"),
        ({"data.val_fraction": 0.0}, "data.val_fraction"),
        ({"data.val_fraction": 1.0}, "data.val_fraction"),
        ({"trainer.steps": 0}, "trainer.steps"),
        ({"trainer.batch_size": 0}, "trainer.batch_size"),
        ({"trainer.lr": 0.0}, "trainer.lr"),
        ({"trainer.beta2": 1.0}, "trainer.beta2"),
        ({"trainer.grad_clip": -1.0}, "trainer.grad_clip"),
        ({"trainer.device": "tpu"}, "trainer.device must be cpu, cuda or cuda:N"),
        ({"trainer.device": "mps"}, "'mps'"),
        ({"fitness.ema_decay": 1.0}, "fitness.ema_decay"),
    ],
)
def test_validate_rejects(settings: dict[str, object], fragment: str) -> None:
    config = RunConfig()
    for key, value in settings.items():
        config.set(key, value)
    with pytest.raises(ApoptosisError) as e:
        config.validate()
    assert fragment in str(e.value)


@pytest.mark.parametrize("device", ["cudax", "cuda:a"])
def test_validate_rejects_malformed_cuda_device(device: str) -> None:
    config = RunConfig()
    config.trainer.device = device
    with pytest.raises(ApoptosisError, match="trainer.device"):
        config.validate()


def test_model_widths() -> None:
    assert ModelConfig(n_layer=3, d_ff=10).widths() == [10, 10, 10]
    assert ModelConfig(n_layer=2, mlp_widths=[5, 7]).widths() == [5, 7]


# --- strategy parameters ----------------------------------------------------------------------


def test_strategy_defaults_and_given_values() -> None:
    assert build_strategy("standard").params == StandardParams()
    params = build_strategy("standard", {"prune_rate": 0.2, "interval": 7, "outgoing": "copy"}).params
    assert (params.prune_rate, params.interval, params.outgoing) == (0.2, 7, "copy")
    assert params.maturity == StandardParams().maturity


def test_strategy_int_accepted_for_float() -> None:
    params = build_strategy("standard", {"prune_rate": 0, "mutation_strength": 2}).params
    assert params.prune_rate == 0.0 and isinstance(params.prune_rate, float)
    assert params.mutation_strength == 2.0 and isinstance(params.mutation_strength, float)


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("prune_rate", 0.9, "0.0 <= prune_rate <= 0.5"),
        ("prune_rate", -0.01, "0.0 <= prune_rate <= 0.5"),
        ("interval", 0, "1 <= interval <= 1000000"),
        ("parent_pool", 0.0, "0.01 <= parent_pool <= 1.0"),
        ("mutation_strength", math.inf, "0.0 <= mutation_strength <= 10.0"),
        ("outgoing", "bogus", "outgoing in {zero, split, copy}"),
    ],
)
def test_strategy_param_out_of_range(name: str, value: object, allowed: str) -> None:
    with pytest.raises(ApoptosisError) as e:
        build_strategy("standard", {name: value})
    message = str(e.value)
    assert message.startswith("strategy 'standard': ")
    assert f"{name}={value!r}" in message
    assert "out of range" in message
    assert allowed in message


def test_strategy_param_nan_rejected() -> None:
    with pytest.raises(ApoptosisError, match="prune_rate=nan is out of range"):
        build_strategy("standard", {"prune_rate": math.nan})


def test_strategy_unknown_param_lists_known() -> None:
    with pytest.raises(ApoptosisError) as e:
        build_strategy("standard", {"prune_rte": 0.1})
    message = str(e.value)
    assert "'prune_rte'" in message
    for known in ("interval", "maturity", "mutation_strength", "outgoing", "parent_pool", "prune_rate"):
        assert known in message
    with pytest.raises(ApoptosisError, match="strategy 'none' has no parameter 'prune_rate'; it has: no parameters"):
        build_strategy("none", {"prune_rate": 0.1})


@pytest.mark.parametrize(
    ("name", "value", "word"),
    [
        ("prune_rate", "0.1", "a number"),
        ("prune_rate", True, "a number"),
        ("interval", 10.5, "an integer"),
        ("interval", "10", "an integer"),
        ("maturity", False, "an integer"),
        ("outgoing", 1, "a string"),
    ],
)
def test_strategy_param_wrong_type(name: str, value: object, word: str) -> None:
    with pytest.raises(ApoptosisError) as e:
        build_strategy("standard", {name: value})
    assert f"parameter {name} must be {word}, got {value!r}" in str(e.value)


def test_unknown_strategy_lists_known() -> None:
    with pytest.raises(ApoptosisError) as e:
        build_strategy("nosuch")
    assert "'nosuch'" in str(e.value)
    assert "none" in str(e.value) and "standard" in str(e.value)


def test_describe_standard_params() -> None:
    rows = {row["name"]: row for row in StandardParams.describe()}
    assert set(rows) == {"prune_rate", "interval", "mutation_strength", "maturity", "parent_pool", "outgoing"}
    assert rows["prune_rate"]["default"] == 0.1
    assert rows["prune_rate"]["search"] == [0.01, 0.3]
    assert rows["interval"]["log"] is True
    assert rows["outgoing"]["choices"] == ["zero", "split", "copy"] and rows["outgoing"]["search"] is None
    for row in rows.values():
        if row["search"] is not None:
            low, high = row["search"]
            assert row["low"] <= low < high <= row["high"], row["name"]
