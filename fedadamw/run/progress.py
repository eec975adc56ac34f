"""What `fedadamw run` shows on the console: progress while it trains, a table when it ends.

While training: a line when Ray starts (it takes ~20 s before the first round), a header
line when an arm starts (with "grid point k/N" in a sweep), then one line per round with its
wall time and the ETA of the whole command; a progress bar on a terminal. Lines are never
wrapped by us (a sweep's label goes on the arm's header line, so round lines stay short), so
logs and pipes keep one line per event.

At the end: the closing table, one row per arm, or for a sweep over seeds one row per setting
and arm with the mean ± 95% CI over seeds. Numbers are never truncated or split.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

from fedadamw.config import Config
from fedadamw.results.stats import t_interval
from fedadamw.run.experiment import describe, run_id_for, swept_keys
from fedadamw.run.recorder import Progress, RoundReport
from fedadamw.schema import STORE_FILE
from fedadamw.text import duration

RECENT_ROUNDS = 10  # the ETA assumes the next rounds take as long as the last ones
WIDE = 10_000  # a pipe or a log has no width: let every line and table take what it needs


def console() -> Any:
    """A rich Console on stdout that never wraps or truncates where there is no terminal."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else WIDE)


@dataclass(frozen=True)
class ArmSlot:
    """Where an arm sits in the command: its grid point and its place among the arms."""

    point: int  # 1-based grid point
    points: int
    arm: int  # 1-based arm within the point
    arms: int
    setting: str  # the swept values, '' without a sweep


