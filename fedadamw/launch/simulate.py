"""The simulation process of `fedadamw run`: it runs every arm on the engine its config names.

`engine = flower`: Flower's simulation engine, with Ray started first and lean
(`fedadamw.launch.raystart`); `engine = vmap`: the same ServerApp logic on the in-process cohort
grid (`server.cohort_grid`), no Ray; with `--ray-address` and a grid of several points, one Ray
task per point (`fedadamw.launch.cluster`).

`fedadamw run` (`fedadamw.launch.supervisor`) starts this module as a child process in a session of
its own, so that the child and every Ray process it starts form one process group that the
parent can end as a whole. Here:

- SIGINT (which the parent sends on Ctrl-C and SIGTERM) sets the stop event: the ServerApp
  thread leaves its round at the next poll (`server.grid.GuardedGrid`) and marks its arm
  ``interrupted``, and the main thread unwinds Flower's engine, which stops Ray.
- If the parent disappears (SIGKILL), a watchdog thread does the same, then ends the group.
- After the last group's ServerApp has finished and closed the store, the watchdog exits at
  once (0): Ray's orderly shutdown would only cost time, and the parent ends the group.
- Exit codes: 0 done, 2 bad input (one line printed), 75 a Ray worker died (the parent
  restarts the simulation, which resumes), 130 stopped, 1 anything else (one line printed;
  the traceback goes to `failures.log`).
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedadamw.config import Config
from fedadamw.errors import ConfigError, print_error, survive_closed_stdout
from fedadamw.launch.spec import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_WORKER_LOST,
    Spec,
)
from fedadamw.run.failures import LOG_FILE, NonFiniteRunError, WorkerLostError, summary
from fedadamw.schema import STORE_FILE

if TYPE_CHECKING:
    # Not at run time: the recorder imports torch, and this module is imported by the CLI
    # (`fedadamw run`'s parent needs no torch) and starts Ray before it imports torch.
    from fedadamw.launch.raystart import RayStart
    from fedadamw.run.recorder import Progress

# After a stop is asked for, the process exits as soon as the ServerApp has marked its arm
# (Ray's own orderly shutdown takes seconds; the parent kills Ray's processes instead), and at
# the latest this long after the request.
HARD_STOP_S = 3.0


class _Stopper:
    """Turns SIGINT, SIGTERM and the parent's death into one orderly stop."""

    def __init__(self, spec: Spec) -> None:
        self.event = threading.Event()
        self.closed = threading.Event()  # set by the ServerApp once the store is consistent
        # Set once the last ServerApp finished every arm: nothing is left to do but Ray's slow
        # orderly shutdown, which the parent makes unnecessary by killing the group.
        self.finished = threading.Event()
        self.before_exit: Callable[[], None] | None = None  # e.g. close the progress display
        self.spec = spec
        self.parent_pid = spec.parent_pid
        self.parent_gone = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._watch, name="fedadamw-watchdog", daemon=True).start()

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.event.is_set():
            self.stop()
            raise KeyboardInterrupt  # unwinds Flower's engine in the main thread

    def stop(self) -> None:
        """Ask everything to stop; the engine's complaints about actors it kills are noise."""
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        self.event.set()

    def _watch(self) -> None:
        stopped_at: float | None = None
        while True:
            time.sleep(0.05)
            if not self.parent_gone and os.getppid() != self.parent_pid:
                self.parent_gone = True  # the CLI died (SIGKILL): stop, then end the group
                if not self.event.is_set():
                    self.stop()
                    _thread.interrupt_main()
            if self.finished.is_set() and not self.event.is_set():
                self.exit_now(EXIT_OK)
            if self.event.is_set():
                stopped_at = stopped_at or time.monotonic()
                if self.closed.is_set() or time.monotonic() - stopped_at > HARD_STOP_S:
                    self.exit_now()

    def exit_now(self, code: int = EXIT_STOPPED) -> None:
        """Leave at once: the store is consistent, Ray's processes are the parent's to end."""
        if code == EXIT_OK and self.before_exit is not None:
            self.before_exit()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.parent_gone:
            _orphan_cleanup(self.spec)
        os._exit(code)


