"""`fedadamw` command line: run experiments through Flower's simulation engine (Ray)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fedadamw.config import Config
from fedadamw.errors import EXIT_BAD_INPUT, ConfigError, print_error, survive_closed_stdout
from fedadamw.fileio import atomic_write_text
from fedadamw.results.endpoint import ENDPOINT_FILE, endpoint_text, read_endpoint
from fedadamw.results.writer import ResultStore, StoreError
from fedadamw.run.experiment import Experiment, expand, run_id_for, swept_keys
from fedadamw.run.experiment import load as load_experiment
from fedadamw.schema import SPEC_FILE, STORE_FILE

if TYPE_CHECKING:
    from fedadamw.launch.supervisor import Supervisor


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        print_error(message)
        self.exit(EXIT_BAD_INPUT)


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
    run.set_defaults(func=_run)
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
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the simulation process: the vmap engine's training and the "
        "server's evaluation and measurement (default 1, one core, like each Ray client)",
    )
    run.add_argument(
        "--max-batch-runs",
        type=int,
        default=0,
        metavar="N",
        help="engine = grid: at most N runs trained together (default 0: as many as the "
        "memory budget allows, said in the console)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="run on an existing Ray cluster (default: $RAY_ADDRESS; unset: a private local one)",
    )
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    run.add_argument(
        "--restart",
        action="store_true",
        help="start every arm over (delete its rows) instead of resuming or skipping it",
    )
    run.add_argument(
        "--force", action="store_true", help="write into an --out folder that holds other files"
    )
    run.add_argument(
        "--log",
        metavar="TRACKER",
        action="append",
        default=[],
        help="also log every arm to tensorboard and/or mlflow (files in --out; repeatable or "
        "comma-separated; needs pip install 'fedadamw[trackers]')",
    )
    run.add_argument(
        "--max-restarts",
        type=int,
        default=2,
        help="restarts of Ray after a worker died, each resuming from the last round (default 2)",
    )

    cmp = sub.add_parser(
        "compare",
        help="tuned-vs-tuned differences between modes across seeds: 95%% CIs, Holm p-values",
    )
    cmp.set_defaults(func=_compare)
    cmp.add_argument("out", metavar="OUT", help="a run's output folder (holds results.db)")
    cmp.add_argument(
        "--a", default=None, metavar="MODE", help="mode A (default coupled, or the endpoint's)"
    )
    cmp.add_argument(
        "--b",
        default=None,
        metavar="MODE[,MODE...]",
        help="mode(s) B, comma-separated: one A − B block each (default decoupled; with a "
        "declared endpoint its family)",
    )
    cmp.add_argument(
        "--match",
        default="tuned",
        choices=["tuned", "nominal", "shrink"],
        help="pair each mode's tuned point (default), equal optimizer points, or points of "
        "matched effective shrink",
    )
    cmp.add_argument(
        "--final-rounds",
        type=int,
        default=None,
        metavar="K",
        help="a run's final accuracy is its mean over the last K rounds (default 5; without "
        "an endpoint only)",
    )
    cmp.add_argument(
        "--endpoint",
        metavar="FILE.toml",
        help="read the [endpoint] of this experiment file (stores run before it was declared)",
    )
    cmp.add_argument(
        "--primary", metavar="MEASURE", help="explore another primary (not the declared endpoint)"
    )
    cmp.add_argument(
        "--window",
        metavar="WINDOW",
        help="explore another window: last-20%%, last-N, all, matched-loss:0.35",
    )
    cmp.add_argument(
        "--family",
        metavar="A-B[,A-B...]",
        help="explore another Holm family, e.g. coupled-none,decoupled-none",
    )
    cmp.add_argument(
        "--power",
        action="store_true",
        help="add each row's smallest difference detectable at 80%% power (always with an "
        "endpoint)",
    )
    cmp.add_argument(
        "--format",
        default="table",
        choices=["table", "markdown", "csv", "json"],
        dest="fmt",
        help="table (default), markdown (docs/findings), csv or json (scripts, papers)",
    )
    cmp.add_argument(
        "--points",
        action="store_true",
        help="also list every point's scores (the cells of an η × λ heatmap; not in csv)",
    )
    cmp.add_argument(
        "--select-seeds",
        metavar="SEEDS",
        help="pick each mode's tuned point on these seeds only, e.g. 0-4 (default: all)",
    )
    cmp.add_argument(
        "--report-seeds",
        metavar="SEEDS",
        help="score the A − B rows on these seeds only, e.g. 5-9; disjoint from --select-seeds",
    )
    parts = sub.add_parser(
        "partitions", help="print the per-client label histogram of a split and plot it"
    )
    parts.set_defaults(func=_partitions)
    _add_config_arguments(parts)
    parts.add_argument(
        "--plot", metavar="FILE", help="plot file (default: runs/<experiment>/partitions.png)"
    )
    dash = sub.add_parser(
        "dashboard", help="serve the update-divergence dashboard of one or more stores"
    )
    dash.set_defaults(func=_dashboard)
    dash.add_argument(
        "out",
        metavar="OUT",
        nargs="+",
        help="output folders of runs (or their results.db), overlaid; one may not exist yet",
    )
    dash.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (0: any free)")
    rep = sub.add_parser("report", help="write one self-contained HTML report (readable offline)")
    rep.set_defaults(func=_report)
    rep.add_argument("out", metavar="OUT", nargs="+", help="output folders of runs, overlaid")
    rep.add_argument("--html", metavar="FILE", required=True, help="the HTML file to write")
    fig = sub.add_parser("figures", help="write PNG and PDF figures for papers")
    fig.set_defaults(func=_figures)
    fig.add_argument("out", metavar="OUT", nargs="+", help="output folders of runs, overlaid")
    fig.add_argument("--dir", metavar="D", required=True, dest="directory", help="output folder")
    fig.add_argument(
        "--force", action="store_true", help="overwrite figure files that exist in --dir"
    )
    exp = sub.add_parser(
        "export",
        help="write every table of a store as tidy CSV or Parquet (config keys as columns)",
    )
    exp.set_defaults(func=_export)
    exp.add_argument("out", metavar="OUT", help="a run's output folder")
    exp.add_argument(
        "--format",
        choices=("csv", "parquet", "tensorboard", "mlflow"),
        default="csv",
        dest="fmt",
        help="tables as csv (default) or parquet; or each arm as tensorboard / mlflow runs",
    )
    exp.add_argument(
        "--dir",
        metavar="D",
        default=None,
        dest="directory",
        help="output folder (default: OUT/export, OUT/tensorboard or OUT/mlflow)",
    )
    exp.add_argument("--force", action="store_true", help="overwrite files that exist in --dir")
    _add_probe_parser(sub)
    return parser


def _add_probe_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    probe = sub.add_parser(
        "probe",
        help="one-round counterfactual: re-train each kept checkpoint's next-round clients on "
        "the same batches under a grid of (mode, η, λ)",
    )
    probe.set_defaults(func=_probe)
    probe.add_argument("out", metavar="DIR", help="a run's output folder (holds results.db)")
    probe.add_argument(
        "--rounds",
        metavar="R,R...",
        help="checkpoint rounds r (clients of round r + 1); default: every kept r < the run's "
        "num-server-rounds",
    )
    probe.add_argument(
        "--modes", metavar="MODE,...", help="decay modes (default all five client modes)"
    )
    probe.add_argument(
        "--weight-decay",
        metavar="L,L...",
        help="λ values (default 0 and a half-decade grid 1e-5, 3e-5, ..., 1)",
    )
    probe.add_argument(
        "--learning-rate", metavar="ETA,...", help="base learning rates (default: each run's own)"
    )
    probe.add_argument(
        "--where",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="select runs by arm, experiment or a config key (repeatable), e.g. --where arm=none",
    )
    probe.add_argument("--seeds", metavar="SEEDS", help="select runs by seed, e.g. 0-4")
    probe.add_argument(
        "--config", metavar="FILE.toml", help="an experiment file whose [probe] table sets these"
    )
    probe.add_argument(
        "--engine",
        default="vmap",
        choices=["vmap", "flower"],
        help="vmap: a checkpoint's settings of one mode as one stacked computation (default); "
        "flower: train_local per client, as the Flower ClientApp",
    )
    probe.add_argument(
        "--format", default="table", choices=["table", "markdown", "csv"], dest="fmt"
    )
    probe.add_argument(
        "--keep-updates",
        action="store_true",
        help="also store every client's update and decay part (table probe_updates)",
    )


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
    command: Callable[[argparse.Namespace], int] = args.func  # set_defaults of each subparser
    survive_closed_stdout()  # `fedadamw run … | head` goes on; what head did not read is dropped
    try:
        return command(args)
    except (ConfigError, StoreError) as exc:
        return print_error(exc)
    except KeyboardInterrupt:
        print("fedadamw: interrupted; rounds already written stay in the store", file=sys.stderr)
        return 130


def _partitions(args: argparse.Namespace) -> int:
    from fedadamw.data.labels import partitions_command

    cfg = resolve_config(args.config, args.overrides)
    return partitions_command(cfg, Path(args.plot) if args.plot else None)


def _dashboard(args: argparse.Namespace) -> int:
    from fedadamw.viz.commands import dashboard_command

    return dashboard_command([Path(o) for o in args.out], args.port)


def _report(args: argparse.Namespace) -> int:
    from fedadamw.viz.commands import report_command

    return report_command([Path(o) for o in args.out], Path(args.html))


def _figures(args: argparse.Namespace) -> int:
    from fedadamw.viz.commands import figures_command

    return figures_command([Path(o) for o in args.out], Path(args.directory), args.force)


def _export(args: argparse.Namespace) -> int:
    directory = None if args.directory is None else Path(args.directory)
    if args.fmt in ("tensorboard", "mlflow"):
        from fedadamw.results import trackers

        return trackers.export_command(Path(args.out), args.fmt, directory)
    from fedadamw.results.export import export_command

    return export_command(Path(args.out), args.fmt, directory, args.force)


def _compare(args: argparse.Namespace) -> int:
    from fedadamw.results.compare import parse_seeds
    from fedadamw.results.compare_render import compare_command

    return compare_command(
        _existing_store(args.out),
        args.a,
        None if args.b is None else [b.strip() for b in args.b.split(",") if b.strip()],
        final_rounds=args.final_rounds,
        match=args.match,
        fmt=args.fmt,
        points=args.points,
        select_seeds=None
        if args.select_seeds is None
        else parse_seeds(args.select_seeds, "--select-seeds"),
        report_seeds=None
        if args.report_seeds is None
        else parse_seeds(args.report_seeds, "--report-seeds"),
        endpoint_file=args.endpoint,
        primary=args.primary,
        window=args.window,
        family=args.family,
        power=args.power,
    )


def _probe(args: argparse.Namespace) -> int:
    from fedadamw.run.probe import make_options, probe_command, read_probe_table

    table = read_probe_table(args.config) if args.config else None
    given = {
        "rounds": args.rounds,
        "modes": args.modes,
        "weight-decay": args.weight_decay,
        "learning-rate": args.learning_rate,
        "where": args.where or None,
        "seeds": args.seeds,
    }
    opts = make_options(
        given, table, engine=args.engine, fmt=args.fmt, keep_updates=args.keep_updates
    )
    return probe_command(_existing_store(args.out), opts)


def _existing_store(out: str) -> Path:
    path = Path(out).expanduser().resolve()
    if not (path / STORE_FILE).is_file():
        raise ConfigError(f"OUT {out!r}: no {STORE_FILE} there; pass the --out folder of a run")
    return path


# What `fedadamw` writes into an output folder; anything else there is someone else's file.
OWN_FILES = frozenset(
    {
        STORE_FILE,
        f"{STORE_FILE}-wal",
        f"{STORE_FILE}-shm",
        f"{STORE_FILE}-journal",
        "config.json",
        "failures.log",
        "partitions.png",
        ".fedadamw.results.lock",
        SPEC_FILE,
        ENDPOINT_FILE,
        "export",  # fedadamw export's default --dir
        "tensorboard",  # --log tensorboard
        "mlflow",  # --log mlflow
    }
)


def _finite(name: str, value: float, low: float, inclusive: bool) -> float:
    ok = math.isfinite(value) and (value >= low if inclusive else value > low)
    if not ok:
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise ConfigError(f"{name}: {value!r} is not allowed; expected a finite number {bound}")
    return value


def prepare_out_dir(out: str | None, experiment: str, force: bool) -> Path:
    """The output folder, created and checked: writable, a folder, not someone else's files."""
    given = str(out or Path("runs") / experiment)
    try:
        out_dir = Path(given).expanduser().resolve()
        _check_name_lengths(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(
                f"--out {str(out_dir)!r}: is a file; expected a folder for results.db"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a loop of links
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--out {given[:80]!r}: cannot be created ({why})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out_dir)!r}: is not writable; choose another folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OWN_FILES)
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise ConfigError(
            f"--out {str(out_dir)!r}: holds files fedadamw did not write ({shown}); "
            "choose a new or empty folder, or pass --force to write there anyway"
        )
    return out_dir


