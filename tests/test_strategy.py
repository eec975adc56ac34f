"""MeasuredFedAvg on fake replies, without Ray (as Flower's own strategy tests do)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core.sampling import sample_partitions
from fedadamw.results.reader import connect_readonly
from fedadamw.results.writer import ResultStore
from fedadamw.run.recorder import RunRecorder
from server.strategy import MeasuredFedAvg

SHAPES = {"w": (3, 4), "b": (4,)}


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in values.items()})


class _FakeGrid:
    """Just enough of a Grid for FedAvg.configure_train: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def FakeGrid(nodes: list[int]) -> Grid:  # noqa: N802 - reads like the class it stands for
    return cast(Grid, _FakeGrid(nodes))


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    # Instruction messages read the running task's identity; a test has none of its own.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None  # type: ignore[assignment]


def _reply(
    node: int,
    arrays: dict[str, np.ndarray] | None,
    metrics: dict[str, float] | None,
    error: str | None = None,
) -> Message:
    meta = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    if error is not None:
        return Message(Error(code=0, reason=error), metadata=meta)  # type: ignore[call-overload,no-any-return]
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = _arrays(arrays)
    if metrics is not None:
        content["metrics"] = MetricRecord(dict(metrics.items()))
    return Message(content, metadata=meta)  # type: ignore[call-overload,no-any-return]


def _metrics(n: int, pid: int, loss: float = 1.0) -> dict[str, float]:
    return {
        schema.NUM_EXAMPLES: n,
        schema.TRAIN_LOSS: loss,
        schema.LOCAL_STEPS: 7,
        schema.PARTITION_ID: pid,
    }


def _strategy(tmp_path: Path, partitions: dict[int, int], per_round: int) -> MeasuredFedAvg:
    cfg = Config.from_mapping({"num-clients": len(partitions)})
    return MeasuredFedAvg(
        partitions,
        seed=3,
        clients_per_round=per_round,
        parameter_names=SHAPES,  # measure the fake tensors, not a model's
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )


def test_both_arms_sample_the_same_partitions_whatever_the_node_ids(tmp_path: Path) -> None:
    pids = list(range(8))
    a = _strategy(tmp_path, {100 + p: p for p in pids}, per_round=3)
    b = _strategy(tmp_path, {9000 - 7 * p: p for p in pids}, per_round=3)
    arrays = _arrays({"w": np.zeros((2, 2), np.float32)})
    for rnd in (1, 2, 3):
        got = []
        for s in (a, b):
            msgs = s.configure_train(
                rnd, arrays, ConfigRecord({"mode": "coupled"}), FakeGrid(list(s.partitions))
            )
            got.append(sorted(s.partitions[m.metadata.dst_node_id] for m in msgs))
        assert got[0] == got[1] == sample_partitions(3, rnd, pids, 3)
        assert len(got[0]) == 3


def test_aggregate_rejects_bad_replies_and_averages_the_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    glob = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    strategy = _strategy(tmp_path, {10 + p: p for p in range(6)}, per_round=6)
    strategy.configure_train(
        1, _arrays(glob), ConfigRecord({}), FakeGrid(list(strategy.partitions))
    )

    good = {
        p: {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()}
        for p in (0, 1, 2)
    }
    counts = {0: 10, 1: 30, 2: 60}
    nan = {k: v.copy() for k, v in glob.items()}
    nan["w"][0, 0] = np.nan
    wrong = {"w": np.zeros((4, 3), np.float32), "b": glob["b"]}
    replies = [
        *(_reply(10 + p, good[p], _metrics(counts[p], p)) for p in good),
        _reply(13, nan, _metrics(5, 3)),
        _reply(14, wrong, _metrics(5, 4)),
        _reply(15, None, None, error="node lost (heartbeat)"),
    ]
    arrays, metrics = strategy.aggregate_train(1, iter(replies))

    assert arrays is not None and metrics is not None
    total = sum(counts.values())
    for name in SHAPES:
        want = sum(counts[p] * good[p][name].astype(np.float64) for p in good) / total
        np.testing.assert_allclose(arrays[name].numpy(), want, rtol=1e-5, atol=1e-6)
    assert metrics[schema.NUM_EXAMPLES] == total  # summed, not averaged
    assert metrics[schema.LOCAL_STEPS] == 21
    assert schema.PARTITION_ID not in metrics  # ids are never averaged

    measured = strategy.last_measurement
    assert measured is not None
    assert [r.partition_id for r in measured.accepted] == [0, 1, 2]
    reasons = {pid: reason for pid, _, reason in measured.rejections}
    assert "non-finite" in reasons[3] and "shape" in reasons[4] and "heartbeat" in reasons[5]

    # The round lands in the store in one piece, rejections included.
    # (The fake arrays are not the recorder's model: evaluate its own weights instead.)
    cfg = Config.from_mapping({"num-clients": 6})
    rec = RunRecorder(ResultStore(tmp_path / "results.db"), "exp:coupled:x", cfg, "coupled")
    rec.start()
    rec.record(1, rec.model.state_dict(), measured, strategy.last_server_state)
    conn = connect_readonly(tmp_path / "results.db")
    row = conn.execute(
        "SELECT num_clients, num_rejected, mean_pairwise_cosine FROM rounds"
    ).fetchone()
    assert (row[0], row[1]) == (3, 3) and math.isfinite(row[2])
    assert conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == 3
    conn.close()


