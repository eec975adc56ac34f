"""The ServerApp: discover the clients' partitions, then run every arm in one Flower run.

Running all arms inside one ServerApp means Ray starts once for the whole paired comparison,
and both arms see the same nodes, partitions, sampled clients and initial weights.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core import wire as messages
from fedadamw.core.training import Evaluator
from fedadamw.errors import ConfigError
from fedadamw.run.orchestrate import ArmTask, Session
from fedadamw.run.outdir import resolve_under_root
from fedadamw.run.recorder import Progress
from fedadamw.schema import BATCHED_ENGINES, INTERRUPTED
from server.cohort_grid import CohortGrid
from server.grid import GuardedGrid
from server.metrics import scalar
from server.optimizers import make_strategy
from server.run_batch import Member, RunBatch, fits, memory_budget, run_bytes
from server.strategy import NODE_WAIT_S


def resolve_out_dir(cfg: Config) -> Path:
    """Where a submitted run writes: `out-dir` under the results root (fedadamw.run.outdir)."""
    return resolve_under_root(cfg.out_dir, cfg.experiment)


def discover_partitions(grid: Grid, expected: int, wait_s: float = NODE_WAIT_S) -> dict[int, int]:
    """Ask every SuperNode for its partition id: node id -> partition id."""
    deadline = time.monotonic() + wait_s
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of {expected} SuperNodes connected within {wait_s:.0f} s; "
                f"start one per partition id 0..{expected - 1} (flower-supernode --node-config "
                f"'partition-id=N num-partitions={expected}') or lower num-clients"
            )
        time.sleep(0.2)
    ask = RecordDict({"config": ConfigRecord({"ask": schema.PARTITION_ID})})
    replies = list(
        grid.send_and_receive(
            [Message(content=ask, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes],
            timeout=wait_s,
        )
    )
    mapping: dict[int, int] = {}
    for reply in replies:
        if reply.has_error():
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        mapping[int(reply.metadata.src_node_id)] = int(scalar(metrics, schema.PARTITION_ID))
    pids = sorted(mapping.values())
    if len(set(pids)) != len(pids):
        raise ConfigError(f"SuperNodes report duplicate partition ids: {pids}")
    bad = [p for p in pids if not 0 <= p < expected]
    if bad:
        raise ConfigError(f"partition ids {bad} are outside 0..{expected - 1} (num-clients)")
    if not mapping:
        raise RuntimeError("no SuperNode answered the partition-id query")
    return mapping


def run_experiment(
    grid: Grid,
    configs: Sequence[Config],
    out_dir: Path,
    progress: Progress | None = None,
    *,
    restart: bool = False,
    stop: threading.Event | None = None,
    lost_worker_fatal: bool = False,
    take_lock: bool = True,
    batch_runs: int = 1,
) -> list[str]:
    """Train every arm of every config on `grid`, writing `out_dir`/results.db; the run ids.

    All configs share the grid's SuperNodes (the same `num-clients`); each client reads its
    data spec from the train message, so seeds and partitioners may differ between them.
    What to run, resume or skip is `fedadamw.run.orchestrate.Session`'s business. On a
    `CohortGrid`, `batch_runs` > 1 trains that many arms' rounds at once (`server.run_batch`).
    """
    with Session(configs, out_dir, progress, restart=restart, take_lock=take_lock) as session:
        partitions = discover_partitions(grid, session.num_clients)
        if batch_runs > 1 and isinstance(grid, CohortGrid):
            # The grid engine: `batch_runs` arms at a time, their rounds trained together.
            batch: RunBatch[ArmTask] = RunBatch(grid, stop)

            def work(task: ArmTask, member: Member) -> None:
                with task.running():
                    _train(member, task, partitions, member.evaluate)

            # Each batch as large as `fits` lets it: at most `batch_runs` runs, and within the
            # memory budget with each run costed by its own model (a grid may mix model sizes).
            arms, budget = session.arms(), memory_budget()
            carry: ArmTask | None = None  # started, but waits for the next batch
            try:
                while True:
                    chunk = [carry] if carry is not None else []
                    carry = None
                    used = sum(run_bytes(t.cfg) for t in chunk)
                    for task in arms:
                        cost = run_bytes(task.cfg)
                        if not fits(len(chunk), used, cost, budget, batch_runs):
                            carry = task
                            break
                        chunk.append(task)
                        used += cost
                    if not chunk:
                        break
                    batch.run(chunk, work)
            finally:
                if carry is not None:  # the batch before it stopped: it resumes later
                    carry.recorder.finish(INTERRUPTED)
            return session.run_ids
        guarded = GuardedGrid(grid, stop, lost_worker_fatal)
        for task in session.arms():
            with task.running():
                _train(guarded, task, partitions)
        return session.run_ids


def _train(
    grid: Grid, task: ArmTask, partitions: dict[int, int], evaluator: Evaluator | None = None
) -> None:
    """The server optimizer's Flower loop over the rounds the arm still needs.

    `evaluator` scores each new global model (None: this run alone; the grid engine's batch
    member scores all its runs' models at once).
    """
    cfg, done = task.cfg, task.done
    recorder = task.recorder
    strategy = make_strategy(
        cfg,
        task.arm,
        recorder.model,
        partitions,
        min(cfg.clients_per_round, len(partitions)),
        done,
        device=recorder.device,
    )
    # A resumed run continues with the momentum / moments its last stored round left.
    strategy.load_server_state(task.resume.server_state)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The new global model, evaluated and written with what the strategy measured."""
        if server_round == 0 and done > 0:
            return None  # the resumed-from model is already stored as round `done`
        loss, acc = recorder.record(
            done + server_round,
            arrays.to_torch_state_dict(),
            strategy.last_measurement,
            strategy.last_server_state,
            evaluator,
        )
        return MetricRecord({"test-loss": loss, "test-accuracy": acc})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(
            {k: torch.from_numpy(v) for k, v in task.initial_state().items()}
        ),
        num_rounds=cfg.num_server_rounds - done,
        train_config=ConfigRecord(messages.TrainRequest.from_config(cfg, task.arm).to_wire()),
        evaluate_fn=evaluate,
    )


