"""Tuned-vs-tuned comparison of decay modes across seeds: selected on validation, scored on test.

Runs are grouped into *settings* (`fedadamw.schema.setting_of`: every config key except the
bookkeeping ones, the seed and the optimizer keys `schema.OPTIMIZER_KEYS`). Within a setting each
mode has *points* (its values of the optimizer keys) and, per point, one run per seed; the same
seed means the same partitions, validation rows, sampled clients, batches and initial weights.

- **Selection.** Each mode's tuned point is the one with the highest validation accuracy (the
  mean over its last `final_rounds` rounds, averaged over seeds). λ = 0 is never a decay mode's
  pick: that is the `none` arm. A mode without λ > 0 in a setting is not tuned there, and the
  output says so. Stores without validation rows fall back to test accuracy, flagged.
- **Rows.** A − B per seed, for every measure: test accuracy (mean over the last `final_rounds`
  rounds) and whole-update, decay-part and data-part dispersion (mean over the trained rounds;
  undefined rounds, stored NULL, are skipped). `tuned` pairs each mode's tuned point; `nominal`
  pairs every point both modes ran (matched η and λ); `shrink` pairs, at equal values of the
  other optimizer keys, each point of A with the point of B whose mean effective shrink
  (Σ|decay step| / Σ|w|) is nearest, if within a factor `SHRINK_TOLERANCE`.
- **Inference.** A paired 95% Student-t interval per row and measure, the paired t-test's
  p-value, and Holm's adjustment over every row × measure of the table.

With a declared endpoint (`fedadamw.results.endpoint`: the experiment's `[endpoint]` table)
the comparisons are its family, every measure and the selecting validation accuracy are read
over its one window, Holm adjusts the primary rows (the declared family) and the secondary rows
apart, descriptive rows get no p-value, and each point carries its stored total shrink ηλT.

This module computes the `Report`; `fedadamw.results.compare_render` prints it (table,
markdown, csv, json) and is `fedadamw compare`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedadamw.errors import ConfigError
from fedadamw.results.endpoint import ENDPOINT_MEASURES, Endpoint, Window
from fedadamw.results.reader import Store
from fedadamw.results.stats import (
    Interval,
    detectable_difference,
    holm,
    paired_t_pvalue,
    t_interval,
)
from fedadamw.results.summaries import last_rounds_mean
from fedadamw.schema import (
    DECAY_KEY,
    DECAY_MODES,
    EFFECTIVE_SHRINK,
    FINISHED,
    OPTIMIZER_KEYS,
    VAL_ACCURACY,
    decay_mode,
    key_applies,
    setting_of,
)

FINAL_ROUNDS = 5  # rounds whose mean is a run's final accuracy (noisy as a single round)
# Compared per run: final test accuracy, then the mean over rounds of each dispersion.
MEASURES = ("test_accuracy", "dispersion", "decay_dispersion", "data_dispersion")
MATCHES = ("tuned", "nominal", "shrink")
# `--match shrink` pairs points whose effective shrinks differ by less than half a decade: the
# nearest point of a λ grid spaced by decades always is, unless the two ranges do not overlap.
SHRINK_TOLERANCE = 10**0.5
# Short names of optimizer keys in tables; a key not listed is shown by its name.
SYMBOLS = {"learning-rate": "η", "weight-decay": "λ"}

Point = tuple[float, ...]  # a mode's values of OPTIMIZER_KEYS
TOTAL_SHRINK = "total_shrink"  # per run: Σ over rounds of a client's Σₜ shrink per step (ηλT)
# Read over an endpoint's window: accuracies and every endpoint measure.
WINDOW_COLUMNS = tuple(dict.fromkeys(("test_accuracy", VAL_ACCURACY, *ENDPOINT_MEASURES)))
_NO_VALUE = Interval(math.nan, math.nan, math.nan, 0)


@dataclass(frozen=True)
class Selection:
    """A mode's tuned point in one setting and how it scored (means over seeds)."""

    setting: str
    mode: str
    point: Point
    validation: Interval  # what selected it (test accuracy where nothing was held out)
    test: Interval
    candidates: int  # points the mode ran with λ > 0 (any λ for `none`)
    dispersion: Interval  # whole-update dispersion there (mean over rounds), for reference
    total_shrink: Interval = _NO_VALUE  # ηλT: a client's total shrink over the run (stored)