class ConsoleProgress(Progress):
    """Per-round lines with round time and ETA, arm headers and a progress bar (see module)."""

    def __init__(self, configs: list[Config]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.console = console()
        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        swept = swept_keys(configs)
        self.slots: dict[str, ArmSlot] = {}
        for i, cfg in enumerate(configs, start=1):
            arms = cfg.arm_list
            setting = describe(cfg, "", swept).strip()
            for j, arm in enumerate(arms, start=1):
                slot = ArmSlot(i, len(configs), j, len(arms), setting)
                self.slots[describe(cfg, arm, swept)] = slot
        self.total = sum(c.num_server_rounds * len(c.arm_list) for c in configs)
        self.done = 0
        self.started = monotonic()
        # Gaps between stored rounds, whichever run: with engine = grid the runs of a batch
        # store their rounds together, so the window spans at least one round of every run.
        runs = sum(len(c.arm_list) for c in configs)
        self.recent: deque[float] = deque(maxlen=max(RECENT_ROUNDS, runs))
        self._seen: set[str] = set()  # arms whose header was printed
        self._last: dict[str, float] = {}  # when each arm's previous round was stored
        self._previous: float | None = None  # when any round was last stored
        # engine = vmap or grid starts no Ray: its clients train in this process, ready in seconds.
        self.uses_ray = any(c.engine == "flower" for c in configs)
        self.task = self.bar.add_task(
            "starting Ray…" if self.uses_ray else "starting…", total=self.total
        )
        sizes = ", ".join(map(str, sorted({c.num_clients for c in configs})))
        self.console.print(
            f"starting Ray and {sizes} simulated clients (about 20 s before the first round)…"
            if self.uses_ray
            else f"training {sizes} simulated clients in one process (engine = "
            f"{', '.join(sorted({c.engine for c in configs}))})…",
            soft_wrap=True,
        )
        self._ray_up = False

    def eta(self) -> float:
        """Seconds left for the whole command at the pace of the recent rounds (NaN: unknown)."""
        if not self.recent:
            return math.nan
        return (self.total - self.done) * sum(self.recent) / len(self.recent)

    def round(self, report: RoundReport) -> None:
        now = monotonic()
        if not self._ray_up:
            self._ray_up = True
            if self.uses_ray:
                self.console.print(
                    f"Ray is up after {duration(now - self.started)}", soft_wrap=True
                )
        if report.label not in self._seen:
            self._seen.add(report.label)
            self._header(report)
        last = self._last.get(report.label)
        took = None if last is None else now - last
        self._last[report.label] = now
        gap = None if self._previous is None else now - self._previous
        self._previous = now
        if report.round == 0:
            return  # the initial model's evaluation: the next round's time starts here
        if gap is not None:
            self.recent.append(gap)
        self.done += 1
        c = report.mean_pairwise_cosine
        cos = "  n/a" if c is None or math.isnan(c) else f"{c:+.3f}"  # n/a: one client
        loss = "  n/a" if report.train_loss is None else f"{report.train_loss:.3f}"
        rejected = f"  rejected {report.num_rejected}" if report.num_rejected else ""
        width = len(str(report.num_rounds))
        eta = self.eta()
        self.bar.console.print(
            f"  {report.arm:>9}  round {report.round:>{width}}/{report.num_rounds}  "
            f"train-loss {loss}  test-acc {100 * report.test_accuracy:5.1f}%  "
            f"mean-pair-cos {cos}  clients {report.num_clients}{rejected}  "
            f"{'' if took is None else duration(took) + '/round  '}"
            f"ETA {duration(eta)}",
            soft_wrap=True,
        )
        slot = self.slots.get(report.label)
        where = f"grid point {slot.point}/{slot.points} · " if slot and slot.points > 1 else ""
        self.bar.update(
            self.task,
            advance=1,
            description=f"{where}{report.arm} round {report.round}/{report.num_rounds} · "
            f"ETA {duration(eta)}",
        )

    def _header(self, report: RoundReport) -> None:
        slot = self.slots.get(report.label)
        if slot is None:
            self.bar.console.print(report.label, soft_wrap=True)
            return
        parts = []
        if slot.points > 1:
            parts.append(f"grid point {slot.point}/{slot.points}")
        if slot.setting:
            parts.append(slot.setting)
        parts.append(f"arm {report.arm} ({slot.arm}/{slot.arms})")
        self.bar.console.print(" · ".join(parts), soft_wrap=True, style="bold")

    def note(self, text: str) -> None:
        self.bar.console.print(text, soft_wrap=True)

    def skip(self, rounds: int) -> None:
        self.total -= rounds  # stored already: neither done now nor left to do
        self.bar.update(self.task, advance=rounds)


# -- the closing table -----------------------------------------------------------------------
SUMMARY_COLUMNS = ("final test acc", "mean pairwise cos", "dispersion", "relative drift")
_STATS = ("final_accuracy", "mean_pairwise_cosine", "dispersion", "relative_drift")


@dataclass(frozen=True)
class SummaryRow:
    """One row of the closing table: an arm, or a setting's arm over its seeds."""

    label: str
    cells: tuple[str, ...]  # one per SUMMARY_COLUMNS
    seeds: int
    rounds: str
    status: str


def _mean_ci(values: Sequence[float | None], percent: bool) -> str:
    interval = t_interval(values)
    if math.isnan(interval.mean):
        return "—"
    scale, unit, spec = (100.0, "%", ".1f") if percent else (1.0, "", ".4f")
    text = f"{scale * interval.mean:{spec}}{unit}"
    if interval.n >= 2:
        text += f" ± {scale * (interval.high - interval.mean):{spec}}"
    return text


def summary_rows(configs: Sequence[Config], rows: Sequence[dict[str, Any]]) -> list[SummaryRow]:
    """The closing table's rows: per arm, or per setting and arm when seeds are swept."""
    swept = swept_keys(configs)
    by_seed = "seed" in swept
    shown = [k for k in swept if k != "seed"]
    found = {r["run_id"]: r for r in rows}
    groups: dict[str, list[dict[str, Any]]] = {}
    for cfg in configs:
        for arm in cfg.arm_list:
            row = found.get(run_id_for(cfg, arm))
            if row is not None:
                groups.setdefault(describe(cfg, arm, shown if by_seed else swept), []).append(row)
    out = []
    for label, members in groups.items():
        cells = tuple(
            _mean_ci([m[s] for m in members], percent=s == "final_accuracy") for s in _STATS
        )
        done = sorted({int(m["rounds"]) for m in members})
        statuses = sorted({str(m["status"]) for m in members})
        status = (
            statuses[0]
            if len(statuses) == 1
            else ", ".join(f"{sum(str(m['status']) == s for m in members)} {s}" for s in statuses)
        )
        rounds = str(done[0]) if len(done) == 1 else f"{done[0]}–{done[-1]}"
        out.append(SummaryRow(label, cells, len(members), rounds, status))
    return out


def print_summary(configs: list[Config], out_dir: Path, wall: float) -> None:
    """The closing table of `fedadamw run`, then where the results are."""
    from rich.table import Table

    from fedadamw.results.summaries import arm_summary

    if not (out_dir / STORE_FILE).exists():
        return
    ids = [run_id_for(c, arm) for c in configs for arm in c.arm_list]
    rows = summary_rows(configs, arm_summary(out_dir / STORE_FILE, ids))
    if not rows:
        return
    out = console()
    over_seeds = any(r.seeds > 1 for r in rows)
    table = Table(
        title="update divergence per "
        + (
            "setting (mean ± 95% CI over seeds; statistics: means over rounds)"
            if over_seeds
            else "arm (means over rounds)"
        )
    )
    # Labels may wrap on a narrow terminal; numbers never do, and nothing is cut with "…".
    table.add_column("setting · arm" if over_seeds else "arm", overflow="fold")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, justify="right", no_wrap=True)
    if over_seeds:
        table.add_column("seeds", justify="right", no_wrap=True)
    table.add_column("rounds", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    for r in rows:
        seeds = (str(r.seeds),) if over_seeds else ()
        table.add_row(r.label, *r.cells, *seeds, r.rounds, r.status)
    out.print(table)
    out.print(
        f"results: {out_dir / STORE_FILE}  (config: {out_dir / 'config.json'})", soft_wrap=True
    )
    out.print(f"wall time: {duration(wall)}", soft_wrap=True)
