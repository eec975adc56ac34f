"""What `fedadamw run` shows while it trains: one line per round and a progress bar."""

from __future__ import annotations

import math
import sys

from fedadamw.config import Config
from fedadamw.run.recorder import Progress, RoundReport


class ConsoleProgress(Progress):
    """One line per round and a progress bar, on the terminal the parent shares."""

    def __init__(self, configs: list[Config]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        total = sum(c.num_server_rounds * len(c.arm_list) for c in configs)
        self.task = self.bar.add_task("starting Ray…", total=total)

    def round(self, report: RoundReport) -> None:
        if report.round == 0:
            return
        c = report.mean_pairwise_cosine
        cos = "  n/a" if c is None or math.isnan(c) else f"{c:+.3f}"  # n/a: one client
        loss = "  n/a" if report.train_loss is None else f"{report.train_loss:.3f}"
        rejected = f"  rejected {report.num_rejected}" if report.num_rejected else ""
        self.bar.console.print(
            f"{report.label:>13}  round {report.round:>3}/{report.num_rounds}  train-loss {loss}  "
            f"test-acc {100 * report.test_accuracy:5.1f}%  mean-pair-cos {cos}  "
            f"clients {report.num_clients}{rejected}"
        )
        self.bar.update(
            self.task,
            advance=1,
            description=f"{report.label} round {report.round}/{report.num_rounds}",
        )

    def note(self, text: str) -> None:
        self.bar.console.print(text)

    def skip(self, rounds: int) -> None:
        self.bar.update(self.task, advance=rounds)
