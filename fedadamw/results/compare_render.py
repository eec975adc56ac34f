"""`fedadamw compare`'s output: a `compare.Report` as a console table, markdown, csv or json.

`fedadamw.results.compare` does the analysis (selection, pairing, intervals, Holm); this module
only lays its numbers out, so every format shows the same rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections import defaultdict
from collections.abc import Collection, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from fedadamw.errors import ConfigError
from fedadamw.results.compare import (
    FINAL_ROUNDS,
    Point,
    Report,
    Row,
    Selection,
    compare,
    format_point,
)
from fedadamw.results.endpoint import (
    ENDPOINT_FILE,
    Endpoint,
    endpoint_from_file,
    parse_endpoint,
    read_endpoint,
)
from fedadamw.results.stats import CI_LEVEL, Interval
from fedadamw.schema import OPTIMIZER_KEYS, STORE_FILE

FORMATS = ("table", "markdown", "csv", "json")


def _endpoint_explanation(report: Report) -> list[str]:
    e = report.endpoint
    assert e is not None
    settings = len({r.setting for r in report.rows if r.role == "primary"})
    family = ", ".join(f"{a} − {b}" for a, b in e.family)
    where = (
        f"declared in {report.source}"
        if report.declared
        else f"NOT the declared endpoint ({report.source})"
    )
    lines = [
        f"Endpoint ({where}): primary {e.primary}, secondary {', '.join(e.secondary) or 'none'}; "
        f"window {e.window.text}: every measure, accuracy included, is read over "
        f"{e.window.describe()}.",
        f"A − B: paired by seed, mean [{100 * CI_LEVEL:g}% Student-t CI]; p: paired t-test; "
        f"p Holm: Holm-adjusted over the {report.family_tests('primary')} tests of the declared "
        f"family ({e.primary} × {family}"
        + (f", in {settings} settings" if settings > 1 else "")
        + f"); secondary rows Holm-adjusted in their own family of "
        f"{report.family_tests('secondary')} tests.",
        f"Rows labelled 'descriptive, by construction' ({', '.join(e.descriptive) or 'none'}, "
        "and comparisons outside the family) are reported without p-values, outside every "
        "family.",
    ]
    if report.power:
        lines.append(POWER_TEXT)
    return lines


POWER_TEXT = (
    "detectable (80%): the smallest |A − B| a two-sided paired t-test at α = 0.05 detects "
    "with 80% power over the row's seeds, at its per-seed SD (exact: scipy's noncentral t)."
)
DESCRIPTIVE = "descriptive, by construction"


def _measure(row: Row) -> str:
    if row.role == "descriptive":
        return f"{row.measure} ({DESCRIPTIVE})"
    return f"{row.measure} (primary)" if row.role == "primary" else row.measure


def _explanation(report: Report) -> list[str]:
    on = (
        "validation accuracy"
        if report.selected_on == "validation"
        else "test accuracy (no validation stored)"
    )
    keys = ", ".join(OPTIMIZER_KEYS)
    selection = (
        f"Selection: each mode's point ({keys}) with the highest mean {on} over seeds; "
        "λ = 0 is never a decay mode's pick (that is the none arm)."
    )
    if report.endpoint is not None:
        shrink = (
            "ηλT: a client's total shrink over the run as stored (Σ over rounds of the "
            "effective shrink per step × local steps; needs track-decay), mean over seeds."
        )
        return [*_endpoint_explanation(report), selection, shrink]
    power = [POWER_TEXT] if report.power else []
    return [
        f"final-rounds = {report.final_rounds}: test and validation accuracy are each run's mean "
        f"over its last {report.final_rounds} rounds; dispersions are means over all trained "
        "rounds (undefined rounds skipped).",
        f"Selection: each mode's point ({keys}) with the highest mean {on} over seeds; "
        "λ = 0 is never a decay mode's pick (that is the none arm).",
        f"A − B: paired by seed, mean [{100 * CI_LEVEL:g}% Student-t CI]; p: paired t-test; "
        f"p Holm: Holm-adjusted over the {report.tests} tests of this table.",
        *power,
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


def _selection_cells(s: Selection, shrink: bool = False) -> list[str]:
    cells = [s.setting, s.mode, format_point(s.point), str(s.candidates)]
    cells += [_acc(s.validation), _acc(s.test), _plain(s.dispersion)]
    return [*cells, _total(s.total_shrink)] if shrink else cells


def _total(interval: Interval) -> str:
    return "—" if interval.n == 0 or math.isnan(interval.mean) else f"{interval.mean:.3g}"


def _plain(interval: Interval) -> str:
    return str(interval).replace("+", "") if interval.n else "—"


def _row_cells(r: Row, power: bool = False) -> list[str]:
    extra = [_detectable(r.detectable)] if power else []
    return [
        r.setting,
        f"{r.mode_a} − {r.mode_b}",
        _kind(r),
        format_point(r.point_a),
        format_point(r.point_b),
        str(len(r.seeds)),
        _measure(r),
        str(r.difference),
        _p(r.p_value),
        _p(r.p_holm),
        *extra,
    ]


def _detectable(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


SELECTION_HEADER = ["setting", "mode", "selected", "of", "score [95% CI]", "test acc [95% CI]"]
SELECTION_HEADER += ["dispersion [95% CI]"]
ROW_HEADER = ["setting", "A − B", "match", "A at", "B at", "seeds", "measure"]
ROW_HEADER += ["A − B [95% CI]", "p", "p Holm"]
SHRINK_HEADER = "ηλT"
POWER_HEADER = "detectable (80%)"


def _selection_header(report: Report) -> list[str]:
    return [*SELECTION_HEADER, SHRINK_HEADER] if report.endpoint else SELECTION_HEADER


def _row_header(report: Report) -> list[str]:
    return [*ROW_HEADER, POWER_HEADER] if report.power else ROW_HEADER


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
        "total_shrink": _interval_dict(s.total_shrink),
    }


def _as_json(report: Report, points: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = (
        {"points": [_selection_dict(s) for s in report.points]} if points else {}
    )
    if report.endpoint is not None:
        extra["endpoint"] = {
            **report.endpoint.to_dict(),
            "declared": report.declared,
            "source": report.source,
            "unreached": report.unreached,
        }
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
                "role": r.role or None,
                "detectable_80": _num(r.detectable),
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
            *(["role", "detectable_80"] if report.endpoint or report.power else []),
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
                *([r.role, _csv(r.detectable)] if report.endpoint or report.power else []),
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
    shrink = report.endpoint is not None
    header = _selection_header(report)
    lines += _md_table(header, [_selection_cells(s, shrink) for s in report.selections])
    if points:
        lines += ["", "**Every point** (means over seeds)", ""]
        lines += _md_table(header, [_selection_cells(s, shrink) for s in report.points])
    lines += ["", "**Differences**", ""]
    if report.rows:
        lines += _md_table(_row_header(report), [_row_cells(r, report.power) for r in report.rows])
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
        for col in _selection_header(report):
            table.add_column(col, overflow="fold", no_wrap=col not in ("setting", "selected"))
        for sel in selections:
            table.add_row(*_selection_cells(sel, report.endpoint is not None))
        console.print(table)

    print_selections("selected points", report.selections)
    if points:
        print_selections("every point (means over seeds)", report.points)
    blocks: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in report.rows:
        blocks[(r.setting, r.mode_a, r.mode_b)].append(r)
    for (setting, a, b), rows in blocks.items():
        table = Table(title=f"{setting}: {a} − {b}", box=box.SIMPLE_HEAD, pad_edge=False)
        tail = _row_header(report)[len(ROW_HEADER) - 3 :]
        for col in ("match", f"{a} at", f"{b} at", "seeds", "measure", *tail):
            numeric = col in ("seeds", *tail)
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
                    *_row_cells(r, report.power)[6:],
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


def resolve_endpoint(
    out: Path,
    *,
    endpoint_file: str | None = None,
    primary: str | None = None,
    window: str | None = None,
    family: str | None = None,
    modes: tuple[str, Sequence[str]] | None = None,
) -> tuple[Endpoint | None, bool, str]:
    """The endpoint compare tests: the one kept in `out` (or read from `endpoint_file`),
    with command-line overrides; whether it is still the declared one; where it came from."""
    declared: Endpoint | None
    if endpoint_file is not None:
        declared, source = endpoint_from_file(endpoint_file), f"{endpoint_file} [endpoint]"
    else:
        declared, source = read_endpoint(out), f"{out.name}/{ENDPOINT_FILE}"  # portable in findings
    changes: dict[str, Any] = {}
    if primary is not None:
        changes["primary"] = primary
    if window is not None:
        changes["window"] = window
    if family is not None:
        changes["family"] = [f.strip() for f in family.split(",") if f.strip()]
    elif modes is not None and declared is not None:  # --a/--b name the comparisons
        changes["family"] = [f"{modes[0]}-{b}" for b in modes[1] if b != modes[0]]
    if not changes:
        return declared, True, source
    base = (declared or Endpoint()).to_dict()
    if primary is not None:  # the primary moves out of secondary if it was there
        base["secondary"] = [m for m in base["secondary"] if m != primary]
        base["descriptive"] = [m for m in base["descriptive"] if m != primary]
    flags = ", ".join(f"--{k}" for k in changes)
    what = f"{source} overridden by {flags}" if declared else f"none declared; {flags} given"
    return parse_endpoint({**base, **changes}, "compare " + flags), False, what


def compare_command(
    out: Path,
    mode_a: str | None,
    modes_b: Sequence[str] | None,
    *,
    final_rounds: int | None = None,
    match: str = "tuned",
    fmt: str = "table",
    points: bool = False,
    select_seeds: Collection[int] | None = None,
    report_seeds: Collection[int] | None = None,
    endpoint_file: str | None = None,
    primary: str | None = None,
    window: str | None = None,
    family: str | None = None,
    power: bool = False,
) -> int:
    """Print the comparison of `out`/results.db in `fmt`; 1 when there is nothing to compare.

    The endpoint kept in `out` (see fedadamw.results.endpoint) decides the measures, window
    and Holm family; `primary`/`window`/`family` (or --a/--b) override it for exploring.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    modes = None if mode_a is None and modes_b is None else (mode_a or "coupled", modes_b or [])
    endpoint, declared, source = resolve_endpoint(
        out,
        endpoint_file=endpoint_file,
        primary=primary,
        window=window,
        family=family,
        modes=None if modes is None else (modes[0], modes[1] or ["decoupled"]),
    )
    if endpoint is not None and final_rounds is not None:
        raise ConfigError(
            f"--final-rounds: the endpoint's window ({endpoint.window.text}) applies to every "
            "measure; pass --window last-K to explore another"
        )
    report = compare(
        out / STORE_FILE,
        mode_a or "coupled",
        modes_b or ["decoupled"],
        final_rounds=FINAL_ROUNDS if final_rounds is None else final_rounds,
        match=match,
        select_seeds=select_seeds,
        report_seeds=report_seeds,
        endpoint=endpoint,
    )
    report.declared, report.source, report.power = declared, source, power or bool(endpoint)
    if endpoint is None:
        report.notes.append(
            f"no endpoint declared ({ENDPOINT_FILE} absent: an older store or an experiment "
            "file without [endpoint]): compare's defaults apply"
        )
    elif not declared:
        report.notes.append(f"exploring: not the declared endpoint ({source})")
    sys.stdout.write(render(report, fmt, points))
    return 0 if report.rows else 1