@dataclass(frozen=True)
class Row:
    """A − B of one measure at one pair of points, paired by seed."""

    setting: str
    kind: str  # "tuned", "nominal" or "shrink"
    mode_a: str
    mode_b: str
    point_a: Point
    point_b: Point
    seeds: tuple[int, ...]
    measure: str
    difference: Interval
    p_value: float
    p_holm: float = math.nan
    shrink_a: float = math.nan  # mean effective shrink per step of each side ("shrink" rows)
    shrink_b: float = math.nan
    role: str = ""  # under an endpoint: "primary", "secondary" or "descriptive"
    detectable: float = math.nan  # smallest |A − B| with 80% power at α = 0.05 (these seeds)


@dataclass
class Report:
    """Everything `fedadamw compare` prints, in every format."""

    final_rounds: int
    match: str
    selected_on: str  # "validation" or "test"
    rows: list[Row] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)
    points: list[Selection] = field(default_factory=list)  # every candidate point (--points)
    notes: list[str] = field(default_factory=list)
    endpoint: Endpoint | None = None  # what the rows test (None: compare's defaults)
    declared: bool = True  # False when command-line overrides replaced the declared endpoint
    source: str = ""  # where the endpoint was read
    power: bool = False  # show each row's detectable difference
    unreached: list[str] = field(default_factory=list)  # matched-loss: runs that never got there

    @property
    def tests(self) -> int:
        """How many row × measure p-values Holm's adjustment counted (primary ones, with an
        endpoint: the declared family)."""
        return self.family_tests("primary" if self.endpoint else "")

    def family_tests(self, role: str) -> int:
        """How many tests the Holm family of `role` holds ("" without an endpoint)."""
        return sum(1 for r in self.rows if r.role == role and not math.isnan(r.p_value))


# setting -> mode -> point -> seed -> values
_Table = dict[str, dict[str, dict[Point, dict[int, dict[str, float]]]]]


def _load(
    path: Path,
    final_rounds: int,
    notes: list[str],
    window: Window | None = None,
    unreached: list[str] | None = None,
) -> tuple[_Table, dict[str, str], bool]:
    """The finished runs of the store by setting, mode, point and seed; setting labels.

    Without a `window`: accuracies over the last `final_rounds` rounds, dispersions over all
    trained rounds. With one: every measure over that window, plus each run's total shrink;
    runs a matched-loss window never reaches are named in `unreached` and get no values.
    """
    store = Store(path)
    runs = store.runs()
    rounds = store.rounds()
    trained = rounds[rounds["round"] >= 1]
    missed: set[str] = set()
    if window is None:
        final = last_rounds_mean(rounds, ["test_accuracy", VAL_ACCURACY], final_rounds)
        over_rounds = [m for m in (*MEASURES[1:], EFFECTIVE_SHRINK) if m in trained]
        sources = [
            (final, ["test_accuracy", VAL_ACCURACY]),
            (trained.groupby("run_id")[over_rounds].mean(), over_rounds),
        ]
    else:
        windowed, missed = _windowed(trained, window)
        shrink = _total_shrink(store, trained)
        sources = [(windowed, list(windowed.columns)), (shrink, [TOTAL_SHRINK])]
    unfinished = int((runs["status"] != FINISHED).sum())
    if unfinished:
        notes.append(f"{unfinished} run(s) not finished are left out")
    if window is None:
        _note_short_runs(runs, trained, final_rounds, notes)
    table: _Table = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    has_validation = False
    for _, run in runs[runs["status"] == FINISHED].iterrows():
        cfg, rid = run["config"], run["run_id"]
        values: dict[str, float] = {}
        for source, columns in sources:
            for column in columns:
                if rid in source.index and column in source:
                    value = float(source.at[rid, column])
                    if not math.isnan(value):
                        values[column] = value
        has_validation |= VAL_ACCURACY in values
        point = tuple(float(cfg.get(k, math.nan)) for k in OPTIMIZER_KEYS)
        setting = setting_of(cfg, also_without=OPTIMIZER_KEYS)
        if rid in missed and unreached is not None:
            unreached.append(f"{run['mode']} {format_point(point)} seed {int(cfg.get('seed', 0))}")
            values = {k: v for k, v in values.items() if k == TOTAL_SHRINK}
        table[setting][str(run["mode"])][point][int(cfg.get("seed", 0))] = values
    return table, _labels(list(table)), has_validation


