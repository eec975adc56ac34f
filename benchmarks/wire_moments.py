"""Bytes that optimizer-state = server-averaged adds to each client's messages, per round.

Builds a real train reply with `clients.app.train_reply` (one local step of `train_local`, so
Adam's second moments exist) and serializes it with Flower's own protobuf serde, with and
without the second-moment ArrayRecord; the server's train message carries the same record
back. Usage: python benchmarks/wire_moments.py
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity

from clients.app import train_reply
from fedadamw import schema
from fedadamw.core.models import build_model
from fedadamw.core.training import TrainSpec, train_local
from fedadamw.data import registry
from fedadamw.data.split import ArrayDataset


def _bytes(content: RecordDict) -> int:
    return int(recorddict_to_proto(content).ByteSize())


def measure(model_name: str, dataset: str) -> tuple[int, int, int]:
    """(parameters, reply bytes without v, bytes v adds) for one model."""
    data = registry.get(dataset)
    model = build_model(model_name, data.shape, data.num_classes, seed=0, norm="group")
    rng = np.random.default_rng(0)
    rows = ArrayDataset(
        rng.normal(size=(8, *data.shape)).astype(np.float32),
        rng.integers(0, data.num_classes, 8),
    )
    spec = TrainSpec("decoupled", 0.01, 0.01, 1, 8, 0, 0, 1, optimizer_state=schema.SERVER_AVERAGED)
    result = train_local(model, rows, spec, torch.device("cpu"))
    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    reply = train_reply(msg, spec, result, 0.0).content
    with_v = _bytes(reply)
    plain = RecordDict({k: v for k, v in reply.items() if k != schema.ADAM_V})
    plain_bytes = _bytes(plain)
    assert isinstance(reply[schema.ADAM_V], ArrayRecord)
    n = sum(p.numel() for p in model.parameters())
    return n, plain_bytes, with_v - plain_bytes


def main() -> None:
    """Print the table (docs/methods.md quotes it)."""
    # A message reads the running task's identity; outside Flower there is none.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    print(
        "| model | parameters | reply without v | v adds (reply; the train message adds the same) |"
    )
    print("| --- | ---: | ---: | ---: |")
    for model_name, dataset in (("cnn1d", "mnist1d"), ("resnet20", "cifar10")):
        n, plain, added = measure(model_name, dataset)
        print(f"| {model_name} | {n:,} | {plain:,} B | {added:,} B ({added / plain:.1%}) |")


if __name__ == "__main__":
    main()
