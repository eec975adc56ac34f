"""`fedadamw probe DIR`: the one-round counterfactual probe over a store's kept checkpoints.

A run's trajectory mixes decay's direct effect with its history. The probe isolates it: from
the global model kept after round r (`checkpoint-every`), every client the run sampled in round
r + 1 (the server's seeded sample, less its seeded dropouts) trains again on the very batches of
that round under each setting (mode, η, λ) of a grid; the run's schedules, batch sizes,
stragglers and local steps stay as they were. The torch side is `fedadamw.core.probe`; this
module reads the options (command line over an experiment file's ``[probe]`` table), picks runs
and rounds, skips what the store already holds, writes one transaction per checkpoint and prints
the mean and 95% t-interval over the selected runs (seeds) per (round, mode, η, λ).

Only runs with ``optimizer-state = reset`` are probed (every probed client starts from fresh Adam
state, as those runs' clients did); other runs are refused in one line.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from fedadamw.config import Config, parse_assignment
from fedadamw.errors import ConfigError
from fedadamw.fileio import read_toml
from fedadamw.results.compare import parse_seeds
from fedadamw.results.lock import FolderInUseError, WriterLock
from fedadamw.results.reader import Store
from fedadamw.results.stats import t_interval
from fedadamw.results.writer import ResultStore
from fedadamw.schema import PROBE_STATS, RESET_STATE
from fedadamw.text import duration

PROBE_MODES = ("coupled", "decoupled", "none", "sgd-coupled", "sgd-decoupled")
# A half-decade grid from 1e-5 to 1, plus 0 (no decay: the reference of every mode).
DEFAULT_WEIGHT_DECAYS = (
    0.0,
    *(m * 10.0**e for e in range(-5, 0) for m in (1.0, 3.0)),
    1.0,
)
PROBE_ENGINES = ("vmap", "flower")
FORMATS = ("table", "markdown", "csv")
# The keys of an experiment file's [probe] table (the command line's options of the same name).
TABLE_KEYS = ("rounds", "modes", "weight-decay", "learning-rate", "where", "seeds")
# Selectable by --where beside the config keys: the runs table's own columns.
RUN_KEYS = ("arm", "experiment", "run_id")


@dataclass(frozen=True)
class ProbeOptions:
    """What to probe: rounds (None: every kept round r < num-server-rounds), the grid, runs."""

    rounds: tuple[int, ...] | None = None
    modes: tuple[str, ...] = PROBE_MODES
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    learning_rates: tuple[float, ...] | None = None  # None: each run's own η
    where: tuple[tuple[str, str], ...] = ()
    seeds: frozenset[int] | None = None
    engine: str = "vmap"
    fmt: str = "table"
    keep_updates: bool = False


# -- options --------------------------------------------------------------------------------
def read_probe_table(path: str | Path) -> dict[str, Any]:
    """An experiment file's ``[probe]`` table ({} without one); unknown keys refused."""
    p = Path(path)
    data = read_toml(p)
    table = data.get("probe", {})
    if not isinstance(table, dict):
        raise ConfigError(f"--config {str(p)!r}: 'probe' must be a table ([probe])")
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise ConfigError(
            f"--config {str(p)!r}: [probe] key {unknown[0]!r} is not allowed; expected "
            f"{', '.join(TABLE_KEYS)}"
        )
    return dict(table)


