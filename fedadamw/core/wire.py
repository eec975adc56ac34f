"""The wire format between server and clients, as plain dicts (no flwr import here).

The server sends every value a client needs in the message's ConfigRecord, so simulation and
deployment behave the same: a remote client needs no file from the server's disk. Its partition
id comes from its own node config (`partition-id`), set by Flower's simulation engine or by
`flower-supernode --node-config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedadamw.config import Config
from fedadamw.core.sampling import client_batch_size, work_fraction
from fedadamw.core.training import TrainSpec
from fedadamw.data.split import DataSpec
from fedadamw.errors import ConfigError


def train_config(cfg: Config, mode: str) -> dict[str, Any]:
    """What every client of one arm receives each round (Flower adds `server-round`)."""
    return {
        "mode": mode,
        "weight-decay": cfg.weight_decay,
        "learning-rate": cfg.learning_rate,
        "local-epochs": cfg.local_epochs,
        "batch-size": cfg.batch_size,
        "seed": cfg.seed,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "num-partitions": cfg.num_clients,
        "partitioner": cfg.partitioner,
        "dirichlet-alpha": cfg.dirichlet_alpha,
        "classes-per-client": cfg.classes_per_client,
        "shards-per-client": cfg.shards_per_client,
        "min-partition-size": cfg.min_partition_size,
        "synthetic-alpha": cfg.synthetic_alpha,
        "synthetic-beta": cfg.synthetic_beta,
        "synthetic-iid": cfg.synthetic_iid,
        "resnet-norm": cfg.resnet_norm,
        "straggler-rate": cfg.straggler_rate,
        "client-batch-sizes": cfg.client_batch_sizes,
        "track-decay": cfg.track_decay,
    }


@dataclass(frozen=True)
class ClientTask:
    """A client's reading of a train message."""

    data: DataSpec
    model: str
    train: TrainSpec
    resnet_norm: str


def parse_train_config(config: Mapping[str, Any], partition_id: int) -> ClientTask:
    """Turn a received ConfigRecord into typed specs, or raise ConfigError naming the key."""

    def get(key: str, kind: type) -> Any:
        if key not in config:
            raise ConfigError(f"train message lacks config key {key!r}")
        value = config[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"train message key {key!r}: {value!r} is not a {kind.__name__}")
        return value

    data = DataSpec(
        dataset=get("dataset", str),
        num_clients=get("num-partitions", int),  # the key deployed clients read
        partitioner=get("partitioner", str),
        dirichlet_alpha=get("dirichlet-alpha", float),
        classes_per_client=get("classes-per-client", int),
        shards_per_client=get("shards-per-client", int),
        min_partition_size=get("min-partition-size", int),
        seed=get("seed", int),
        synthetic_alpha=get("synthetic-alpha", float),
        synthetic_beta=get("synthetic-beta", float),
        synthetic_iid=get("synthetic-iid", bool),
    )
    server_round = get("server-round", int)
    try:
        choices = [int(b) for b in get("client-batch-sizes", str).split(",") if b.strip()]
    except ValueError:
        raise ConfigError(
            "train message key 'client-batch-sizes' is not a list of integers"
        ) from None
    train = TrainSpec(
        mode=get("mode", str),
        learning_rate=get("learning-rate", float),
        weight_decay=get("weight-decay", float),
        local_epochs=get("local-epochs", int),
        batch_size=client_batch_size(data.seed, partition_id, choices, get("batch-size", int)),
        seed=data.seed,
        partition_id=partition_id,
        server_round=server_round,
        work_fraction=work_fraction(
            data.seed, server_round, partition_id, get("straggler-rate", float)
        ),
        track_decay=get("track-decay", bool),
    )
    return ClientTask(
        data=data, model=get("model", str), train=train, resnet_norm=get("resnet-norm", str)
    )