def _windowed(trained: pd.DataFrame, window: Window) -> tuple[pd.DataFrame, set[str]]:
    """Per run (index run_id), each WINDOW_COLUMNS column over `window`; runs never reached.

    last-p%/last-N/all: the mean over the run's last rounds (NULLs skipped); matched-loss: the
    values at the first round whose train loss is at or below the threshold.
    """
    ordered = trained.sort_values(["run_id", "round"])
    columns = [c for c in WINDOW_COLUMNS if c in ordered]
    if window.kind == "matched-loss":
        losses = ordered.get("train_loss")
        hit = ordered[losses <= window.value] if losses is not None else ordered.iloc[:0]
        first = hit.groupby("run_id").head(1).set_index("run_id")
        values = first[columns].apply(pd.to_numeric, errors="coerce")  # NULL → NaN
        return values, set(ordered["run_id"]) - set(first.index)
    by_run = ordered.groupby("run_id")
    from_end = by_run.cumcount(ascending=False)
    keep = by_run["round"].transform("size").map(window.rounds)
    return ordered[from_end < keep].groupby("run_id")[columns].mean(), set()


def _total_shrink(store: Store, trained: pd.DataFrame) -> pd.DataFrame:
    """Per run (index run_id), ηλT as stored: over its trained rounds, the clients' mean of
    effective shrink per step × local steps (the round's effective shrink × the clients' mean
    local steps where clients store no shrink of their own); NaN without track-decay."""
    wanted = (EFFECTIVE_SHRINK, "local_steps")
    clients = store.clients()
    clients = clients[clients["round"] >= 1] if "round" in clients else clients
    if not all(c in clients for c in wanted) or not len(clients):
        return pd.DataFrame({TOTAL_SHRINK: []}, index=pd.Index([], name="run_id"))
    steps = clients.groupby(["run_id", "round"])["local_steps"].mean()
    per_client = clients[EFFECTIVE_SHRINK].astype(float) * clients["local_steps"]
    per_round = per_client.groupby([clients["run_id"], clients["round"]]).mean()
    if EFFECTIVE_SHRINK in trained:  # clients without their own shrink: the round's
        rounds = trained.set_index(["run_id", "round"])[EFFECTIVE_SHRINK].astype(float)
        per_round = per_round.fillna(rounds.reindex(per_round.index) * steps)
    total = per_round.groupby(level="run_id").sum(min_count=1)
    return total.to_frame(TOTAL_SHRINK)


def _note_short_runs(runs: Any, trained: Any, final_rounds: int, notes: list[str]) -> None:
    """Say so when finished runs have fewer trained rounds than the final-rounds window."""
    done = set(runs.loc[runs["status"] == FINISHED, "run_id"])
    counts = trained[trained["run_id"].isin(done)].groupby("run_id")["round"].nunique()
    short = counts[counts < final_rounds]
    if len(short):
        notes.append(
            f"{len(short)} run(s) have fewer than final-rounds = {final_rounds} trained rounds "
            f"(as few as {int(short.min())}): their final accuracy is the mean over all of "
            "their rounds; pass --final-rounds to match"
        )


def _labels(settings: list[str]) -> dict[str, str]:
    """Per setting, the keys that tell it apart from the others (or "all runs")."""
    parsed = {s: json.loads(s) for s in settings}
    labels = {}
    for setting, mine in parsed.items():
        differing = sorted(
            {
                k
                for o in parsed.values()
                if o is not mine
                for k in mine
                if o.get(k) != mine[k] and key_applies(k, mine)
            }
        )
        labels[setting] = " ".join(f"{k}={_value(mine[k])}" for k in differing) or "all runs"
    return labels


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_DECAY = OPTIMIZER_KEYS.index(DECAY_KEY)