def make_app(
    configs: Sequence[Config],
    out_dir: Path,
    progress: Progress | None = None,
    *,
    restart: bool = False,
    stop: threading.Event | None = None,
    closed: threading.Event | None = None,
    finished: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp bound to already validated configs (the `fedadamw run` simulation path).

    Its process's parent holds the folder's writer lock, and a dead Ray worker stops the
    run so that it resumes on fresh workers. `closed` is set once the experiment has left
    the store consistent (every arm it touched marked), however it ended; `finished` only
    when every arm ran to its end.
    """
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_experiment(
                grid,
                configs,
                out_dir,
                progress,
                restart=restart,
                stop=stop,
                lost_worker_fatal=True,
                take_lock=False,
            )
            if finished is not None:
                finished.set()
        finally:
            if closed is not None:
                closed.set()

    return bound


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The `flwr run .` path: the config is Flower's run config (pyproject defaults + overrides).

    A run config the server refuses (a bad value, an `out-dir` outside the results root) ends
    the run with one line in its log and before any file is written.
    """
    try:
        cfg = Config.from_mapping(dict(context.run_config))
        out_dir = resolve_out_dir(cfg)
    except ConfigError as exc:
        # Flower would log a traceback for an exception; the submitter needs the one line.
        print(f"fedadamw: error: {exc}", file=sys.stderr, flush=True)
        return
    if cfg.engine in BATCHED_ENGINES:
        # The whole federation trains in this process; the SuperNodes get no message.
        grid = CohortGrid(cfg.num_clients)
    batch_runs = len(cfg.arm_list) if cfg.engine == "grid" else 1
    run_experiment(grid, [cfg], out_dir, batch_runs=batch_runs)
