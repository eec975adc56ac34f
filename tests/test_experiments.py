"""Every shipped experiment file resolves to a valid config."""

from __future__ import annotations

from pathlib import Path

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