def _groups(configs: list[Config]) -> list[list[Config]]:
    """Configs that share a federation (size and engine), in the order they were given."""
    groups: dict[tuple[int, str], list[Config]] = {}
    for cfg in configs:
        groups.setdefault((cfg.num_clients, cfg.engine), []).append(cfg)
    return list(groups.values())


def _start_ray(spec: Spec) -> RayStart:
    """Ray for Flower's engine: a lean local head, or the cluster at `spec.ray_address`."""
    from fedadamw.launch.raystart import start

    # Ray warns that it will stop overriding CUDA_VISIBLE_DEVICES for CPU-only actors.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return start(spec.ray_temp_dir, spec.verbose, spec.ray_address)


def _quiet_flower(spec: Spec) -> None:
    """Our per-round lines replace Flower's log; its errors go to failures.log, not the screen."""
    from flwr.supercore.logger import update_console_handler

    update_console_handler(level=logging.CRITICAL)
    # delay: the file is made by the first error, so a run without one leaves none
    to_file = logging.FileHandler(Path(spec.out_dir) / LOG_FILE, encoding="utf-8", delay=True)
    to_file.setLevel(logging.ERROR)
    to_file.setFormatter(logging.Formatter("=== %(asctime)s flower %(levelname)s\n%(message)s"))
    logging.getLogger("flwr").addHandler(to_file)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _simulate(
    spec: Spec, configs: list[Config], stopper: _Stopper, ray_start: RayStart | None
) -> None:
    """Run every group of configs that shares a federation: one Ray start (or none) each."""
    from fedadamw.run.progress import ConsoleProgress

    progress = ConsoleProgress(configs)
    stopper.before_exit = progress.bar.stop
    groups = _groups(configs)
    with progress.bar:
        for i, group in enumerate(groups):
            if group[0].engine in ("vmap", "grid"):
                _run_cohort(spec, group, progress, stopper)
            else:
                # Flower's engine shuts Ray down after each group: the next one starts it again.
                ray_start = ray_start or _start_ray(spec)
                ray_start.wait()
                _run_flower(spec, group, progress, stopper, last=i == len(groups) - 1)
                ray_start = None
            if stopper.event.is_set():
                raise KeyboardInterrupt
            stopper.closed.clear()  # the next group's ServerApp


def _sweep(spec: Spec, configs: list[Config], stopper: _Stopper) -> int:
    """Every grid point as a Ray task on the cluster; the driver alone writes the store."""
    from fedadamw.launch.cluster import run_sweep
    from fedadamw.run.progress import ConsoleProgress

    progress = ConsoleProgress(configs)
    stopper.before_exit = progress.bar.stop
    with progress.bar:
        return run_sweep(spec, configs, progress, stopper.event)


def _run_cohort(spec: Spec, group: list[Config], progress: Progress, stopper: _Stopper) -> None:
    """The vectorized engine: the same ServerApp logic on an in-process grid; no Ray at all."""
    from server.app import run_experiment
    from server.cohort_grid import CohortGrid
    from server.run_batch import batch_size

    batch_runs = 1
    if group[0].engine == "grid":
        batch_runs, why = batch_size(group, spec.max_batch_runs)
        progress.note(why)
    try:
        run_experiment(
            CohortGrid(group[0].num_clients),
            group,
            Path(spec.out_dir),
            progress,
            restart=spec.restart,
            stop=stopper.event,
            take_lock=False,  # the parent holds the folder's lock and shares it with us
            batch_runs=batch_runs,
        )
    finally:
        stopper.closed.set()


def _run_flower(
    spec: Spec, group: list[Config], progress: Progress, stopper: _Stopper, last: bool
) -> None:
    """Flower's simulation engine: Ray actors run `clients/app.py` for every node."""
    import torch
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_app

    gpus = spec.client_gpus
    if gpus is None:  # decided here, where torch is imported anyway (the CLI stays light)
        gpus = 0.25 if torch.cuda.is_available() else 0.0
    check_cluster_resources(spec.client_cpus, gpus)
    # Ray is already up (`_start_ray`): Flower's backend then uses it as it is.
    run_simulation(
        server_app=make_app(
            group,
            Path(spec.out_dir),
            progress,
            restart=spec.restart,
            stop=stopper.event,
            closed=stopper.closed,
            # After the last group nothing needs Ray's orderly shutdown: the store is closed,
            # and the parent kills Ray's processes anyway. Leave as soon as it is done.
            finished=stopper.finished if last else None,
        ),
        client_app=client_app,
        num_supernodes=group[0].num_clients,
        backend_config={
            "client_resources": {"num_cpus": spec.client_cpus, "num_gpus": gpus},
        },
        verbose_logging=spec.verbose,
    )