def _check_name_lengths(path: Path) -> None:
    """ConfigError for a folder name longer than the file system takes (ENAMETOOLONG)."""
    existing = next((p for p in (path, *path.parents) if os.path.isdir(p)), Path("/"))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    # The longest file written inside (results.db-journal) must fit too.
    longest = len(os.fsencode(str(path / "results.db-journal")))
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(
                f"--out {part[:40]!r}…: a folder name of {len(os.fsencode(part))} bytes; "
                f"this file system takes at most {name_max}"
            )
    if longest > path_max:
        raise ConfigError(
            f"--out: a path of {longest} bytes; this file system takes at most {path_max}"
        )


# What a refused run may have made in its --out folder before the refusal, and removes again.
_REFUSAL_LEFTOVERS = (".fedadamw.results.lock", SPEC_FILE, "config.json", ENDPOINT_FILE)


def _keep_endpoint(config_file: str | None, out_dir: Path) -> None:
    """Keep the experiment's [endpoint] in the folder, declared before its runs.

    A folder that already holds a different one refuses the run: the endpoint is fixed before
    the results are seen (compare's --primary/--window/--family explore others).
    """
    endpoint = load_experiment(config_file).endpoint if config_file else None
    if endpoint is None:
        return
    path = out_dir / ENDPOINT_FILE
    text = endpoint_text(endpoint)
    if path.is_file():
        if read_endpoint(out_dir) != endpoint:
            raise ConfigError(
                f"[endpoint]: differs from the one {path} declared before these runs; restore "
                "it, or explore with compare --primary/--window/--family"
            )
        return
    atomic_write_text(path, text)