def make_options(
    given: Mapping[str, Any],
    table: Mapping[str, Any] | None = None,
    *,
    engine: str = "vmap",
    fmt: str = "table",
    keep_updates: bool = False,
) -> ProbeOptions:
    """ProbeOptions from command-line values (strings, None: not given) over a [probe] table.

    `given` and `table` use the table's keys (`TABLE_KEYS`); a command-line value wins. Values
    are text (`25,50`, `0,1e-5`, `0-4`) or, from TOML, lists (and `where` a table or a list of
    `key=value` strings).
    """
    table = table or {}

    def pick(key: str) -> Any:
        value = given.get(key)
        if value is None or (isinstance(value, list | tuple) and not value):
            value = table.get(key)
        return value

    if engine not in PROBE_ENGINES:
        raise ConfigError(
            f"--engine: {engine!r} is not allowed; expected one of {', '.join(PROBE_ENGINES)}"
        )
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    rounds = pick("rounds")
    modes = pick("modes")
    decays = pick("weight-decay")
    lrs = pick("learning-rate")
    seeds = pick("seeds")
    return ProbeOptions(
        rounds=None if rounds is None else tuple(_rounds(rounds)),
        modes=PROBE_MODES if modes is None else tuple(_modes(modes)),
        weight_decays=DEFAULT_WEIGHT_DECAYS
        if decays is None
        else tuple(_numbers(decays, "--weight-decay", low=0.0, inclusive=True)),
        learning_rates=None
        if lrs is None
        else tuple(_numbers(lrs, "--learning-rate", low=0.0, inclusive=False)),
        where=_where(pick("where")),
        seeds=None if seeds is None else parse_seeds(_text(seeds), "--seeds"),
        engine=engine,
        fmt=fmt,
        keep_updates=keep_updates,
    )


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def _unique(values: list[Any], flag: str) -> list[Any]:
    if not values:
        raise ConfigError(f"{flag}: names nothing; expected a comma-separated list")
    return list(dict.fromkeys(values))


def _rounds(value: Any) -> list[int]:
    out = []
    for item in _items(value):
        try:
            r = int(item) if not isinstance(item, float | bool) else -1
        except ValueError:
            r = -1
        if r < 1:
            raise ConfigError(
                f"--rounds: {item!r} is not allowed; expected checkpoint rounds like 25,50 (>= 1)"
            )
        out.append(r)
    return sorted(_unique(out, "--rounds"))


def _modes(value: Any) -> list[str]:
    out = []
    for item in _items(value):
        if item not in PROBE_MODES:
            why = (
                " (its clients train as none; the server's decay is not a client setting)"
                if item == "server-decay"
                else ""
            )
            raise ConfigError(
                f"--modes: {item!r} is not allowed{why}; expected some of {', '.join(PROBE_MODES)}"
            )
        out.append(str(item))
    return _unique(out, "--modes")


def _numbers(value: Any, flag: str, low: float, inclusive: bool) -> list[float]:
    out = []
    for item in _items(value):
        try:
            x = float(item) if not isinstance(item, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x) or (x < low if inclusive else x <= low):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise ConfigError(
                f"{flag}: {item!r} is not allowed; expected finite numbers {bound}, comma-separated"
            )
        out.append(x)
    return sorted(_unique(out, flag))


