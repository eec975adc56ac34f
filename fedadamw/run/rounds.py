"""A round's measurement as the store's rows: `RoundMeasurement` -> `RoundRecord`, nothing else.

A pure mapping (no model, no store, no Flower): the recorder evaluates the global model and
hands the evaluation's values, the strategy's measurement of the round and how to word a
rejection; what comes back is written in one transaction (`ResultStore.write_round`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from fedadamw import schema
from fedadamw.core.sampling import pair_partitions
from fedadamw.results.writer import RoundRecord
from fedadamw.schema import SHRINK_COLUMNS

if TYPE_CHECKING:
    from fedadamw.core.updates import RoundMeasurement


def round_record(
    run_id: str,
    server_round: int,
    evaluation: Mapping[str, float | int | None],
    m: RoundMeasurement | None,
    *,
    seed: int,
    pairs_limit: int,
    reason: Callable[[str, int | None], str],
) -> RoundRecord:
    """The rows of `server_round`: `evaluation`'s values (test/validation metrics, seconds)
    plus, from round 1 on, what `m` measured; `reason(text, partition_id)` words a rejection
    for the store (the recorder's logs the full text of a long one)."""
    values: dict[str, float | int | None] = dict(evaluation)
    rec = RoundRecord(run_id, server_round, values)
    if m is None or server_round < 1:
        return rec
    values["train_loss"] = m.train_loss()
    values["num_clients"] = len(m.accepted)
    values["num_rejected"] = len(m.rejections)
    rec.rejections = [(pid, node, reason(text, pid)) for pid, node, text in m.rejections]
    if m.whole is not None:
        values.update(m.whole.stats)
        pids = m.partition_ids
        rec.clients = [
            {
                "partition_id": r.partition_id,
                "num_examples": int(r.metrics[schema.NUM_EXAMPLES]),
                "train_loss": float(r.metrics[schema.TRAIN_LOSS]),
                "local_steps": int(r.metrics[schema.LOCAL_STEPS]),
                "batch_size": _opt_int(r.metrics.get(schema.BATCH_SIZE)),
                "work_fraction": _opt_float(r.metrics.get(schema.WORK_FRACTION)),
                "train_seconds": _opt_float(r.metrics.get(schema.TRAIN_SECONDS)),
                schema.OPTIMIZER_STEPS_COLUMN: _opt_int(r.metrics.get(schema.OPTIMIZER_STEPS)),
                "update_norm": float(m.whole.norms[i]),
                "cosine_to_aggregate": float(m.whole.cosine_to_aggregate[i]),
                schema.EFFECTIVE_SHRINK: m.client_shrink[i] if m.client_shrink else None,
                schema.CLIENT_DECAY_COLUMN: _opt_float(r.metrics.get(schema.CLIENT_WEIGHT_DECAY)),
            }
            for i, r in enumerate(m.accepted)
        ]
        values[schema.EFFECTIVE_SHRINK] = m.effective_shrink
        rec.layers = {name: dict(d.stats) for name, d in m.layers.items()}
        if m.parts is not None:
            _add_parts(values, rec, m)
        # Every pair up to `pairs-limit` clients, then the pairs of a seeded subset of
        # that many: K²/2 rows a round would be 500,000 at 1,000 clients.
        keep = set(pair_partitions(seed, server_round, pids, pairs_limit))
        rows = [i for i, pid in enumerate(pids) if pid in keep]
        rec.pairs = [
            (pids[i], pids[j], float(m.whole.cosine[i, j]))
            for a, i in enumerate(rows)
            for j in rows[a + 1 :]
        ]
    return rec


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _add_parts(
    values: dict[str, float | int | None], rec: RoundRecord, m: RoundMeasurement
) -> None:
    """The decay/data split of a round (track-decay): prefixed statistics and per-client parts."""
    parts = m.parts
    assert parts is not None
    for prefix, div, layers in (
        ("decay_", parts.decay, parts.decay_layers),
        ("data_", parts.data, parts.data_layers),
    ):
        values.update({prefix + k: v for k, v in div.stats.items()})
        for name, layer in layers.items():
            rec.layers[name].update({prefix + k: v for k, v in layer.stats.items()})
    cosines = parts.decay_cosine_to_neg_weights
    # Zero decay parts have no direction (NaN): the mean is over the others, NaN if none.
    values["decay_cosine_to_neg_weights"] = (
        float(np.nanmean(cosines)) if np.isfinite(cosines).any() else float("nan")
    )
    for i, row in enumerate(rec.clients):
        row["decay_norm"] = float(parts.decay.norms[i])
        row["decay_cosine_to_neg_weights"] = float(parts.decay_cosine_to_neg_weights[i])
        for q, column in zip(schema.SHRINK_QUANTILES, SHRINK_COLUMNS, strict=True):
            row[column] = _opt_float(m.accepted[i].metrics.get(schema.shrink_key(q)))
    # The round's shrink quantiles: the median over clients of each client's quantile.
    for column in SHRINK_COLUMNS:
        per_client = [r[column] for r in rec.clients if r[column] is not None]
        values[column] = float(np.median(per_client)) if per_client else None
