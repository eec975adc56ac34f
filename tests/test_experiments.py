"""Every shipped experiment file resolves to a valid config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedadamw.cli import resolve_configs

EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.toml"))


def test_there_are_experiments() -> None:
    assert EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_file_is_valid(path: Path) -> None:
    configs = resolve_configs(str(path), [])
    assert configs and all(c.experiment != "default" for c in configs)  # each names itself


def test_sweep_expands_to_the_grid(tmp_path: Path) -> None:
    from fedadamw.run.experiment import describe_configs, expand, load, swept_keys

    f = tmp_path / "s.toml"
    f.write_text('experiment = "s"\n[sweep]\nweight-decay = [0.001, 0.1]\nseed = [0, 1, 2]\n')
    configs = expand(load(f), ["num-server-rounds=3"])
    assert [(c.weight_decay, c.seed) for c in configs] == [
        (lam, s) for lam in (0.001, 0.1) for s in (0, 1, 2)
    ]
    assert all(c.num_server_rounds == 3 and c.experiment == "s" for c in configs)
    assert swept_keys(configs) == ["weight-decay", "seed"]  # in config-key order
    assert describe_configs(configs)["sweep"] == {"seed": [0, 1, 2], "weight-decay": [0.001, 0.1]}


def test_a_list_of_tables_sweeps_keys_together(tmp_path: Path) -> None:
    from fedadamw.run.experiment import expand, load

    f = tmp_path / "t.toml"
    f.write_text(
        'experiment = "t"\n[sweep]\noptimizer = [\n'
        '  {arms = "coupled", learning-rate = 0.003, weight-decay = 0.001},\n'
        '  {arms = "decoupled", learning-rate = 0.01, weight-decay = 0.1},\n]\nseed = [0, 1]\n'
    )
    configs = expand(load(f))
    got = [(c.arms, c.learning_rate, c.weight_decay, c.seed) for c in configs]
    assert got == [
        ("coupled", 0.003, 0.001, 0),
        ("coupled", 0.003, 0.001, 1),
        ("decoupled", 0.01, 0.1, 0),
        ("decoupled", 0.01, 0.1, 1),
    ]


@pytest.mark.parametrize(
    ("text", "sets", "message"),
    [
        ("[sweep]\nweight-decay = 0.1\n", [], "must be a non-empty list"),
        ("[sweep]\nx = [{seed = 1}, 2]\n", [], "mixes tables and values"),
        ("seed = 1\n[sweep]\nx = [{seed = 2}]\n", [], "both set and swept"),
        ("[sweep]\nx = [{seed = 2}]\n", ["seed=3"], "--set seed: that key is swept"),
        ("[sweep]\nx = [{sed = 2}]\n", [], "unknown config key 'sed'"),
        ("[sweep]\nweight-decay = [0.1, -1.0]\n", [], "weight-decay: -1.0 is not allowed"),
        ("weight-decay = 0.1\n[sweep]\nweight-decay = [0.2]\n", [], "both set and swept"),
        ("[sweep]\nseed = [1, 2]\n", ["seed=3"], "--set seed: that key is swept"),
        ("[grid]\nseed = [1]\n", [], "table [grid] is not allowed"),
    ],
)
def test_bad_sweeps_are_one_line_errors(
    tmp_path: Path, text: str, sets: list[str], message: str
) -> None:
    from fedadamw.errors import ConfigError
    from fedadamw.run.experiment import expand, load

    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        expand(load(f), sets)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\nseed = [0, 0]\n", "sweep 'seed' lists 0 twice"),
        ("[sweep]\nweight-decay = [0.1, 0.2, 0.1]\n", "sweep 'weight-decay' lists 0.1 twice"),
        ("[sweep]\nx = [{seed = 1}, {seed = 1}]\n", 'lists {"seed": 1} twice'),
        ("[sweep]\nseed = [0, 0.0]\n", "grid points 1 and 2 are the same config"),
        ("[sweep]\nx = [{seed = 1}, {seed = 1.0}]\n", "grid points 1 and 2 are the same config"),
    ],
)
def test_a_value_swept_twice_is_refused(tmp_path: Path, text: str, message: str) -> None:
    from fedadamw.errors import ConfigError
    from fedadamw.run.experiment import expand, load

    f = tmp_path / "dup.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        expand(load(f))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_grid_beyond_the_bound_is_refused_before_it_is_made(tmp_path: Path) -> None:
    from fedadamw.errors import ConfigError
    from fedadamw.run.experiment import MAX_GRID_POINTS, Experiment, expand, grid_size

    # 6.6e11 points: 7 keys of 48 values. Making them would never end; counting is instant.
    sweep: dict[str, list[Any]] = {
        k: list(range(48)) for k in ("seed", "num-clients", "local-steps", "batch-size")
    }
    sweep |= {k: [0.001 * (i + 1) for i in range(48)] for k in ("weight-decay", "learning-rate")}
    sweep["pairs-limit"] = list(range(2, 50))
    exp = Experiment(sweep=sweep)
    assert grid_size(exp) == 48**7 > MAX_GRID_POINTS
    with pytest.raises(ConfigError, match=r"48 × 48 .* = 587,068,342,272 grid points"):
        expand(exp)


@pytest.mark.parametrize(
    "data", [b'seed = 1\nexperiment = "caf\xe9"\n', bytes(range(256)), b"\xff\xfe\x00s"]
)
def test_an_experiment_file_that_is_not_utf8_is_one_line(tmp_path: Path, data: bytes) -> None:
    from fedadamw.errors import ConfigError
    from fedadamw.run.experiment import load

    f = tmp_path / "bad.toml"
    f.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load(f)
    assert "\n" not in str(info.value)
    assert "not UTF-8 text" in str(info.value)
