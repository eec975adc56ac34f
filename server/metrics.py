"""The train replies' metrics as the server reads and aggregates them."""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedadamw import schema


def scalar(record: MetricRecord, key: str) -> float:
    """One numeric metric (a MetricRecord value may also be a list)."""
    value = record[key]
    if isinstance(value, list):
        raise ValueError(f"metric {key!r} is a list, expected a number")
    return float(value)


def aggregate_client_metrics(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Loss is example-weighted; counts are summed; ids are not averaged (FedAvg would)."""
    records = [next(iter(r.metric_records.values())) for r in replies]
    n = np.asarray([scalar(m, weighted_by_key) for m in records])
    loss = np.asarray([scalar(m, schema.TRAIN_LOSS) for m in records])
    return MetricRecord(
        {
            schema.TRAIN_LOSS: float((n * loss).sum() / n.sum()),
            schema.NUM_EXAMPLES: int(n.sum()),
            schema.LOCAL_STEPS: int(sum(scalar(m, schema.LOCAL_STEPS) for m in records)),
        }
    )
