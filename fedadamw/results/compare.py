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
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from fedadamw.errors import ConfigError
from fedadamw.results.reader import Store, last_rounds_mean
from fedadamw.results.stats import CI_LEVEL, Interval, holm, paired_t_pvalue, t_interval
from fedadamw.schema import (
    DECAY_KEY,
    EFFECTIVE_SHRINK,
    FINISHED,
    NO_DECAY_MODE,
    OPTIMIZER_KEYS,
    VAL_ACCURACY,
    check_mode,
    key_applies,
    setting_of,
)

FINAL_ROUNDS = 5  # rounds whose mean is a run's final accuracy (noisy as a single round)
# Compared per run: final test accuracy, then the mean over rounds of each dispersion.
MEASURES = ("test_accuracy", "dispersion", "decay_dispersion", "data_dispersion")
MATCHES = ("tuned", "nominal", "shrink")
FORMATS = ("table", "markdown", "csv", "json")
# `--match shrink` pairs points whose effective shrinks differ by less than half a decade: the
# nearest point of a λ grid spaced by decades always is, unless the two ranges do not overlap.
SHRINK_TOLERANCE = 10**0.5
# Short names of optimizer keys in tables; a key not listed is shown by its name.
SYMBOLS = {"learning-rate": "η", "weight-decay": "λ"}

Point = tuple[float, ...]  # a mode's values of OPTIMIZER_KEYS


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

    @property
    def tests(self) -> int:
        """How many row × measure p-values Holm's adjustment counted."""
        return sum(1 for r in self.rows if not math.isnan(r.p_value))


def paired_interval(differences: Sequence[float], confidence: float = CI_LEVEL) -> Interval:
    """Mean and Student-t interval of paired differences (NaN entries dropped)."""
    return t_interval(differences, confidence)


@dataclass(frozen=True)
class _Run:
    setting: str
    mode: str
    point: Point
    seed: int
    values: dict[str, float]  # MEASURES, VAL_ACCURACY and EFFECTIVE_SHRINK where stored


# setting -> mode -> point -> seed -> values
_Table = dict[str, dict[str, dict[Point, dict[int, dict[str, float]]]]]


def _load(path: Path, final_rounds: int, notes: list[str]) -> tuple[_Table, dict[str, str], bool]:
    """The finished runs of the store by setting, mode, point and seed; setting labels."""
    store = Store(path)
    runs = store.runs()
    rounds = store.rounds()
    final = last_rounds_mean(rounds, ["test_accuracy", VAL_ACCURACY], final_rounds)
    trained = rounds[rounds["round"] >= 1]
    over_rounds = [m for m in (*MEASURES[1:], EFFECTIVE_SHRINK) if m in trained]
    means = trained.groupby("run_id")[over_rounds].mean()
    unfinished = int((runs["status"] != FINISHED).sum())
    if unfinished:
        notes.append(f"{unfinished} run(s) not finished are left out")
    _note_short_runs(runs, trained, final_rounds, notes)
    table: _Table = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    has_validation = False
    for _, run in runs[runs["status"] == FINISHED].iterrows():
        cfg, rid = run["config"], run["run_id"]
        values: dict[str, float] = {}
        for source, columns in ((final, ["test_accuracy", VAL_ACCURACY]), (means, over_rounds)):
            for column in columns:
                if rid in source.index and column in source:
                    value = float(source.at[rid, column])
                    if not math.isnan(value):
                        values[column] = value
        has_validation |= VAL_ACCURACY in values
        point = tuple(float(cfg.get(k, math.nan)) for k in OPTIMIZER_KEYS)
        setting = setting_of(cfg, also_without=OPTIMIZER_KEYS)
        table[setting][str(run["mode"])][point][int(cfg.get("seed", 0))] = values
    return table, _labels(list(table)), has_validation


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
    if mode == NO_DECAY_MODE:
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
) -> list[Row]:
    a, b = sides
    seeds = tuple(sorted(set(a) & set(b)))
    rows = []
    for measure in MEASURES:
        diffs = [a[s].get(measure, math.nan) - b[s].get(measure, math.nan) for s in seeds]
        interval = paired_interval(diffs)
        if interval.n == 0:
            continue  # nobody stored it (decay parts without track-decay) or undefined (NULL)
        used = tuple(s for s, d in zip(seeds, diffs, strict=True) if not math.isnan(d))
        rows.append(
            Row(
                label,
                kind,
                *modes,
                *points,
                used,
                measure,
                interval,
                paired_t_pvalue(diffs),
                shrink_a=shrinks[0],
                shrink_b=shrinks[1],
            )
        )
    return rows