def test_round_with_no_acceptable_reply_keeps_the_global_model(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, {1: 0, 2: 1}, per_round=2)
    glob = {"w": np.ones((2, 2), np.float32)}
    strategy.configure_train(1, _arrays(glob), ConfigRecord({}), FakeGrid([1, 2]))
    replies = [
        _reply(1, None, None, error="boom"),
        _reply(2, {"w": np.ones((2, 2), np.float32)}, {"x": 1.0}),
    ]
    assert strategy.aggregate_train(1, replies) == (None, None)
    measured = strategy.last_measurement
    assert measured is not None and not measured.accepted and len(measured.rejections) == 2


def test_dropped_clients_get_no_message_and_are_recorded(tmp_path: Path) -> None:
    from fedadamw.core.sampling import dropped_partitions

    partitions = {50 + p: p for p in range(10)}
    strategy = _strategy(tmp_path, partitions, per_round=10)
    strategy.dropout_rate = 0.4
    glob = {"w": np.zeros((2, 2), np.float32)}
    msgs = list(
        strategy.configure_train(2, _arrays(glob), ConfigRecord({}), FakeGrid(list(partitions)))
    )
    dropped = dropped_partitions(3, 2, list(range(10)), 0.4)
    assert dropped  # seed 3, round 2 drops some clients: the test must be able to fail
    sent = sorted(partitions[m.metadata.dst_node_id] for m in msgs)
    assert sent == sorted(set(range(10)) - set(dropped))
    replies = [
        _reply(
            m.metadata.dst_node_id,
            {"w": np.ones((2, 2), np.float32)},
            _metrics(10, partitions[m.metadata.dst_node_id]),
        )
        for m in msgs
    ]
    strategy.aggregate_train(2, replies)
    measured = strategy.last_measurement
    assert measured is not None and len(measured.accepted) == len(sent)
    assert sorted(int(p or 0) for p, _, why in measured.rejections if "dropout" in why) == dropped


def test_aggregate_is_the_same_bits_whatever_the_reply_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    partitions = {70 + p: p for p in range(6)}
    glob = {"w": rng.normal(size=(50,)).astype(np.float32)}
    states = {p: {"w": (glob["w"] + rng.normal(size=50)).astype(np.float32)} for p in range(6)}
    results = []
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2], [2, 5, 4, 1, 3, 0]):
        strategy = _strategy(tmp_path / str(order[0]), partitions, per_round=6)
        strategy.configure_train(1, _arrays(glob), ConfigRecord({}), FakeGrid(list(partitions)))
        replies = [_reply(70 + p, states[p], _metrics(10 + 7 * p, p)) for p in order]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        results.append(arrays["w"].numpy())
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_decoding_a_reply_once_aggregates_the_bits_flowers_own_parsing_gives(
    tmp_path: Path,
) -> None:
    """The server hands FedAvg the arrays it decoded for the measurement (fedadamw.core.records);
    Fortran-ordered bytes take np.load's path instead: both must give Flower's FedAvg bits."""
    rng = np.random.default_rng(5)
    partitions = {40 + p: p for p in range(4)}
    glob = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    states = {
        p: {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()}
        for p in range(4)
    }
    results = []
    for layout in (np.ascontiguousarray, np.asfortranarray):
        strategy = _strategy(tmp_path / layout.__name__, partitions, per_round=4)
        strategy.configure_train(1, _arrays(glob), ConfigRecord({}), FakeGrid(list(partitions)))
        replies = [
            _reply(40 + p, {k: layout(v) for k, v in states[p].items()}, _metrics(3 + p, p))
            for p in range(4)
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        results.append({k: arrays[k].numpy() for k in SHAPES})
    # Flower's FedAvg on replies it parses itself, with no server of ours in between.
    plain = [_reply(40 + p, states[p], _metrics(3 + p, p)) for p in range(4)]
    reference, _ = FedAvg().aggregate_train(1, plain)
    assert reference is not None
    for name in SHAPES:
        want = reference[name].numpy()
        assert all(np.array_equal(r[name], want) for r in results)


def test_the_server_decay_arm_shrinks_fedavgs_aggregate_by_the_clients_factor(
    tmp_path: Path,
) -> None:
    from fedadamw.core.server_decay import ServerDecay

    rng = np.random.default_rng(2)
    glob = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    strategy = _strategy(tmp_path, {10 + p: p for p in range(3)}, per_round=3)
    lr, lam = 0.02, 0.5
    strategy.server_decay = ServerDecay(lr, lam, frozenset({"w"}))  # as for arm server-decay
    strategy.configure_train(1, _arrays(glob), ConfigRecord({}), FakeGrid([10, 11, 12]))
    states = {
        p: {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()}
        for p in range(3)
    }
    counts, steps = {0: 10, 1: 30, 2: 60}, {0: 4, 1: 9, 2: 20}
    replies = [
        _reply(10 + p, states[p], {**_metrics(counts[p], p), schema.LOCAL_STEPS: steps[p]})
        for p in range(3)
    ]
    arrays, _ = strategy.aggregate_train(1, iter(replies))
    assert arrays is not None
    p = np.asarray([counts[i] for i in range(3)], float) / 100
    factor = float(p @ (1 - lr * lam) ** np.asarray([steps[i] for i in range(3)], float))
    fedavg = {k: sum(p[i] * states[i][k].astype(np.float64) for i in range(3)) for k in SHAPES}
    np.testing.assert_allclose(arrays["w"].numpy(), factor * fedavg["w"], rtol=1e-5)
    np.testing.assert_allclose(arrays["b"].numpy(), fedavg["b"], rtol=1e-5)  # not decayed
    measured = strategy.last_measurement
    assert measured is not None and measured.server_decay is not None
    assert measured.server_decay.factor == pytest.approx(factor)