def _clean_after_refusal(out_dir: Path, before: frozenset[str] | None) -> None:
    """Remove what a refused run made (`before`: the folder's names before; None: it was new).

    A run that stored results (a new results.db) keeps everything but an empty failures.log.
    """
    old = before or frozenset()
    log = out_dir / "failures.log"
    with contextlib.suppress(OSError):
        if "failures.log" not in old and log.is_file() and log.stat().st_size == 0:
            log.unlink()
        if "results.db" in old or not (out_dir / "results.db").exists():
            for name in _REFUSAL_LEFTOVERS:
                if name not in old:
                    (out_dir / name).unlink(missing_ok=True)
        if before is None and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _check_resources(cpus: float, gpus: float | None, ray_address: str | None) -> None:
    """ConfigError when one client asks for more CPUs or GPUs than this machine has.

    A Ray cluster (`--ray-address`) is checked by the simulation against the cluster's totals.
    """
    if ray_address is not None:
        return
    have = os.cpu_count() or 1
    if cpus > have:
        raise ConfigError(
            f"--client-cpus: {cpus:g} is not allowed; this machine has {have} CPUs "
            "(one client needs at most that many)"
        )
    if gpus:
        import torch

        count = torch.cuda.device_count()
        if gpus > count:
            raise ConfigError(
                f"--client-gpus: {gpus:g} is not allowed; this machine has {count} CUDA "
                "devices" + (" (pass --client-gpus 0)" if count == 0 else "")
            )