def _candidates(mode: str, points: dict[Point, Any]) -> list[Point]:
    """The points a mode may be tuned over: λ > 0 for a decay mode, any for `none`."""
    if not DECAY_MODES[mode].decays:
        return sorted(points)
    return sorted(p for p in points if p[_DECAY] > 0.0)


def _score(by_seed: dict[int, dict[str, float]], measure: str) -> Interval:
    return t_interval([v.get(measure) for v in by_seed.values()])


def _summaries(
    label: str, mode: str, points: dict[Point, dict[int, dict[str, float]]], on: str
) -> list[Selection]:
    """Every candidate point of a mode with its scores (the cells of an η × λ heatmap)."""
    candidates = _candidates(mode, points)
    return [
        Selection(
            label,
            mode,
            p,
            _score(points[p], on),
            _score(points[p], "test_accuracy"),
            len(candidates),
            _score(points[p], "dispersion"),
            _score(points[p], TOTAL_SHRINK),
        )
        for p in candidates
    ]


def _select(summaries: list[Selection]) -> Selection | None:
    scored = [s for s in summaries if s.validation.n > 0]
    # The highest mean; ties go to the first point in sorted order (the smaller values).
    return max(scored, key=lambda s: s.validation.mean) if scored else None


def _pair(
    label: str,
    kind: str,
    modes: tuple[str, str],
    points: tuple[Point, Point],
    sides: tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]],
    shrinks: tuple[float, float] = (math.nan, math.nan),
    endpoint: Endpoint | None = None,
) -> list[Row]:
    a, b = sides
    seeds = tuple(sorted(set(a) & set(b)))
    rows = []
    for measure in MEASURES if endpoint is None else endpoint.measures:
        diffs = [a[s].get(measure, math.nan) - b[s].get(measure, math.nan) for s in seeds]
        interval = t_interval(diffs)  # NaN differences (undefined rounds) dropped
        if interval.n == 0:
            continue  # nobody stored it (decay parts without track-decay) or undefined (NULL)
        used = tuple(s for s, d in zip(seeds, diffs, strict=True) if not math.isnan(d))
        role = "" if endpoint is None else endpoint.role(measure, modes)
        tested = role != "descriptive"
        rows.append(
            Row(
                label,
                kind,
                *modes,
                *points,
                used,
                measure,
                interval,
                paired_t_pvalue(diffs) if tested else math.nan,
                shrink_a=shrinks[0],
                shrink_b=shrinks[1],
                role=role,
                detectable=detectable_difference(diffs) if tested else math.nan,
            )
        )
    return rows


def _shared(mode_a: str, mode_b: str, point: Point) -> Point:
    """The part of a point two modes can share: `none` has no λ to match."""
    if not (DECAY_MODES[mode_a].decays and DECAY_MODES[mode_b].decays):
        return tuple(v for i, v in enumerate(point) if i != _DECAY)
    return point


def _mean_shrink(by_seed: dict[int, dict[str, float]]) -> float:
    return _score(by_seed, EFFECTIVE_SHRINK).mean