def _shared(mode_a: str, mode_b: str, point: Point) -> Point:
    """The part of a point two modes can share: `none` has no λ to match."""
    if NO_DECAY_MODE in (mode_a, mode_b):
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
) -> Report:
    """Every A − B row of the store at `path` for each B of `modes_b` (see the module text)."""
    if final_rounds < 1:
        raise ConfigError(
            f"--final-rounds: {final_rounds} is not allowed; expected an integer >= 1"
        )
    if match not in MATCHES:
        raise ConfigError(
            f"--match: {match!r} is not allowed; expected one of {', '.join(MATCHES)}"
        )
    for mode in (mode_a, *modes_b):
        check_mode(mode)
    notes: list[str] = []
    table, labels, has_validation = _load(Path(path), final_rounds, notes)
    on = VAL_ACCURACY if has_validation else "test_accuracy"
    report = Report(final_rounds, match, "validation" if has_validation else "test", notes=notes)
    if not table:
        notes.append("no run has finished yet: compare again once arms have finished")
    elif not has_validation:
        notes.append(
            "no validation accuracy stored (val-fraction 0 or an older store): points are "
            "selected on the test split they are scored on, which is optimistic"
        )
    for setting in sorted(table, key=lambda s: labels[s]):
        by_mode, label = table[setting], labels[setting]
        chosen: dict[str, Selection] = {}
        for mode in dict.fromkeys((mode_a, *modes_b)):
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
        for mode_b in modes_b:
            if mode_b == mode_a or mode_a not in by_mode or mode_b not in by_mode:
                continue
            modes = (mode_a, mode_b)
            if match == "tuned" and mode_a in chosen and mode_b in chosen:
                pa, pb = chosen[mode_a].point, chosen[mode_b].point
                sides = (by_mode[mode_a][pa], by_mode[mode_b][pb])
                report.rows += _pair(label, "tuned", modes, (pa, pb), sides)
            elif match == "nominal":
                report.rows += _nominal(label, modes, by_mode)
            elif match == "shrink":
                report.rows += _by_shrink(label, modes, by_mode, notes)
    adjusted = holm([r.p_value for r in report.rows])
    report.rows = [_with_holm(r, p) for r, p in zip(report.rows, adjusted, strict=True)]
    return report


def _with_holm(row: Row, p: float) -> Row:
    return Row(**{**row.__dict__, "p_holm": p})


def _nominal(
    label: str, modes: tuple[str, str], by_mode: dict[str, dict[Point, dict[int, Any]]]
) -> list[Row]:
    """Both modes at the same point (matched η and λ; `none` matches on η alone)."""
    a, b = modes
    rows = []
    for pa in _candidates(a, by_mode[a]):
        for pb in _candidates(b, by_mode[b]):
            if _shared(a, b, pa) == _shared(a, b, pb):
                sides = (by_mode[a][pa], by_mode[b][pb])
                rows += _pair(label, "nominal", modes, (pa, pb), sides)
    return rows