def _where(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple((str(k), _text(v)) for k, v in value.items())
    pairs = []
    for item in value if isinstance(value, list | tuple) else [value]:
        try:
            pairs.append(parse_assignment(str(item)))
        except ConfigError:
            raise ConfigError(
                f"--where: {item!r} is not allowed; expected KEY=VALUE, e.g. arm=none"
            ) from None
    return tuple(pairs)


# -- which runs and rounds --------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One checkpoint to probe: a run, its config and round r (clients of round r + 1)."""

    run_id: str
    mode: str  # the run's own mode (its clients' spec)
    cfg: Config
    round: int
    settings: tuple[tuple[str, float, float], ...]  # (mode, η, λ) still to compute


def _matches(run: Mapping[str, Any], key: str, wanted: str) -> bool:
    config = run["config"]
    value = run[key] if key in RUN_KEYS else config.get(key)
    if isinstance(value, bool):
        return wanted.strip().lower() in (("true", "1") if value else ("false", "0"))
    if isinstance(value, int | float):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted


def select_runs(store: Store, opts: ProbeOptions) -> pd.DataFrame:
    """The runs of the store that `--where` and `--seeds` select (ConfigError: none)."""
    runs = store.runs()
    known = set(RUN_KEYS) | {k for c in runs["config"] for k in c}
    for key, _ in opts.where:
        if key not in known:
            raise ConfigError(
                f"--where {key}: no run has that key; expected arm, experiment, run_id or a "
                "config key such as dirichlet-alpha"
            )
    keep = [
        all(_matches(run, k, v) for k, v in opts.where)
        and (opts.seeds is None or int(run["seed"]) in opts.seeds)
        for _, run in runs.iterrows()
    ]
    picked = runs[keep]
    if picked.empty:
        asked = " ".join(
            [*(f"--where {k}={v}" for k, v in opts.where)]
            + ([f"--seeds {_seed_text(opts.seeds)}"] if opts.seeds is not None else [])
        )
        arms = ", ".join(sorted(set(runs["arm"])))
        raise ConfigError(f"{asked or 'the selection'} matches no run (the store's arms: {arms})")
    return picked


def _seed_text(seeds: Iterable[int] | None) -> str:
    return ",".join(str(s) for s in sorted(seeds or ()))


def plan_jobs(
    store: Store, opts: ProbeOptions, done: Callable[[str], set[tuple[Any, ...]]]
) -> list[Job]:
    """Every (run, checkpoint) with the settings it still lacks; refuses bad input first."""
    jobs = []
    for _, run in select_runs(store, opts).iterrows():
        run_id = str(run["run_id"])
        try:
            cfg = Config.from_mapping(run["config"])
        except ConfigError as exc:
            raise ConfigError(f"run {run_id}: its stored config is not readable ({exc})") from None
        if cfg.optimizer_state != RESET_STATE:
            raise ConfigError(
                f"run {run_id}: optimizer-state = {cfg.optimizer_state}; the probe starts every "
                "client from fresh Adam state, as optimizer-state = reset runs do (select those "
                "with --where optimizer-state=reset)"
            )
        kept = store.checkpoint_rounds(run_id)
        if not kept:
            raise ConfigError(
                f"run {run_id}: no checkpoint kept (it has stored no round yet); run it with "
                "checkpoint-every = k"
            )
        last = cfg.num_server_rounds
        if opts.rounds is None:
            rounds = [r for r in kept if r < last]
            if not rounds:
                raise ConfigError(
                    f"run {run_id}: no checkpoint kept before its last round {last} (kept: "
                    f"{', '.join(map(str, kept))}); run it with checkpoint-every = k"
                )
        else:
            rounds = list(opts.rounds)
            for r in rounds:
                if r not in kept:
                    raise ConfigError(
                        f"--rounds {r}: run {run_id} has no checkpoint of round {r} (kept "
                        f"rounds: {', '.join(map(str, kept))})"
                    )
                if r >= last:
                    raise ConfigError(
                        f"--rounds {r}: run {run_id} has {last} rounds, so round {r + 1} has no "
                        f"clients to re-train; expected rounds below {last}"
                    )
        lrs = opts.learning_rates or (cfg.learning_rate,)
        grid = [(m, lr, wd) for m in opts.modes for lr in lrs for wd in opts.weight_decays]
        stored = done(run_id)
        for r in rounds:
            todo = tuple(s for s in grid if (run_id, r, *s, opts.engine) not in stored)
            if todo:
                jobs.append(Job(run_id, str(run["mode"]), cfg, r, todo))
    return jobs


# -- the command --------------------------------------------------------------------------------
@dataclass
class _Clock:
    started: float = field(default_factory=time.perf_counter)
    done: int = 0

    def eta(self, left: int) -> str:
        if self.done == 0:
            return "—"
        return duration((time.perf_counter() - self.started) / self.done * left)


def probe_command(
    out: str | Path, opts: ProbeOptions, stream: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Probe the selected runs' checkpoints, store the rows, print the table; exit status."""
    stream = stream or sys.stdout
    err = err or sys.stderr
    store = Store(out)
    try:
        lock = WriterLock(store.path.parent)
    except FolderInUseError as exc:
        raise ConfigError(str(exc)) from None
    try:
        with ResultStore(store.path) as writer:  # upgrades an older store (schema 8: probes)
            jobs = plan_jobs(store, opts, writer.probe_keys)
            run_ids = list(select_runs(store, opts)["run_id"])
            if not jobs:
                print("probe: every selected row is stored already; nothing to compute", file=err)
            _run_jobs(store, writer, jobs, opts, err)
    finally:
        lock.release()
    table = probe_table(Store(out), run_ids, opts)
    print(render(table, opts.fmt, [selection_note(opts, len(run_ids))]), file=stream, end="")
    return 0


def _run_jobs(
    store: Store, writer: ResultStore, jobs: Sequence[Job], opts: ProbeOptions, err: TextIO
) -> None:
    if not jobs:
        return
    from fedadamw.run.probe_train import probe_checkpoint  # torch: only once work is certain

    clock = _Clock()
    total = sum(len(j.settings) for j in jobs)
    for n, job in enumerate(jobs, 1):
        began = time.perf_counter()
        rows, updates, clients = probe_checkpoint(
            store.checkpoint(job.run_id, job.round), job, opts.engine, opts.keep_updates
        )
        writer.write_probes(rows, updates)  # one transaction: Ctrl-C loses only this checkpoint
        clock.done += len(job.settings)
        left = total - clock.done
        print(
            f"probe {n}/{len(jobs)}: {job.run_id} round {job.round} (clients of round "
            f"{job.round + 1}): {len(job.settings)} settings × {clients} clients in "
            f"{duration(time.perf_counter() - began)}, ETA {clock.eta(left)}",
            file=err,
            flush=True,
        )


# -- the printed table ----------------------------------------------------------------------
GROUP = ["round", "mode", "learning_rate", "weight_decay"]


def probe_table(store: Store, run_ids: Sequence[str], opts: ProbeOptions) -> pd.DataFrame:
    """Mean and 95% t-interval over runs per (round, mode, η, λ) of the selected stored rows."""
    df = store.probes(run_ids)
    df = df[(df["engine"] == opts.engine) & df["mode"].isin(opts.modes)]
    df = df[df["weight_decay"].isin(opts.weight_decays)]
    if opts.rounds is not None:
        df = df[df["round"].isin(opts.rounds)]
    if opts.learning_rates is not None:
        df = df[df["learning_rate"].isin(opts.learning_rates)]
    rows = []
    order = {m: i for i, m in enumerate(opts.modes)}
    for key, group in df.groupby(GROUP, sort=False):
        row: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        row["runs"] = len(group)
        row["clients"] = float(pd.to_numeric(group["clients"]).mean())
        for stat in PROBE_STATS:
            iv = t_interval(float(v) for v in group[stat])
            row[stat] = iv.mean
            row[f"{stat}_low"] = iv.low
            row[f"{stat}_high"] = iv.high
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*GROUP, "runs", "clients", *PROBE_STATS])
    table["_order"] = table["mode"].map(order)
    table = table.sort_values(["round", "_order", "learning_rate", "weight_decay"])
    return table.drop(columns="_order").reset_index(drop=True)