def _run(args: argparse.Namespace) -> int:
    configs = resolve_configs(args.config, args.overrides)
    from fedadamw.results.trackers import parse_trackers

    trackers = parse_trackers(args.log)  # a tracker that is not installed fails before the run
    cpus = _finite("--client-cpus", args.client_cpus, 0.0, inclusive=False)
    gpus = args.client_gpus
    if gpus is not None:
        gpus = _finite("--client-gpus", gpus, 0.0, inclusive=True)
    if args.max_restarts < 0:
        raise ConfigError(f"--max-restarts: {args.max_restarts} is not allowed; expected >= 0")
    if args.threads < 1:
        raise ConfigError(f"--threads: {args.threads} is not allowed; expected >= 1")
    if args.max_batch_runs < 0:
        raise ConfigError(
            f"--max-batch-runs: {args.max_batch_runs} is not allowed; expected >= 0 (0: automatic)"
        )
    if any(c.engine == "flower" for c in configs):
        _check_resources(cpus, gpus, args.ray_address)
    given = Path(args.out or Path("runs") / configs[0].experiment).expanduser()
    before: frozenset[str] | None = None  # the folder's names before the run (None: no folder)
    with contextlib.suppress(OSError, ValueError):
        before = frozenset(p.name for p in given.iterdir()) if given.is_dir() else None
    out_dir = prepare_out_dir(args.out, configs[0].experiment, args.force)
    try:
        _keep_endpoint(args.config, out_dir)
        code, supervisor = _supervise(args, configs, out_dir, cpus, gpus)
    except (ConfigError, StoreError):
        _clean_after_refusal(out_dir, before)
        raise
    if code == EXIT_BAD_INPUT:
        _clean_after_refusal(out_dir, before)
        return code
    configs = [c.replace(out_dir=str(out_dir)) for c in configs]
    if trackers:
        _write_trackers(configs, out_dir, trackers)
    if supervisor.signal is not None:
        print(
            "fedadamw: interrupted; finished rounds are in the store — run the same command "
            "again to resume",
            file=sys.stderr,
        )
    return code


