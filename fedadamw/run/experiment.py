"""Experiment files: config overrides plus an optional `[sweep]` grid, expanded to configs.

An experiment file is TOML. Top-level keys override the defaults; a `[sweep]` table maps keys
to lists of values, and the run covers their Cartesian product::

    experiment = "lambda-sweep"
    partitioner = "dirichlet"

    [sweep]
    weight-decay = [0.001, 0.01, 0.1]   # one line to sweep λ
    seed = [0, 1, 2]

Every grid point runs every arm in `arms`, so coupled and decoupled are paired at each point.

A swept list of tables sets several keys together, one table per value; its name is only a
label. Each mode at its own tuned optimizer point, for instance::

    [sweep]
    optimizer = [
        {arms = "coupled", learning-rate = 0.003, weight-decay = 0.001},
        {arms = "decoupled", learning-rate = 0.01, weight-decay = 0.1},
    ]
    seed = [0, 1, 2]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedadamw.config import Config, parse_assignment
from fedadamw.errors import ConfigError
from fedadamw.fileio import read_toml
from fedadamw.results.endpoint import Endpoint, parse_endpoint


@dataclass(frozen=True)
class Experiment:
    """What an experiment file says: overrides and a grid of swept values."""

    overrides: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    endpoint: Endpoint | None = None  # the [endpoint] table (fedadamw.results.endpoint)


def load(path: str | Path) -> Experiment:
    """Read an experiment file, or raise ConfigError with one line saying what is wrong."""
    p = Path(path)
    data = read_toml(p)
    sweep = data.pop("sweep", {})
    endpoint = None
    if "endpoint" in data:
        endpoint = parse_endpoint(data.pop("endpoint"), f"--config {str(p)!r}: [endpoint]")
    # [probe] is read by `fedadamw probe` (fedadamw.run.probe.read_probe_table), not by a run.
    if isinstance(data.get("probe"), dict):
        del data["probe"]
    if not isinstance(sweep, dict):
        raise ConfigError(f"--config {str(p)!r}: 'sweep' must be a table of lists")
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(
            f"--config {str(p)!r}: table [{nested[0]}] is not allowed; "
            "only [sweep], [endpoint] and [probe] (fedadamw probe) may be tables, everything "
            "else is a config key"
        )
    swept: list[str] = []
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"--config {str(p)!r}: sweep {key!r} must be a non-empty list, e.g. [0.01, 0.1]"
            )
        tables = [v for v in values if isinstance(v, dict)]
        if tables and len(tables) != len(values):
            raise ConfigError(
                f"--config {str(p)!r}: sweep {key!r} mixes tables and values; "
                "a list of tables sets several keys together, one table per grid value"
            )
        _check_distinct(p, key, values)
        keys = sorted({k for t in tables for k in t}) if tables else [key]
        for k in keys:
            if k in data or k in swept:
                raise ConfigError(f"--config {str(p)!r}: {k!r} is both set and swept")
        swept += keys
    return Experiment(
        overrides=data, sweep={k: list(v) for k, v in sweep.items()}, endpoint=endpoint
    )


# The most grid points one experiment may have: each point runs every arm and is one row of
# `runs`; the grid is counted (product of the lengths) before any point is made.
MAX_GRID_POINTS = 100_000


def _check_distinct(path: Path, key: str, values: list[Any]) -> None:
    """ConfigError for a sweep list that names a value twice (it would count as two seeds)."""
    seen: set[str] = set()
    for value in values:
        token = json.dumps(value, sort_keys=True, default=str)
        if token in seen:
            raise ConfigError(
                f"--config {str(path)!r}: sweep {key!r} lists {token} twice; each value runs "
                "once (a repeat would count as a second replicate of the same run)"
            )
        seen.add(token)


def grid_size(experiment: Experiment) -> int:
    """How many points the [sweep] grid has (1 without one), counted without making them."""
    return math.prod(len(v) for v in experiment.sweep.values())


def expand(experiment: Experiment, sets: Sequence[str] = ()) -> list[Config]:
    """Every grid point as a validated Config (defaults ← file ← `--set` ← grid values)."""
    base = Config.from_mapping(experiment.overrides)
    assigned = dict(parse_assignment(item) for item in sets)
    swept = {
        k
        for name, values in experiment.sweep.items()
        for v in values
        for k in (v if isinstance(v, dict) else [name])
    }
    swept_and_set = sorted(set(assigned) & swept)
    if swept_and_set:
        raise ConfigError(
            f"--set {swept_and_set[0]}: that key is swept in the experiment file; edit its [sweep]"
        )
    if assigned:
        base = Config.from_mapping(assigned, base=base, strings=True)
    size = grid_size(experiment)
    if size > MAX_GRID_POINTS:
        lengths = " × ".join(str(len(v)) for v in experiment.sweep.values())
        raise ConfigError(
            f"[sweep]: {lengths} = {size:,} grid points is not allowed; expected at most "
            f"{MAX_GRID_POINTS:,} (split it into several experiments)"
        )
    keys = list(experiment.sweep)
    configs = []
    for values in itertools.product(*(experiment.sweep[k] for k in keys)):
        point: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            # A table sets its keys together; its sweep name is a label.
            point.update(value if isinstance(value, dict) else {key: value})
        configs.append(Config.from_mapping(point, base=base) if point else base)
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        first = seen.setdefault(cfg.to_json(), i)
        if first != i:  # e.g. seed = [0, 0.0], or two tables that set the same values
            raise ConfigError(
                f"[sweep]: grid points {first + 1} and {i + 1} are the same config "
                f"({describe(cfg, cfg.arms, swept_keys(configs))}); each point runs once"
            )
    return configs


def run_id_for(cfg: Config, arm: str) -> str:
    """A stable id of one arm of one config: re-running the same config finds its rows.

    Every key but `arms`, `out-dir` and `checkpoint-every` is hashed, so a changed config never
    resumes into the rows of another; how often checkpoints are kept changes nothing a run
    computes (and leaves the ids of stores written before the key existed as they were).
    """
    values = cfg.replace(arms=arm, out_dir="").to_dict()
    del values["checkpoint-every"]
    digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.experiment}:{arm}:{digest}"


def describe(cfg: Config, arm: str, swept: Sequence[str]) -> str:
    """A short label of one arm at a grid point, e.g. 'weight-decay=0.01 seed=2 coupled'."""
    values = cfg.to_dict()
    return " ".join([*(f"{k}={values[k]}" for k in swept), arm])


def swept_keys(configs: Sequence[Config]) -> list[str]:
    """The keys whose values differ between `configs` (besides `arms` and `out-dir`)."""
    dicts = [c.to_dict() for c in configs]
    keys = [k for k in dicts[0] if k not in ("arms", "out-dir")] if dicts else []
    return [k for k in keys if len({repr(d[k]) for d in dicts}) > 1]


def describe_configs(configs: Sequence[Config]) -> dict[str, Any]:
    """config.json: the resolved config, plus the swept values when there is a grid."""
    base = configs[0].to_dict()
    swept = swept_keys(configs)
    if not swept:
        return base
    grid = {k: sorted({c.to_dict()[k] for c in configs}, key=repr) for k in swept}
    return {**{k: v for k, v in base.items() if k not in swept}, "sweep": grid}
