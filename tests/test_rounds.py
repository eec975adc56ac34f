"""run.rounds.round_record: a round's measurement as store rows, with no Flower, model or store.

Every expected value is written out or computed here from the inputs (numpy float64); the
measurement is built by hand, not by `measure_round`.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from fedadamw import schema
from fedadamw.core.divergence import Divergence
from fedadamw.core.updates import ClientReply, PartsMeasurement, RoundMeasurement
from fedadamw.results.writer import RoundRecord
from fedadamw.run.rounds import round_record

EVALUATION = {"test_loss": 1.25, "test_accuracy": 0.5, "val_loss": 1.5, "val_accuracy": 0.25}
PIDS = (4, 1, 7)  # partition order is the measurement's, not sorted
COUNTS = (10, 30, 60)
LOSSES = (0.9, 0.6, 0.3)


def _divergence(seed: int, prefix_value: float) -> Divergence:
    rng = np.random.default_rng(seed)
    cosine = rng.uniform(-1, 1, size=(3, 3))
    cosine = (cosine + cosine.T) / 2
    np.fill_diagonal(cosine, 1.0)
    return Divergence(
        stats={name: prefix_value + i for i, name in enumerate(schema.STAT_NAMES)},
        cosine=cosine,
        norms=rng.uniform(0.1, 2.0, size=3),
        cosine_to_aggregate=rng.uniform(-1, 1, size=3),
    )


def _reply(i: int, shrink: bool = False) -> ClientReply:
    metrics: dict[str, float | int] = {
        schema.NUM_EXAMPLES: COUNTS[i],
        schema.TRAIN_LOSS: LOSSES[i],
        schema.LOCAL_STEPS: 5 + i,
        schema.BATCH_SIZE: 32,
        schema.TRAIN_SECONDS: 0.5 * i,
        schema.OPTIMIZER_STEPS: 3 * i,
        schema.CLIENT_WEIGHT_DECAY: 0.01 * (i + 1),
    }
    if shrink:
        metrics |= {
            schema.shrink_key(q): (i + 1) * (k + 1) * 1e-3
            for k, q in enumerate(schema.SHRINK_QUANTILES)
        }
    return ClientReply(node_id=100 + PIDS[i], partition_id=PIDS[i], arrays={}, metrics=metrics)


def _measurement(parts: bool = False) -> RoundMeasurement:
    whole = _divergence(0, 10.0)
    m = RoundMeasurement(
        accepted=[_reply(i, shrink=parts) for i in range(3)],
        rejections=[(9, 109, "non-finite update"), (None, 200, "error reply: gone")],
        whole=whole,
        layers={"fc.weight": _divergence(1, 20.0), "fc.bias": _divergence(2, 30.0)},
        effective_shrink=0.125,
        client_shrink=[0.1, 0.2, 0.3],
    )
    if parts:
        m.parts = PartsMeasurement(
            decay=_divergence(3, 40.0),
            data=_divergence(4, 50.0),
            decay_layers={"fc.weight": _divergence(5, 60.0)},
            data_layers={"fc.weight": _divergence(6, 70.0)},
            decay_cosine_to_neg_weights=np.array([0.5, np.nan, -0.25]),
        )
    return m


def _record(
    m: RoundMeasurement | None, server_round: int = 3, pairs_limit: int = 100
) -> RoundRecord:
    return round_record(
        "exp:coupled:x",
        server_round,
        EVALUATION,
        m,
        seed=0,
        pairs_limit=pairs_limit,
        reason=lambda text, pid: f"{pid}|{text.upper()}",
    )


@pytest.mark.parametrize("server_round, m", [(0, _measurement()), (3, None)])
def test_round_zero_or_no_measurement_stores_the_evaluation_alone(
    server_round: int, m: RoundMeasurement | None
) -> None:
    rec = _record(m, server_round)
    assert (rec.run_id, rec.round) == ("exp:coupled:x", server_round)
    assert rec.values == EVALUATION and rec.values is not EVALUATION
    assert (rec.clients, rec.layers, rec.pairs, rec.rejections) == ([], {}, [], [])


def test_the_rounds_row_holds_the_weighted_loss_counts_and_statistics() -> None:
    m = _measurement()
    rec = _record(m)
    n, loss = np.array(COUNTS, np.float64), np.array(LOSSES, np.float64)
    assert rec.values["train_loss"] == pytest.approx(float((n * loss).sum() / n.sum()), rel=1e-15)
    assert rec.values["train_loss"] == pytest.approx((10 * 0.9 + 30 * 0.6 + 60 * 0.3) / 100)
    assert rec.values["num_clients"] == 3 and rec.values["num_rejected"] == 2
    assert rec.values[schema.EFFECTIVE_SHRINK] == 0.125
    for i, name in enumerate(schema.STAT_NAMES):
        assert rec.values[name] == 10.0 + i
    for key, value in EVALUATION.items():
        assert rec.values[key] == value
    # Each rejection worded by the caller's `reason`, with its partition and node.
    assert rec.rejections == [
        (9, 109, "9|NON-FINITE UPDATE"),
        (None, 200, "None|ERROR REPLY: GONE"),
    ]


def test_one_clients_row_per_accepted_reply_in_partition_order() -> None:
    m = _measurement()
    rec = _record(m)
    assert m.whole is not None
    assert [row["partition_id"] for row in rec.clients] == list(PIDS)
    for i, row in enumerate(rec.clients):
        assert row["num_examples"] == COUNTS[i] and row["train_loss"] == LOSSES[i]
        assert row["local_steps"] == 5 + i and row["batch_size"] == 32
        assert row["work_fraction"] is None  # not reported: NULL, not 0
        assert row["train_seconds"] == 0.5 * i
        assert row[schema.OPTIMIZER_STEPS_COLUMN] == 3 * i
        assert row[schema.CLIENT_DECAY_COLUMN] == pytest.approx(0.01 * (i + 1))
        assert row["update_norm"] == float(m.whole.norms[i])
        assert row["cosine_to_aggregate"] == float(m.whole.cosine_to_aggregate[i])
        assert row[schema.EFFECTIVE_SHRINK] == [0.1, 0.2, 0.3][i]
        assert "decay_norm" not in row  # no decay parts measured
    assert rec.layers == {
        "fc.weight": {name: 20.0 + i for i, name in enumerate(schema.STAT_NAMES)},
        "fc.bias": {name: 30.0 + i for i, name in enumerate(schema.STAT_NAMES)},
    }


def test_every_pair_up_to_the_limit_then_a_subset_of_that_many_clients() -> None:
    m = _measurement()
    assert m.whole is not None
    rec = _record(m)
    want = [(PIDS[i], PIDS[j], float(m.whole.cosine[i, j])) for i, j in combinations(range(3), 2)]
    assert rec.pairs == want
    limited = _record(m, pairs_limit=2).pairs
    assert len(limited) == 1  # the one pair of the 2 kept clients
    assert limited[0] in want


def test_the_decay_and_data_parts_are_prefixed_and_their_shrink_is_the_clients_median() -> None:
    m = _measurement(parts=True)
    assert m.parts is not None
    rec = _record(m)
    for i, name in enumerate(schema.STAT_NAMES):
        assert rec.values["decay_" + name] == 40.0 + i
        assert rec.values["data_" + name] == 50.0 + i
        assert rec.layers["fc.weight"]["decay_" + name] == 60.0 + i
        assert rec.layers["fc.weight"]["data_" + name] == 70.0 + i
        assert "decay_" + name not in rec.layers["fc.bias"]
    # NaN (a zero decay part) is left out of the mean.
    assert rec.values["decay_cosine_to_neg_weights"] == pytest.approx((0.5 - 0.25) / 2)
    for i, row in enumerate(rec.clients):
        assert row["decay_norm"] == float(m.parts.decay.norms[i])
        for k, column in enumerate(schema.SHRINK_COLUMNS):
            assert row[column] == pytest.approx((i + 1) * (k + 1) * 1e-3)
    for k, column in enumerate(schema.SHRINK_COLUMNS):
        # median over the three clients of (i + 1)(k + 1)e-3, i = 0, 1, 2: the middle one
        assert rec.values[column] == pytest.approx(2 * (k + 1) * 1e-3)