def _by_shrink(
    label: str,
    modes: tuple[str, str],
    by_mode: dict[str, dict[Point, dict[int, Any]]],
    notes: list[str],
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
        rows += _pair(label, "shrink", modes, (pa, pb), sides, (sa, sb))
    return rows


def _without_decay(point: Point) -> Point:
    return tuple(v for i, v in enumerate(point) if i != _DECAY)


def format_point(point: Point) -> str:
    """A point as `η=0.01 λ=0.1` (optimizer keys without a symbol by name)."""
    return " ".join(
        f"{SYMBOLS.get(k, k)}={v:g}" for k, v in zip(OPTIMIZER_KEYS, point, strict=True)
    )


# -- output ---------------------------------------------------------------------------------
def _explanation(report: Report) -> list[str]:
    on = (
        "validation accuracy"
        if report.selected_on == "validation"
        else "test accuracy (no validation stored)"
    )
    keys = ", ".join(OPTIMIZER_KEYS)
    return [
        f"final-rounds = {report.final_rounds}: test and validation accuracy are each run's mean "
        f"over its last {report.final_rounds} rounds; dispersions are means over all trained "
        "rounds (undefined rounds skipped).",
        f"Selection: each mode's point ({keys}) with the highest mean {on} over seeds; "
        "λ = 0 is never a decay mode's pick (that is the none arm).",
        f"A − B: paired by seed, mean [{100 * CI_LEVEL:g}% Student-t CI]; p: paired t-test; "
        f"p Holm: Holm-adjusted over the {report.tests} tests of this table.",
    ]


def _p(value: float) -> str:
    if math.isnan(value):
        return "—"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _acc(interval: Interval) -> str:
    if interval.n == 0:
        return "—"
    if interval.n < 2:
        return f"{100 * interval.mean:.1f}% (n=1)"
    return f"{100 * interval.mean:.1f}% [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _kind(row: Row) -> str:
    if row.kind == "shrink":
        return f"shrink {row.shrink_a:.2g} vs {row.shrink_b:.2g}"
    return row.kind


def _selection_cells(s: Selection) -> list[str]:
    cells = [s.setting, s.mode, format_point(s.point), str(s.candidates)]
    return [*cells, _acc(s.validation), _acc(s.test), _plain(s.dispersion)]


def _plain(interval: Interval) -> str:
    return str(interval).replace("+", "") if interval.n else "—"


def _row_cells(r: Row) -> list[str]:
    return [
        r.setting,
        f"{r.mode_a} − {r.mode_b}",
        _kind(r),
        format_point(r.point_a),
        format_point(r.point_b),
        str(len(r.seeds)),
        r.measure,
        str(r.difference),
        _p(r.p_value),
        _p(r.p_holm),
    ]


SELECTION_HEADER = ["setting", "mode", "selected", "of", "score [95% CI]", "test acc [95% CI]"]
SELECTION_HEADER += ["dispersion [95% CI]"]
ROW_HEADER = ["setting", "A − B", "match", "A at", "B at", "seeds", "measure"]
ROW_HEADER += ["A − B [95% CI]", "p", "p Holm"]


def render(report: Report, fmt: str, points: bool = False) -> str:
    """The report as `fmt` (one of FORMATS); `points` adds every point's scores (not to csv)."""
    if fmt == "json":
        return json.dumps(_as_json(report, points), indent=1, allow_nan=False) + "\n"
    if fmt == "csv":
        return _as_csv(report)
    if fmt == "markdown":
        return _as_markdown(report, points)
    if fmt == "table":
        return _as_table(report, points)
    raise ConfigError(f"--format: {fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def _point_dict(point: Point) -> dict[str, float | None]:
    return {k: _num(v) for k, v in zip(OPTIMIZER_KEYS, point, strict=True)}


def _interval_dict(iv: Interval) -> dict[str, float | int | None]:
    return {"mean": _num(iv.mean), "low": _num(iv.low), "high": _num(iv.high), "n": iv.n}


def _selection_dict(s: Selection) -> dict[str, Any]:
    return {
        "setting": s.setting,
        "mode": s.mode,
        "point": _point_dict(s.point),
        "candidates": s.candidates,
        "selection_score": _interval_dict(s.validation),
        "test_accuracy": _interval_dict(s.test),
        "dispersion": _interval_dict(s.dispersion),
    }


def _as_json(report: Report, points: bool = False) -> dict[str, Any]:
    extra = {"points": [_selection_dict(s) for s in report.points]} if points else {}
    return {
        "final_rounds": report.final_rounds,
        "match": report.match,
        "selected_on": report.selected_on,
        "confidence": CI_LEVEL,
        "tests": report.tests,
        "explanation": _explanation(report),
        "selections": [_selection_dict(s) for s in report.selections],
        **extra,
        "rows": [
            {
                "setting": r.setting,
                "match": r.kind,
                "mode_a": r.mode_a,
                "mode_b": r.mode_b,
                "point_a": _point_dict(r.point_a),
                "point_b": _point_dict(r.point_b),
                "seeds": list(r.seeds),
                "measure": r.measure,
                "difference": _interval_dict(r.difference),
                "p": _num(r.p_value),
                "p_holm": _num(r.p_holm),
                "shrink_a": _num(r.shrink_a),
                "shrink_b": _num(r.shrink_b),
            }
            for r in report.rows
        ],
        "notes": report.notes,
    }


def _as_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [f"{side}_{k}" for side in ("a", "b") for k in OPTIMIZER_KEYS]
    writer.writerow(
        [
            "setting",
            "match",
            "mode_a",
            "mode_b",
            *keys,
            "seeds",
            "measure",
            "mean",
            "low",
            "high",
            "n",
            "p",
            "p_holm",
            "shrink_a",
            "shrink_b",
            "final_rounds",
            "selected_on",
        ]
    )
    for r in report.rows:
        d = r.difference
        writer.writerow(
            [
                r.setting,
                r.kind,
                r.mode_a,
                r.mode_b,
                *(repr(v) for v in (*r.point_a, *r.point_b)),
                " ".join(str(s) for s in r.seeds),
                r.measure,
                *(_csv(v) for v in (d.mean, d.low, d.high)),
                d.n,
                *(_csv(v) for v in (r.p_value, r.p_holm, r.shrink_a, r.shrink_b)),
                report.final_rounds,
                report.selected_on,
            ]
        )
    return buffer.getvalue()


def _csv(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "| " + " | ".join("---" for _ in header) + " |", *map(line, rows)]


def _as_markdown(report: Report, points: bool = False) -> str:
    lines = [*(f"- {t}" for t in _explanation(report)), ""]
    lines += ["**Selected points**", ""]
    lines += _md_table(SELECTION_HEADER, [_selection_cells(s) for s in report.selections])
    if points:
        lines += ["", "**Every point** (means over seeds)", ""]
        lines += _md_table(SELECTION_HEADER, [_selection_cells(s) for s in report.points])
    lines += ["", "**Differences**", ""]
    if report.rows:
        lines += _md_table(ROW_HEADER, [_row_cells(r) for r in report.rows])
    else:
        lines.append("No pair of finished runs to compare (pairs need a setting and a seed).")
    if report.notes:
        lines += ["", "**Notes**", "", *(f"- {n}" for n in report.notes)]
    return "\n".join(lines) + "\n"


def _as_table(report: Report, points: bool = False) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # A pipe has no width: 120 columns. Numeric cells never wrap, and every cell folds onto
    # the next line where a narrow terminal leaves no room, instead of losing digits to "…".
    width = shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 120
    console = Console(file=io.StringIO(), highlight=False, width=width, force_terminal=False)

    def print_selections(title: str, selections: list[Selection]) -> None:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for col in SELECTION_HEADER:
            table.add_column(col, overflow="fold", no_wrap=col not in ("setting", "selected"))
        for sel in selections:
            table.add_row(*_selection_cells(sel))
        console.print(table)

    print_selections("selected points", report.selections)
    if points:
        print_selections("every point (means over seeds)", report.points)
    blocks: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in report.rows:
        blocks[(r.setting, r.mode_a, r.mode_b)].append(r)
    for (setting, a, b), rows in blocks.items():
        table = Table(title=f"{setting}: {a} − {b}", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("match", f"{a} at", f"{b} at", "seeds", "measure", *ROW_HEADER[-3:]):
            numeric = col in ("seeds", *ROW_HEADER[-3:])
            table.add_column(
                col, justify="right" if numeric else "left", overflow="fold", no_wrap=numeric
            )
        # One group per pair of points: its match, points and seeds once, then its measures.
        for (kind, pa, pb), group in groupby(rows, key=lambda r: (r.kind, r.point_a, r.point_b)):
            members = list(group)
            first = members[0]
            for n, r in enumerate(members):
                head = [kind, _side(pa, first.shrink_a), _side(pb, first.shrink_b)]
                cells = [*head, str(len(first.seeds))] if n == 0 else ["", "", "", ""]
                table.add_row(
                    *cells,
                    r.measure,
                    str(r.difference),
                    _p(r.p_value),
                    _p(r.p_holm),
                    end_section=n == len(members) - 1,
                )
        console.print(table)
    if not report.rows:
        console.print("No pair of finished runs to compare (pairs need a setting and a seed).")
    for text in [*_explanation(report), *report.notes]:
        console.print(text, overflow="fold")
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def _side(point: Point, shrink: float) -> str:
    text = format_point(point)
    return text if math.isnan(shrink) else f"{text} (shrink {shrink:.3g})"


def compare_command(
    out: Path,
    mode_a: str,
    modes_b: Sequence[str],
    *,
    final_rounds: int = FINAL_ROUNDS,
    match: str = "tuned",
    fmt: str = "table",
    points: bool = False,
) -> int:
    """Print the comparison of `out`/results.db in `fmt`; 1 when there is nothing to compare."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    report = compare(out / "results.db", mode_a, modes_b, final_rounds=final_rounds, match=match)
    sys.stdout.write(render(report, fmt, points))
    return 0 if report.rows else 1