def check_cluster_resources(cpus: float, gpus: float) -> None:
    """ConfigError when no node of the running Ray cluster can hold one client's resources.

    Flower would otherwise start an empty actor pool and end with "An error was encountered".
    """
    import ray

    listed: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = [n.get("Resources", {}) for n in listed if n.get("Alive")]
    if any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes):
        return
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    raise ConfigError(
        f"--client-cpus {cpus:g} / --client-gpus {gpus:g}: no Ray node has that much "
        f"(the largest has {most_cpus:g} CPUs, {most_gpus:g} GPUs); ask for less per client"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m fedadamw.launch.simulate SPEC.json`."""
    args = sys.argv[1:] if argv is None else argv
    survive_closed_stdout()  # a closed pipe (`| head`) is not a failed arm
    spec = Spec.read(Path(args[0]))
    stopper = _Stopper(spec)
    code = EXIT_FAILED
    try:
        configs = [Config.from_mapping(c) for c in spec.configs]
        # A grid on a cluster: one Ray task per grid point (fedadamw.launch.cluster).
        sweep = spec.ray_address is not None and len(configs) > 1
        # Ray starts first, in the background: its processes come up while this one imports
        # torch and Flower and prepares the data (fedadamw.launch.raystart).
        flower = any(c.engine == "flower" for c in configs)
        ray_start = _start_ray(spec) if flower and not sweep else None
        if not spec.verbose:
            _quiet_flower(spec)
        import torch

        from fedadamw.data.split import prepare

        torch.set_num_threads(spec.threads)
        # Generate the data and check every split here, once: Ray's workers then read the
        # disk cache, and a split that cannot be made is a one-line error.
        for cfg in configs:
            prepare(cfg)
        code = _sweep(spec, configs, stopper) if sweep else EXIT_OK
        if not sweep:
            _simulate(spec, configs, stopper, ray_start)
    except KeyboardInterrupt:
        code = EXIT_STOPPED
    except (ConfigError, NonFiniteRunError) as exc:
        print_error(str(exc))
        code = EXIT_BAD_INPUT
    except WorkerLostError as exc:
        print(f"fedadamw: {exc}", file=sys.stderr, flush=True)
        code = EXIT_WORKER_LOST
    except BaseException as exc:  # one line here, the whole story in the log
        code = EXIT_STOPPED if stopper.event.is_set() else EXIT_FAILED
        if code == EXIT_FAILED:
            _log_traceback(Path(spec.out_dir), exc)
            print_error(f"{summary(f'{type(exc).__name__}: {exc}', 160)} (traceback: {LOG_FILE})")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if stopper.parent_gone:
            _orphan_cleanup(spec)
    # Threads Flower or Ray may have left behind must not keep this process alive.
    os._exit(code)


def _log_traceback(out_dir: Path, exc: BaseException) -> None:
    try:
        with (out_dir / LOG_FILE).open("a", encoding="utf-8") as fh:
            fh.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} fedadamw run failed\n")
            fh.write("".join(traceback.format_exception(exc)) + "\n")
    except OSError:
        pass


def _orphan_cleanup(spec: Spec) -> None:
    """The CLI is gone: mark what ran as interrupted, remove Ray's files, end the group."""
    from fedadamw.results.writer import ResultStore

    try:
        with ResultStore(Path(spec.out_dir) / STORE_FILE) as store:
            store.mark_interrupted()
    except Exception:  # readers show a lock-less "running" run as interrupted anyway
        pass
    if spec.ray_temp_dir:
        import shutil

        shutil.rmtree(spec.ray_temp_dir, ignore_errors=True)
    os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == "__main__":
    main()