def compare(
    path: str | Path,
    mode_a: str = "coupled",
    modes_b: Sequence[str] = ("decoupled",),
    *,
    final_rounds: int = FINAL_ROUNDS,
    match: str = "tuned",
    select_seeds: Collection[int] | None = None,
    report_seeds: Collection[int] | None = None,
    endpoint: Endpoint | None = None,
) -> Report:
    """Every A − B row of the store at `path` for each B of `modes_b` (see the module text).

    With `select_seeds`, each mode's tuned point is picked on those seeds only; with
    `report_seeds`, rows (A − B per seed) are scored on those only. Given both, they must not
    overlap: the reported difference is then not inflated by the selection (held-out seeds).

    With an `endpoint`, its family's comparisons replace `mode_a`/`modes_b`, its window
    replaces `final_rounds` for every measure, and Holm adjusts the primary rows (the family)
    and the secondary rows (their own family) apart; descriptive rows get no p-value.
    """
    if final_rounds < 1:
        raise ConfigError(
            f"--final-rounds: {final_rounds} is not allowed; expected an integer >= 1"
        )
    if match not in MATCHES:
        raise ConfigError(
            f"--match: {match!r} is not allowed; expected one of {', '.join(MATCHES)}"
        )
    comparisons = (
        list(endpoint.comparisons) if endpoint else [(mode_a, b) for b in modes_b if b != mode_a]
    )
    for mode in (mode_a, *modes_b, *(m for pair in comparisons for m in pair)):
        decay_mode(mode)
    notes: list[str] = []
    unreached: list[str] = []
    window = endpoint.window if endpoint else None
    table, labels, has_validation = _load(Path(path), final_rounds, notes, window, unreached)
    scored = table
    if select_seeds is not None or report_seeds is not None:
        if select_seeds is not None and report_seeds is not None:
            shared = sorted(set(select_seeds) & set(report_seeds))
            if shared:
                raise ConfigError(
                    f"--select-seeds and --report-seeds share seeds {shared}; expected "
                    "disjoint sets (selection on held-out seeds)"
                )
        table = _only_seeds(table, select_seeds)
        scored = _only_seeds(scored, report_seeds)
        notes.append(
            f"points selected on seeds {_seed_text(select_seeds)}, rows scored on seeds "
            f"{_seed_text(report_seeds)}"
        )
    on = VAL_ACCURACY if has_validation else "test_accuracy"
    report = Report(
        final_rounds,
        match,
        "validation" if has_validation else "test",
        notes=notes,
        endpoint=endpoint,
        unreached=unreached,
    )
    if unreached and window is not None:
        notes.append(
            f"{len(unreached)} run(s) never reach train loss ≤ {window.value:g} and are left "
            f"out of pairs: {'; '.join(unreached)}"
        )
    if not table:
        notes.append("no run has finished yet: compare again once arms have finished")
    elif not has_validation:
        notes.append(
            "no validation accuracy stored (val-fraction 0 or an older store): points are "
            "selected on the test split they are scored on, which is optimistic"
        )
    modes = list(dict.fromkeys((mode_a, *modes_b))) if endpoint is None else []
    modes = list(dict.fromkeys((*modes, *(m for pair in comparisons for m in pair))))
    for setting in sorted(table, key=lambda s: labels[s]):
        by_mode, label = table[setting], labels[setting]
        chosen: dict[str, Selection] = {}
        for mode in modes:
            if mode not in by_mode:
                continue
            summaries = _summaries(label, mode, by_mode[mode], on)
            report.points += summaries
            selection = _select(summaries)
            if selection is None:
                notes.append(
                    f"{label}: {mode} ran no λ > 0 (λ = 0 is the none arm), so it is not tuned"
                )
                continue
            chosen[mode] = selection
            report.selections.append(selection)
        for pair in comparisons:
            if pair[0] not in by_mode or pair[1] not in by_mode:
                continue
            rows_by_mode = scored.get(setting, {})
            if pair[0] not in rows_by_mode or pair[1] not in rows_by_mode:
                continue
            if match == "tuned" and pair[0] in chosen and pair[1] in chosen:
                pa, pb = chosen[pair[0]].point, chosen[pair[1]].point
                sides = (rows_by_mode[pair[0]].get(pa, {}), rows_by_mode[pair[1]].get(pb, {}))
                report.rows += _pair(label, "tuned", pair, (pa, pb), sides, endpoint=endpoint)
            elif match == "nominal":
                report.rows += _nominal(label, pair, rows_by_mode, endpoint)
            elif match == "shrink":
                report.rows += _by_shrink(label, pair, rows_by_mode, notes, endpoint)
    # Holm within each family: every row without an endpoint; else primary and secondary apart.
    for role in dict.fromkeys(r.role for r in report.rows):
        members = [i for i, r in enumerate(report.rows) if r.role == role]
        adjusted = holm([report.rows[i].p_value for i in members])
        for i, p in zip(members, adjusted, strict=True):
            report.rows[i] = _with_holm(report.rows[i], p)
    return report


