"""Config: one source of defaults, typed coercion, and one-line errors naming key and value."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from fedadamw.config import PYPROJECT, Config, default_config
from fedadamw.errors import ConfigError
from fedadamw.run.experiment import load as load_experiment


def test_every_field_has_exactly_one_default_in_pyproject() -> None:
    with PYPROJECT.open("rb") as fh:
        table = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    assert set(table) == {f.name.replace("_", "-") for f in fields(Config)}
    assert default_config().to_dict() == table


def test_default_is_the_paired_experiment_of_design() -> None:
    cfg = default_config()
    assert cfg.arm_list == ["coupled", "decoupled"]
    assert (cfg.dataset, cfg.num_clients, cfg.partitioner) == ("mnist1d", 10, "dirichlet")
    assert cfg.dirichlet_alpha == 0.3


def test_strings_from_the_command_line_are_coerced() -> None:
    cfg = Config.from_mapping(
        {"weight-decay": "0.05", "num-clients": "4", "arms": "none"}, strings=True
    )
    assert (cfg.weight_decay, cfg.num_clients, cfg.arm_list) == (0.05, 4, ["none"])
    assert isinstance(cfg.weight_decay, float) and isinstance(cfg.num_clients, int)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"weight-decay": -0.1},
            "weight-decay: -0.1 is not allowed; expected a finite number >= 0",
        ),
        ({"weight-decay": "nan"}, "weight-decay: 'nan' is not allowed; expected a finite number"),
        ({"weight-decay": "abc"}, "weight-decay: 'abc' is not allowed; expected a number"),
        ({"arms": "coupled,adamw"}, "arms: unknown mode 'adamw'"),
        ({"arms": "coupled,coupled"}, "names a mode twice"),
        (
            {"dirichlet-alpha": 0},
            "dirichlet-alpha: 0.0 is not allowed; expected a finite number > 0",
        ),
        ({"num-clients": 0}, "num-clients: 0 is not allowed; expected an integer >= 1"),
        ({"num-clients": "2.5"}, "num-clients: '2.5' is not allowed; expected an integer"),
        ({"num-clients": True}, "num-clients: True is not allowed; expected a number"),
        ({"fraction-train": 1.5}, "fraction-train: 1.5 is not allowed"),
        ({"partitioner": "spiral"}, "partitioner: 'spiral' is not allowed; expected one of"),
        ({"learning-rate": 0}, "learning-rate: 0.0 is not allowed"),
        ({"weight_decay": 0.1}, "unknown config key 'weight_decay'"),
        ({"local-steps": -1}, "local-steps: -1 is not allowed; expected an integer >= 0"),
        ({"val-fraction": 1}, "val-fraction: 1.0 is not allowed; expected a number in [0, 1)"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(values, strings=True)  # also the text of `--set KEY=VALUE`
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_experiment_file_overrides_and_rejects_tables(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('experiment = "lam"\nweight-decay = 0.1\n')
    cfg = Config.from_mapping(load_experiment(good).overrides)
    assert (cfg.experiment, cfg.weight_decay) == ("lam", 0.1)
    nested = tmp_path / "nested.toml"
    nested.write_text("[grid]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"table \[grid\]"):
        load_experiment(nested)
    broken = tmp_path / "broken.toml"
    broken.write_text("weight-decay = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(broken)


def _keys_of(kind: str) -> list[str]:
    return [f.name.replace("_", "-") for f in fields(Config) if f.type == kind]


@pytest.mark.parametrize("key", _keys_of("int"))
@pytest.mark.parametrize(
    "raw", ["99999999999999999999", str(2**63), str(-(2**63) - 1), "nan", "inf", "1e400"]
)
def test_every_integer_key_refuses_values_beyond_its_type(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({key: raw}, strings=True)
    assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("key", _keys_of("int"))
def test_every_integer_key_refuses_a_bool_and_a_huge_toml_value(key: str) -> None:
    for raw in (True, 10**20, 1e30):
        with pytest.raises(ConfigError, match=f"^{key}: "):
            Config.from_mapping({key: raw})


@pytest.mark.parametrize("key", _keys_of("float"))
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e39", "-1e39", "1e400"])
def test_every_float_key_refuses_non_finite_and_beyond_float32(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({key: raw}, strings=True)
    assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=f"^{key}: "):
        Config.from_mapping({key: True})


def test_the_largest_seed_allowed_seeds_torch_and_numpy() -> None:
    import numpy as np
    import torch

    from fedadamw.config import INT64_LIMIT

    top = Config.from_mapping({"seed": str(INT64_LIMIT - 1)}, strings=True)
    torch.manual_seed(top.seed)  # the references: both accept it
    np.random.default_rng([top.seed, 1, 2])
    with pytest.raises(ConfigError, match=r"^seed: 9223372036854775808 is not allowed"):
        Config.from_mapping({"seed": str(INT64_LIMIT)}, strings=True)
    with pytest.raises((RuntimeError, ValueError)):  # what the bound protects: torch refuses 2**64
        torch.manual_seed(2**64)
