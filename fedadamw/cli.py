"""`fedadamw` command line: run experiments through Flower's simulation engine (Ray)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedadamw.config import Config, ConfigError
from fedadamw.experiment import Experiment, describe, expand, swept_keys
from fedadamw.experiment import load as load_experiment
from fedadamw.store import ResultStore, StoreError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"fedadamw: error: {message}\n")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE`, read by `resolve_configs`."""
    parser.add_argument("--config", metavar="FILE.toml", help="experiment file of config overrides")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one config key (repeatable), e.g. --set weight-decay=0.05",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedadamw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train every arm of an experiment and measure divergence")
    _add_config_arguments(run)
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/<experiment>)")
    run.add_argument(
        "--client-cpus",
        type=float,
        default=1.0,
        help="CPUs per simulated client (default 1: one single-thread client per core)",
    )
    run.add_argument(
        "--client-gpus",
        type=float,
        default=None,
        help="GPU fraction per client (default: 0.25 when CUDA is available, else 0)",
    )
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")

    cmp = sub.add_parser(
        "compare", help="paired differences between two modes across seeds, with 95% CIs"
    )
    cmp.add_argument("out", metavar="OUT", help="a run's output folder (holds results.db)")
    cmp.add_argument("--a", default="coupled", metavar="MODE", help="first mode (default coupled)")
    cmp.add_argument(
        "--b", default="decoupled", metavar="MODE", help="second mode (default decoupled)"
    )
    parts = sub.add_parser(
        "partitions", help="print the per-client label histogram of a split and plot it"
    )
    _add_config_arguments(parts)
    parts.add_argument(
        "--plot", metavar="FILE", help="plot file (default: runs/<experiment>/partitions.png)"
    )
    dash = sub.add_parser("dashboard", help="serve the update-divergence dashboard of a store")
    dash.add_argument("out", metavar="OUT", help="a run's output folder (or its results.db)")
    dash.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (0: any free)")
    rep = sub.add_parser("report", help="write one self-contained HTML report (readable offline)")
    rep.add_argument("out", metavar="OUT", help="a run's output folder")
    rep.add_argument("--html", metavar="FILE", required=True, help="the HTML file to write")
    fig = sub.add_parser("figures", help="write PNG and PDF figures for papers")
    fig.add_argument("out", metavar="OUT", help="a run's output folder")
    fig.add_argument("--dir", metavar="D", required=True, dest="directory", help="output folder")
    fig.add_argument(
        "--force", action="store_true", help="overwrite figure files that exist in --dir"
    )
    return parser


def resolve_configs(config_file: str | None, overrides: Sequence[str]) -> list[Config]:
    """Defaults ← the experiment file ← each `--set` ← the file's [sweep] grid, validated."""
    experiment = load_experiment(config_file) if config_file else Experiment()
    return expand(experiment, overrides)