def _only_seeds(table: _Table, seeds: Collection[int] | None) -> _Table:
    """The table with only these seeds' runs (all of them for None), empty entries dropped."""
    if seeds is None:
        return table
    keep = set(seeds)
    out: _Table = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for setting, by_mode in table.items():
        for mode, points in by_mode.items():
            for point, by_seed in points.items():
                kept = {s: v for s, v in by_seed.items() if s in keep}
                if kept:
                    out[setting][mode][point] = kept
    return out


def _seed_text(seeds: Collection[int] | None) -> str:
    return "all" if seeds is None else ",".join(map(str, sorted(seeds)))


def parse_seeds(text: str, flag: str) -> frozenset[int]:
    """Seeds written as `0-4,7`: ranges and single seeds, comma-separated; ConfigError else."""
    seeds: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            if first < 0 or last < first:
                raise ValueError(part)
            seeds.update(range(first, last + 1))
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not allowed; expected seeds like 0-4,7 (non-negative, ascending)"
        ) from None
    if not seeds:
        raise ConfigError(f"{flag}: {text!r} names no seed; expected seeds like 0-4,7")
    return frozenset(seeds)


def _with_holm(row: Row, p: float) -> Row:
    return Row(**{**row.__dict__, "p_holm": p})


def _nominal(
    label: str,
    modes: tuple[str, str],
    by_mode: dict[str, dict[Point, dict[int, Any]]],
    endpoint: Endpoint | None = None,
) -> list[Row]:
    """Both modes at the same point (matched η and λ; `none` matches on η alone)."""
    a, b = modes
    rows = []
    for pa in _candidates(a, by_mode[a]):
        for pb in _candidates(b, by_mode[b]):
            if _shared(a, b, pa) == _shared(a, b, pb):
                sides = (by_mode[a][pa], by_mode[b][pb])
                rows += _pair(label, "nominal", modes, (pa, pb), sides, endpoint=endpoint)
    return rows


def _by_shrink(
    label: str,
    modes: tuple[str, str],
    by_mode: dict[str, dict[Point, dict[int, Any]]],
    notes: list[str],
    endpoint: Endpoint | None = None,
) -> list[Row]:
    """Each λ > 0 point of A with the point of B (same other keys) of nearest effective shrink."""
    a, b = modes
    shrink = {
        (m, p): _mean_shrink(by_mode[m][p]) for m in modes for p in _candidates(m, by_mode[m])
    }
    if all(math.isnan(s) for s in shrink.values()):
        notes.append(f"{label}: no effective shrink stored (it needs track-decay)")
        return []
    rows = []
    for pa in _candidates(a, by_mode[a]):
        others = [
            pb
            for pb in _candidates(b, by_mode[b])
            if _without_decay(pa) == _without_decay(pb) and shrink[(b, pb)] > 0
        ]
        sa = shrink[(a, pa)]
        if not others or not sa > 0:
            continue
        pb = min(others, key=lambda p: abs(math.log(shrink[(b, p)] / sa)))
        sb = shrink[(b, pb)]
        if max(sa, sb) / min(sa, sb) > SHRINK_TOLERANCE:
            notes.append(
                f"{label}: {a} at {format_point(pa)} (shrink {sa:.3g}) has no {b} point within "
                f"{SHRINK_TOLERANCE:.3g}× (nearest {format_point(pb)}, {sb:.3g})"
            )
            continue
        sides = (by_mode[a][pa], by_mode[b][pb])
        rows += _pair(label, "shrink", modes, (pa, pb), sides, (sa, sb), endpoint)
    return rows


def _without_decay(point: Point) -> Point:
    return tuple(v for i, v in enumerate(point) if i != _DECAY)


def format_point(point: Point) -> str:
    """A point as `η=0.01 λ=0.1` (optimizer keys without a symbol by name)."""
    return " ".join(
        f"{SYMBOLS.get(k, k)}={v:g}" for k, v in zip(OPTIMIZER_KEYS, point, strict=True)
    )