def _supervise(
    args: argparse.Namespace,
    configs: list[Config],
    out_dir: Path,
    cpus: float,
    gpus: float | None,
) -> tuple[int, Supervisor]:
    """Run the simulation under the folder's writer lock; its exit code and supervisor."""
    configs = [c.replace(out_dir=str(out_dir)) for c in configs]
    from fedadamw.launch.spec import Spec
    from fedadamw.launch.supervisor import Supervisor, make_ray_dir, sweep_stale_ray_dirs
    from fedadamw.results.lock import FolderInUseError, WriterLock

    try:
        lock = WriterLock(out_dir)
    except FolderInUseError as exc:
        raise ConfigError(str(exc)) from None
    with lock:
        # A store we cannot write fails here, before any process starts; runs that a dead
        # process left 'running' are marked interrupted (we hold the lock: none is running).
        # A new store is made by the simulation once the data checks passed.
        _mark_interrupted(out_dir)
        sweep_stale_ray_dirs()
        address = args.ray_address
        # A cluster of our own only where Flower's engine runs and no cluster was named.
        own_ray = address is None and any(c.engine == "flower" for c in configs)
        ray_dir = make_ray_dir() if own_ray else None
        spec = Spec(
            configs=[c.to_dict() for c in configs],
            out_dir=str(out_dir),
            client_cpus=cpus,
            client_gpus=gpus,
            verbose=args.verbose,
            restart=args.restart,
            ray_temp_dir=None if ray_dir is None else str(ray_dir),
            parent_pid=os.getpid(),
            ray_address=address,
            threads=args.threads,
            max_batch_runs=args.max_batch_runs,
        )
        _print_header(configs)
        started = time.perf_counter()
        supervisor = Supervisor(spec, lock.fd, max_restarts=args.max_restarts)
        code = supervisor.run(out_dir / SPEC_FILE)
        _mark_interrupted(out_dir)  # whatever the child left running, it is not running now
        (out_dir / SPEC_FILE).unlink(missing_ok=True)
    if code != EXIT_BAD_INPUT or (out_dir / STORE_FILE).exists():
        _print_summary(configs, out_dir, time.perf_counter() - started)
    return code, supervisor


def _write_trackers(configs: list[Config], out_dir: Path, trackers: Sequence[str]) -> None:
    """TensorBoard / MLflow files of this command's arms, written from the store."""
    from fedadamw.results.trackers import write_trackers

    if not (out_dir / STORE_FILE).exists():
        return
    run_ids = [run_id_for(c, arm) for c in configs for arm in c.arm_list]
    try:
        for line in write_trackers(out_dir, trackers, run_ids):
            print(line, flush=True)
    except Exception as exc:  # the run's results are safe in the store whatever a tracker does
        print_error(f"--log: writing {', '.join(trackers)} failed ({type(exc).__name__}: {exc})")


def _mark_interrupted(out_dir: Path) -> None:
    if (out_dir / STORE_FILE).exists():
        with ResultStore(out_dir / STORE_FILE) as store:
            store.mark_interrupted()


def _print_header(configs: list[Config]) -> None:
    cfg = configs[0]
    swept = swept_keys(configs)
    print(
        f"fedadamw {cfg.experiment}: arms {', '.join(cfg.arm_list)} · "
        f"{cfg.num_clients} clients ({cfg.partitioner}"
        + (f", α={cfg.dirichlet_alpha:g}" if cfg.partitioner == "dirichlet" else "")
        + f") · {cfg.num_server_rounds} rounds · λ={cfg.weight_decay:g} · lr={cfg.learning_rate:g}"
        + (f" · sweep of {len(configs)} points over {', '.join(swept)}" if swept else ""),
        flush=True,
    )


def _print_summary(configs: list[Config], out_dir: Path, wall: float) -> None:
    from fedadamw.run.progress import print_summary

    print_summary(configs, out_dir, wall)


if __name__ == "__main__":
    sys.exit(main())
