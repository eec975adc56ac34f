"""The ServerApp: discover the clients' partitions, then run every arm in one Flower run.

Running all arms inside one ServerApp means Ray starts once for the whole paired comparison,
and both arms see the same nodes, partitions, sampled clients and initial weights.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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

from fedadamw import messages
from fedadamw.config import Config, ConfigError
from fedadamw.experiment import describe, describe_configs, swept_keys
from fedadamw.outdir import resolve_under_root
from fedadamw.recorder import Progress, RunRecorder
from fedadamw.store import ResultStore
from server.strategy import NODE_WAIT_S, DivergenceFedAvg, scalar


def run_id_for(cfg: Config, arm: str) -> str:
    """A stable id of one arm of one config: re-running the same config rewrites its rows."""
    digest = hashlib.sha1(cfg.replace(arms=arm, out_dir="").to_json().encode()).hexdigest()[:8]
    return f"{cfg.experiment}:{arm}:{digest}"


def resolve_out_dir(cfg: Config) -> Path:
    """Where a submitted run writes: `out-dir` under the results root (fedadamw.outdir)."""
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
    ask = RecordDict({"config": ConfigRecord({"ask": messages.PARTITION_ID})})
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
        mapping[int(reply.metadata.src_node_id)] = int(scalar(metrics, messages.PARTITION_ID))
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
    grid: Grid, configs: Sequence[Config], out_dir: Path, progress: Progress | None = None
) -> list[str]:
    """Train every arm of every config on `grid`, writing `out_dir`/results.db; the run ids.

    All configs share the grid's SuperNodes (the same `num-clients`); each client reads its
    data spec from the train message, so seeds and partitioners may differ between them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(describe_configs(configs), indent=1) + "\n")
    partitions = discover_partitions(grid, configs[0].num_clients)
    swept = swept_keys(configs)
    run_ids = []
    with ResultStore(out_dir / "results.db") as store:
        for cfg in configs:
            for arm in cfg.arm_list:
                label = describe(cfg, arm, swept)
                run_ids.append(_run_arm(grid, store, cfg, arm, partitions, label, progress))
    return run_ids


def _run_arm(
    grid: Grid,
    store: ResultStore,
    cfg: Config,
    arm: str,
    partitions: dict[int, int],
    label: str,
    progress: Progress | None,
) -> str:
    run_id = run_id_for(cfg, arm)
    recorder = RunRecorder(store, run_id, cfg, arm, progress, label=label)
    recorder.start()
    strategy = DivergenceFedAvg(
        recorder,
        partitions,
        cfg.seed,
        min(cfg.clients_per_round, len(partitions)),
        dropout_rate=cfg.dropout_rate,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, acc = recorder.record(server_round, arrays.to_torch_state_dict())
        return MetricRecord({"test-loss": loss, "test-accuracy": acc})

    try:
        strategy.start(
            grid=grid,
            # The recorder's model is freshly built from the seed: both arms start from it.
            initial_arrays=ArrayRecord(recorder.model.state_dict()),
            num_rounds=cfg.num_server_rounds,
            train_config=ConfigRecord(messages.train_config(cfg, arm)),
            evaluate_fn=evaluate,
        )
    except BaseException as exc:
        recorder.finish(f"failed: {type(exc).__name__}: {exc}")
        raise
    recorder.finish()
    return run_id


def make_app(
    configs: Sequence[Config], out_dir: Path, progress: Progress | None = None
) -> ServerApp:
    """A ServerApp bound to already validated configs (the `fedadamw run` path)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        run_experiment(grid, configs, out_dir, progress)

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
    run_experiment(grid, [cfg], out_dir)