def resolve_config(config_file: str | None, overrides: Sequence[str]) -> Config:
    """The single config of an experiment without a sweep."""
    configs = resolve_configs(config_file, overrides)
    if len(configs) != 1:
        raise ConfigError(f"{config_file}: has a [sweep] of {len(configs)} points; expected one")
    return configs[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fedadamw` console script."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "partitions":
            from fedadamw.partitions import partitions_command

            cfg = resolve_config(args.config, args.overrides)
            return partitions_command(cfg, Path(args.plot) if args.plot else None)
        if args.command == "dashboard":
            from fedadamw.report import dashboard_command

            return dashboard_command(Path(args.out), args.port)
        if args.command == "report":
            from fedadamw.report import report_command

            return report_command(Path(args.out), Path(args.html))
        if args.command == "figures":
            from fedadamw.report import figures_command

            return figures_command(Path(args.out), Path(args.directory), args.force)
        if args.command == "compare":
            from fedadamw.compare import compare_command

            return compare_command(_existing_store(args.out), args.a, args.b)
    except (ConfigError, StoreError) as exc:
        print(f"fedadamw: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("fedadamw: interrupted; rounds already written stay in the store", file=sys.stderr)
        return 130
    return EXIT_BAD_INPUT


def _existing_store(out: str) -> Path:
    path = Path(out).expanduser().resolve()
    if not (path / "results.db").is_file():
        raise ConfigError(f"OUT {out!r}: no results.db there; pass the --out folder of a run")
    return path


def _run(args: argparse.Namespace) -> int:
    configs = resolve_configs(args.config, args.overrides)
    if args.client_cpus <= 0:
        raise ConfigError(f"--client-cpus: {args.client_cpus!r} is not allowed; expected > 0")
    if args.client_gpus is not None and args.client_gpus < 0:
        raise ConfigError(f"--client-gpus: {args.client_gpus!r} is not allowed; expected >= 0")
    out_dir = Path(args.out or Path("runs") / configs[0].experiment).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r}: is a file; expected a folder for results.db")
    configs = [c.replace(out_dir=str(out_dir)) for c in configs]

    # Heavy imports only after the config is known to be good: bad input fails in ~0.1 s.
    import torch

    from fedadamw.data import prepare

    # Generate the data and check every split here, once, before Ray starts: workers then read
    # the disk cache, and a split that cannot be made is a one-line error, not a dead worker.
    for cfg in configs:
        prepare(cfg)  # cached per data spec: grid points that share a split pay once

    ResultStore(out_dir / "results.db").close()  # a store we cannot write fails before Ray starts

    gpus = args.client_gpus
    if gpus is None:
        gpus = 0.25 if torch.cuda.is_available() else 0.0
    return _simulate(configs, out_dir, args.client_cpus, gpus, args.verbose)


def _simulate(configs: list[Config], out_dir: Path, cpus: float, gpus: float, verbose: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedadamw.recorder import RoundReport

    # A pipe or CI log has no width: give the closing table room for its columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    from flwr.simulation import run_simulation
    from flwr.supercore.logger import update_console_handler

    if not verbose:
        # Our own per-round lines replace Flower's INFO log; its errors still show.
        update_console_handler(level=logging.ERROR)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # Ray warns that it will stop overriding CUDA_VISIBLE_DEVICES for CPU-only actors.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    from clients.app import app as client_app
    from server.app import make_app, run_id_for

    cfg = configs[0]
    swept = swept_keys(configs)
    total = sum(c.num_server_rounds * len(c.arm_list) for c in configs)
    console.print(
        f"[bold]fedadamw[/] {cfg.experiment}: arms {', '.join(cfg.arm_list)} · "
        f"{cfg.num_clients} clients ({cfg.partitioner}"
        + (f", α={cfg.dirichlet_alpha:g}" if cfg.partitioner == "dirichlet" else "")
        + f") · {cfg.num_server_rounds} rounds · λ={cfg.weight_decay:g} · lr={cfg.learning_rate:g}"
        + (f" · sweep of {len(configs)} points over {', '.join(swept)}" if swept else "")
    )
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting Ray…", total=total)

        def on_round(r: RoundReport) -> None:
            if r.round == 0:
                return
            c = r.mean_pairwise_cosine
            cos = "  n/a" if c is None or math.isnan(c) else f"{c:+.3f}"  # n/a: one client
            loss = "  n/a" if r.train_loss is None else f"{r.train_loss:.3f}"
            rejected = f"  rejected {r.num_rejected}" if r.num_rejected else ""
            bar.console.print(
                f"{r.label:>13}  round {r.round:>3}/{r.num_rounds}  train-loss {loss}  "
                f"test-acc {100 * r.test_accuracy:5.1f}%  mean-pair-cos {cos}  "
                f"clients {r.num_clients}{rejected}"
            )
            bar.update(task, advance=1, description=f"{r.label} round {r.round}/{r.num_rounds}")

        # One Ray start per federation size: grid points that share it share the SuperNodes.
        for size in dict.fromkeys(c.num_clients for c in configs):
            group = [c for c in configs if c.num_clients == size]
            run_simulation(
                server_app=make_app(group, out_dir, on_round),
                client_app=client_app,
                num_supernodes=size,
                backend_config={
                    "client_resources": {"num_cpus": cpus, "num_gpus": gpus},
                    # Client failures come back as error replies (recorded rejections), so the
                    # actors' own logs stay out of the terminal unless asked for.
                    "init_args": {
                        "logging_level": "INFO" if verbose else "WARNING",
                        "log_to_driver": verbose,
                    },
                },
                verbose_logging=verbose,
            )
    wall = time.perf_counter() - started
    labels = {run_id_for(c, arm): describe(c, arm, swept) for c in configs for arm in c.arm_list}
    _print_summary(console, out_dir, labels, wall)
    return 0


def _print_summary(console: Any, out_dir: Path, labels: dict[str, str], wall: float) -> None:
    from rich.table import Table

    from fedadamw.store import arm_summary

    rows = arm_summary(out_dir / "results.db", list(labels))
    table = Table(title="update divergence per arm (means over rounds)")
    for col in (
        "arm",
        "final test acc",
        "mean pairwise cos",
        "dispersion",
        "relative drift",
        "rounds",
        "status",
    ):
        table.add_column(col, justify="left" if col in ("arm", "status") else "right")

    def fmt(v: float | None, spec: str = ".4f") -> str:
        return "—" if v is None else format(v, spec)

    for r in rows:
        table.add_row(
            labels[r["run_id"]],
            "—" if r["final_accuracy"] is None else f"{100 * r['final_accuracy']:.1f}%",
            fmt(r["mean_pairwise_cosine"]),
            fmt(r["dispersion"]),
            fmt(r["relative_drift"]),
            str(r["rounds"]),
            r["status"],
        )
    console.print(table)
    console.print(f"results: {out_dir / 'results.db'}  (config: {out_dir / 'config.json'})")
    console.print(f"wall time: {wall:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
