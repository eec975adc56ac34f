"""Reply checks and Δ = w_client − w_global against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from fedadamw import schema
from fedadamw.core.divergence import divergence_stats
from fedadamw.core.updates import ClientReply, check_reply, flatten_updates, measure_round

GLOBAL = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}


def _metrics(n: int = 5, pid: int = 0) -> dict[str, float]:
    return {
        schema.NUM_EXAMPLES: n,
        schema.TRAIN_LOSS: 0.5,
        schema.LOCAL_STEPS: 3,
        schema.PARTITION_ID: pid,
    }


def _reply(arrays: dict[str, np.ndarray], metrics: dict[str, float], pid: int = 0) -> ClientReply:
    return ClientReply(
        node_id=100 + pid, partition_id=pid, arrays=arrays, metrics={**_metrics(pid=pid), **metrics}
    )


def test_updates_are_client_minus_global_in_tensor_order() -> None:
    rng = np.random.default_rng(0)
    clients = [
        {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
        for _ in range(3)
    ]
    mat, seg = flatten_updates(GLOBAL, [_reply(c, {}, i) for i, c in enumerate(clients)])
    want = np.stack(
        [np.concatenate([(c[k] - GLOBAL[k]).ravel() for k in ("a", "b")]) for c in clients]
    )
    np.testing.assert_allclose(mat.numpy(), want, rtol=1e-6)
    assert seg == {"a": slice(0, 6), "b": slice(6, 8)}


@pytest.mark.parametrize(
    ("arrays", "metrics", "reason"),
    [
        ({"a": GLOBAL["a"]}, {}, "missing ['b']"),
        ({**GLOBAL, "c": GLOBAL["b"]}, {}, "unexpected ['c']"),
        ({**GLOBAL, "b": np.ones(3, np.float32)}, {}, "shape (3,)"),
        ({**GLOBAL, "b": np.ones(2, np.int64)}, {}, "dtype int64"),
        ({**GLOBAL, "b": np.array([1.0, np.inf], np.float32)}, {}, "non-finite"),
        (GLOBAL, {schema.TRAIN_LOSS: float("nan")}, "'train-loss' is not finite"),
        (GLOBAL, {schema.NUM_EXAMPLES: 0}, "must be > 0"),
    ],
)
def test_bad_replies_get_a_one_line_reason(
    arrays: dict[str, np.ndarray], metrics: dict[str, float], reason: str
) -> None:
    got = check_reply(_reply(arrays, metrics), GLOBAL)
    assert got is not None and reason in got and "\n" not in got


def test_missing_metric_and_error_replies() -> None:
    reply = ClientReply(1, 0, GLOBAL, {schema.NUM_EXAMPLES: 3})
    assert "'train-loss' is missing" in (check_reply(reply, GLOBAL) or "")
    dead = ClientReply(1, 0, None, {}, error="node 1 lost")
    assert check_reply(dead, GLOBAL) == "error reply: node 1 lost"


def test_measure_round_weights_by_examples_and_drops_duplicates() -> None:
    rng = np.random.default_rng(1)
    clients = [
        {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
        for _ in range(3)
    ]
    replies = [
        ClientReply(10 + i, i, c, _metrics(n=10 * (i + 1), pid=i)) for i, c in enumerate(clients)
    ]
    replies.append(
        ClientReply(99, 1, clients[0], _metrics(pid=1))
    )  # a second reply for partition 1
    m = measure_round(GLOBAL, replies)
    assert [r.partition_id for r in m.accepted] == [0, 1, 2]
    assert m.rejections == [(1, 99, "duplicate reply for partition 1")]
    deltas = np.stack(
        [np.concatenate([(c[k] - GLOBAL[k]).ravel() for k in GLOBAL]) for c in clients]
    )
    want = divergence_stats(deltas.astype(np.float64), [10, 20, 30])
    assert m.whole is not None
    for name, value in want.items():
        assert m.whole.stats[name] == pytest.approx(value, rel=1e-5)
    assert set(m.layers) == {"a", "b"}


def _flat(parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    rows = [np.concatenate([p[n].astype(np.float64).ravel() for n in GLOBAL]) for p in parts]
    return np.stack(rows)


def test_decay_and_data_parts_are_measured_separately() -> None:
    rng = np.random.default_rng(3)
    k = 4
    decay = [
        {"a": (-0.01 * (1 + i) * GLOBAL["a"]).astype(np.float32), "b": np.zeros(2, np.float32)}
        for i in range(k)
    ]
    data = [
        {n: rng.normal(size=v.shape).astype(np.float32) for n, v in GLOBAL.items()}
        for _ in range(k)
    ]
    replies = [
        ClientReply(
            10 + i,
            i,
            {n: GLOBAL[n] + decay[i][n] + data[i][n] for n in GLOBAL},
            _metrics(n=5 + i, pid=i),
            decay=decay[i],
        )
        for i in range(k)
    ]
    m = measure_round(GLOBAL, replies)
    assert m.parts is not None
    weights = [5, 6, 7, 8]
    # Data part = measured update − decay part (computed from the float32 weights we sent).
    updates = np.stack(
        [
            np.concatenate(
                [
                    (r.arrays[n].astype(np.float64) - GLOBAL[n]).ravel()  # type: ignore[index]
                    for n in GLOBAL
                ]
            )
            for r in replies
        ]
    )
    want_data = divergence_stats(updates - _flat(decay), weights)
    want_decay = divergence_stats(_flat(decay), weights)
    for name in want_data:
        assert m.parts.data.stats[name] == pytest.approx(want_data[name], rel=1e-5, abs=1e-9)
        assert m.parts.decay.stats[name] == pytest.approx(want_decay[name], rel=1e-6, abs=1e-9)
    # Every decay part is a negative multiple of w on the decayed tensor "a": cosine 1 with −w,
    # and all decay parts point the same way (the decoupled-decay claim, in its pure form).
    np.testing.assert_allclose(m.parts.decay_cosine_to_neg_weights, 1.0, rtol=1e-6)
    assert m.parts.decay.stats["mean_pairwise_cosine"] == pytest.approx(1.0)
    assert set(m.parts.decay_layers) == {"a", "b"}


def test_a_non_finite_decay_part_is_rejected() -> None:
    bad = {"a": np.full((2, 3), np.nan, np.float32)}
    reply = ClientReply(1, 0, GLOBAL, _metrics(), decay=bad)
    assert check_reply(reply, GLOBAL) == "decay part 'a' has non-finite values"


def test_divergence_can_be_limited_to_the_parameters() -> None:
    glob = {**GLOBAL, "running_mean": np.zeros(3, np.float32)}
    rng = np.random.default_rng(4)
    replies = [
        ClientReply(
            i,
            i,
            {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()},
            _metrics(pid=i),
        )
        for i in range(3)
    ]
    m = measure_round(glob, replies, only={"a", "b"})
    assert set(m.layers) == {"a", "b"}
    want = measure_round(
        GLOBAL,
        [
            ClientReply(
                r.node_id,
                r.partition_id,
                {k: r.arrays[k] for k in GLOBAL},  # type: ignore[index]
                r.metrics,
            )
            for r in replies
        ],
    )
    assert m.whole is not None and want.whole is not None
    assert m.whole.stats == pytest.approx(want.whole.stats)


def test_a_reply_from_an_unknown_node_is_rejected_not_filed_under_partition_0() -> None:
    replies = [
        ClientReply(5, 0, GLOBAL, _metrics(pid=0)),
        ClientReply(99, None, GLOBAL, _metrics()),
    ]
    m = measure_round(GLOBAL, replies)
    assert m.partition_ids == [0]
    assert m.rejections == [(None, 99, "node 99 holds none of this run's partitions")]
