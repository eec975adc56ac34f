"""A sweep on an existing Ray cluster: one Ray task per grid point, one writer per store.

`fedadamw run --ray-address ADDRESS` with a `[sweep]` of two or more grid points hands each
grid point (a *cell*: one config, all its arms, its own engine; with `engine = grid` a batch of
points, `cells`) to Ray as a task, so the grid
spreads over every node of the cluster. SQLite wants one writer per store, and a task may run
on another machine, so:

- the **driver** (this process, started by `fedadamw run`, which holds the folder's lock)
  is the only writer of `DIR/results.db`;
- a **cell task** runs `python -m fedadamw.launch.simulate` in a private folder on its node,
  starting from a copy of the rows its runs already have in `DIR/results.db` (so it resumes
  after their last stored round), and returns its store file when it ends;
- the driver copies the cell's rows into `DIR/results.db` in one transaction
  (`ResultStore.copy_runs`) as soon as the task ends, in whatever order tasks end.

A `flower` cell's clients are Ray actors on the same cluster (the cell's process joins it as a
driver of its own; the task itself holds no CPU, its actors do); a `vmap` cell takes
`client-cpus` CPUs (and `client-gpus` GPUs) for its one process. Stopping the sweep cancels the
tasks still running: their rounds since the start of the task are lost, every finished cell is
in the store, and running the command again resumes the rest.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedadamw.config import Config
from fedadamw.launch.spec import Spec
from fedadamw.results.writer import ResultStore
from fedadamw.run.experiment import run_id_for, swept_keys
from fedadamw.run.failures import LOG_FILE
from fedadamw.run.orchestrate import Session
from fedadamw.run.recorder import Progress
from fedadamw.schema import FINISHED, SPEC_FILE, STORE_FILE

CELL_STORE = STORE_FILE  # a cell writes the same store file, in its own folder


@dataclass(frozen=True)
class CellResult:
    """What a cell task sends back: exit code, last error line, node, store and failure log."""

    code: int
    error: str
    node: str
    store: bytes | None
    log: str = ""


def run_cell(spec: dict[str, Any], store: bytes | None) -> CellResult:
    """The body of a cell task: the simulation of one grid point in a private folder."""
    with tempfile.TemporaryDirectory(prefix="fedadamw-cell-") as tmp:
        out = Path(tmp)
        if store is not None:
            (out / CELL_STORE).write_bytes(store)
        cell = Spec(**{**spec, "out_dir": str(out), "parent_pid": os.getpid()})
        spec_file = out / SPEC_FILE
        cell.write(spec_file)
        proc = subprocess.run(
            [sys.executable, "-m", "fedadamw.launch.simulate", str(spec_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            start_new_session=True,  # its own group, as under `fedadamw run`'s supervisor
        )
        lines = [line for line in proc.stderr.splitlines() if line.startswith("fedadamw")]
        db, log = out / CELL_STORE, out / LOG_FILE
        return CellResult(
            code=proc.returncode,
            error=lines[-1] if lines else "",
            node=os.uname().nodename,
            store=db.read_bytes() if db.is_file() else None,
            log=log.read_text(encoding="utf-8", errors="replace") if log.is_file() else "",
        )


def run_sweep(spec: Spec, configs: list[Config], progress: Progress, stop: threading.Event) -> int:
    """Run every grid point as a Ray task on the cluster at `spec.ray_address`; an exit code.

    0 when every cell finished, else the first failing cell's code (each cell's end is a
    line of the progress display, with its error line if it failed).
    """
    import ray

    ray.init(address=spec.ray_address, logging_level=logging.WARNING, log_to_driver=spec.verbose)
    address = ray.get_runtime_context().gcs_address
    out_dir = Path(spec.out_dir)
    swept = swept_keys(configs)
    task = ray.remote(run_cell)
    nodes = len([n for n in ray.nodes() if n.get("Alive")])  # type: ignore[no-untyped-call]
    with Session(configs, out_dir, progress, restart=spec.restart, take_lock=False):
        pending: dict[Any, list[Config]] = {}
        for cell_configs in cells(configs, nodes, spec.max_batch_runs):
            cfg = cell_configs[0]
            ids = [run_id_for(c, arm) for c in cell_configs for arm in c.arm_list]
            cell = {
                **asdict(spec),
                "configs": [c.to_dict() for c in cell_configs],
                "ray_temp_dir": None,
                # A flower cell's clients join this very cluster; a vmap cell needs no Ray.
                "ray_address": address if cfg.engine == "flower" else None,
            }
            flower = cfg.engine == "flower"
            options = {
                "num_cpus": 0 if flower else spec.client_cpus,
                "num_gpus": 0 if flower else (spec.client_gpus or 0),
                "max_retries": 0,  # a cell that died resumes from the store on the next run
            }
            ref = task.options(**options).remote(cell, _rows_of(out_dir, ids, spec.restart))
            pending[ref] = cell_configs
        code = 0
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
                if stop.is_set():
                    raise KeyboardInterrupt
                for ref in done:
                    result: CellResult = ray.get(ref)
                    for cfg in pending.pop(ref):
                        label = " ".join(f"{k}={cfg.to_dict()[k]}" for k in swept)
                        code = code or _merge(out_dir, cfg, result, progress, label)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True, recursive=True)
    return code


def cells(configs: list[Config], nodes: int, most_runs: int = 0) -> list[list[Config]]:
    """The Ray tasks of a sweep: one grid point each, or for `engine = grid` a batch of points.

    Grid-engine points that share a federation go in batches of at most `most_runs` runs (0: no
    cap), and in at least `nodes` batches where there are that many points, so the sweep spreads
    over the cluster; a point is never split (its arms are one cell's rows).
    """
    out: list[list[Config]] = []
    batched: dict[int, list[Config]] = {}
    for cfg in configs:
        if cfg.engine == "grid":
            batched.setdefault(cfg.num_clients, []).append(cfg)
        else:
            out.append([cfg])
    for group in batched.values():
        runs = sum(len(c.arm_list) for c in group)
        per_cell = -(-runs // max(1, min(nodes, len(group))))
        if most_runs > 0:
            per_cell = min(per_cell, most_runs)
        cell: list[Config] = []
        for cfg in group:
            if cell and sum(len(c.arm_list) for c in cell) + len(cfg.arm_list) > per_cell:
                out.append(cell)
                cell = []
            cell.append(cfg)
        if cell:
            out.append(cell)
    return out


def _rows_of(out_dir: Path, run_ids: list[str], restart: bool) -> bytes | None:
    """A store holding only these runs' rows (a cell resumes from it), or None: start fresh."""
    main = out_dir / CELL_STORE
    if restart or not main.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="fedadamw-rows-") as tmp:
        path = Path(tmp) / CELL_STORE
        with ResultStore(path) as store:
            store.copy_runs(main, run_ids)
        return path.read_bytes()


def _merge(out_dir: Path, cfg: Config, result: CellResult, progress: Progress, label: str) -> int:
    """Copy a finished cell's rows into the experiment's store; the cell's exit code."""
    ids = [run_id_for(cfg, arm) for arm in cfg.arm_list]
    if result.log:  # the cell's failures.log, under the experiment's own
        with (out_dir / LOG_FILE).open("a", encoding="utf-8") as fh:
            fh.write(f"=== cell {label or cfg.experiment} on node {result.node}\n{result.log}")
    if result.store is not None:
        with tempfile.TemporaryDirectory(prefix="fedadamw-cell-") as tmp:
            path = Path(tmp) / CELL_STORE
            path.write_bytes(result.store)
            with ResultStore(out_dir / CELL_STORE) as store:
                store.copy_runs(path, ids)
                finished = all(store.status(i) == FINISHED for i in ids)
    else:
        finished = False
    ok = finished and result.code == 0
    how = "finished" if ok else f"stopped ({result.error or f'exit {result.code}'})"
    progress.note(f"{label}: {how} on node {result.node}")
    progress.skip(cfg.num_server_rounds * len(cfg.arm_list))
    return result.code