SHORT = {
    "mean_pairwise_cosine": "c̄",
    "dispersion": "dispersion",
    "mean_update_norm": "‖Δ‖",
    "decay_share": "decay share",
    "shrink_cosine": "cos(Δ,−w)",
    "shrink_component": "Δ·(−ŵ)",
    "aggregate_loss_change": "ΔL aggregate",
    "client_loss_change": "ΔL clients",
    "total_shrink": "ηλτ",
}


def _cell(row: Mapping[str, Any], stat: str) -> str:
    mean, low, high = row[stat], row[f"{stat}_low"], row[f"{stat}_high"]
    if mean is None or not math.isfinite(mean):
        return "—"
    if not math.isfinite(low):
        return f"{mean:.4g}"
    return f"{mean:.4g} ±{(high - low) / 2:.2g}"


def selection_note(opts: ProbeOptions, runs: int) -> str:
    """What the table is over: the selected runs, the engine, what a round means."""
    where = ", ".join(f"{k}={v}" for k, v in opts.where) or "every run"
    seeds = _seed_text(opts.seeds) or "all"
    return (
        f"runs: {runs} ({where}; seeds {seeds}); engine {opts.engine}; round r: the run's "
        f"global model after round r, each client of round r + 1 retrained on its own batches "
        f"of that round under every setting"
    )


def render(table: pd.DataFrame, fmt: str, notes: Sequence[str] = ()) -> str:
    """The table as aligned text, Markdown or CSV (mean and CI bounds as columns); `notes`
    follow the table's own note (not in CSV)."""
    if fmt == "csv":
        return str(table.to_csv(index=False))
    header = ["round", "mode", "η", "λ", "runs", "K", *(SHORT[s] for s in PROBE_STATS)]
    body = [
        [
            str(int(r["round"])),
            str(r["mode"]),
            f"{r['learning_rate']:g}",
            f"{r['weight_decay']:g}",
            str(int(r["runs"])),
            f"{r['clients']:g}",
            *(_cell(r, s) for s in PROBE_STATS),
        ]
        for _, r in table.iterrows()
    ]
    note = "mean ± half-width of the 95% t-interval over runs (seeds); — undefined"
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n\n".join(["\n".join(lines), note, *notes]) + "\n"
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        for cells in [header, *body]
    ]
    return "\n".join([*lines, note, *notes]) + "\n"
