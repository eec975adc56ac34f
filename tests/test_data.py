"""MNIST-1D generation and the flwr-datasets partitioners, checked against their definitions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedadamw.config import Config
from fedadamw.core.wire import TrainRequest
from fedadamw.data.split import (
    DataSpec,
    _split_partitions,
    holdout,
    label_histogram,
    load_partition,
    load_splits,
    partition_indices,
    prepare,
)
from fedadamw.errors import ConfigError


def _spec(**overrides: object) -> DataSpec:
    return DataSpec.from_config(Config.from_mapping(dict(overrides)))


def test_mnist1d_has_the_standard_sizes_and_ten_balanced_classes() -> None:
    train, test = load_splits("mnist1d")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.x.shape == (4000, 40) and train.x.dtype == np.float32
    assert sorted(np.unique(train.y).tolist()) == list(range(10))
    # The generator makes 500 per class over both splits.
    both = np.concatenate([train.y, test.y])
    assert np.bincount(both).tolist() == [500] * 10


@pytest.mark.parametrize(
    "partitioner", ["iid", "dirichlet", "pathological", "shards", "exponential", "linear"]
)
def test_partitions_are_disjoint_and_cover_the_train_split(partitioner: str) -> None:
    spec = _spec(partitioner=partitioner, **{"num-clients": 5})
    parts = partition_indices(spec)
    assert len(parts) == 5
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))
    if partitioner != "pathological":  # it may leave classes nobody was assigned unused
        assert len(joined) == 4000


def test_pathological_clients_see_only_their_classes() -> None:
    spec = _spec(partitioner="pathological", **{"classes-per-client": 2})
    hist = label_histogram(spec)
    assert ((hist > 0).sum(axis=1) <= 2).all()


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_max_share(alpha: float) -> float:
        hist = label_histogram(_spec(**{"dirichlet-alpha": alpha}))
        return float((hist.max(1) / hist.sum(1)).mean())

    assert mean_max_share(0.1) > mean_max_share(1.0) > mean_max_share(100.0)


def test_split_is_seeded() -> None:
    a = partition_indices(_spec(seed=1))
    b = partition_indices(_spec(seed=1))
    c = partition_indices(_spec(seed=2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_partition_rows_match_the_indices() -> None:
    spec = _spec()
    train, _ = load_splits("mnist1d")
    part = load_partition(spec, 3)
    np.testing.assert_array_equal(part.y, train.y[holdout(spec, 3)[0]])
    assert load_partition(spec, 3) is part  # cached per process, not rebuilt per message


def test_iid_is_balanced_and_its_row_order_is_seeded() -> None:
    parts = partition_indices(_spec(partitioner="iid", **{"num-clients": 6}))
    assert sorted(len(p) for p in parts) == [666] * 2 + [667] * 4  # 4000 rows, 6 clients
    # Shuffled with the seed, not cut from the generator's order: rows spread over the split.
    assert all(p.max() - p.min() > 3000 for p in parts)
    other = partition_indices(_spec(partitioner="iid", seed=1, **{"num-clients": 6}))
    assert not np.array_equal(np.sort(parts[0]), np.sort(other[0]))


@pytest.mark.parametrize(
    ("partitioner", "n", "weight"),
    [("linear", 6, lambda i: i + 1.0), ("exponential", 5, lambda i: np.exp(i + 1.0))],
)
def test_quantity_skew_sizes_follow_the_size_function(
    partitioner: str, n: int, weight: object
) -> None:
    # Size of client i: ⌊4000·w(i)/Σw⌋, the rounding remainder going to the last (largest) one.
    w = np.array([weight(i) for i in range(n)])  # type: ignore[operator]
    expected = np.floor(4000 * w / w.sum()).astype(int)
    expected[-1] += 4000 - expected.sum()
    parts = partition_indices(_spec(partitioner=partitioner, **{"num-clients": n}))
    assert [len(p) for p in parts] == expected.tolist()
    # Sizes are skewed, labels are not: every client sees every class.
    assert (label_histogram(_spec(partitioner=partitioner, **{"num-clients": n})) > 0).all()


def test_shards_give_each_client_its_number_of_label_sorted_shards() -> None:
    spec = _spec(partitioner="shards", **{"num-clients": 8, "shards-per-client": 2})
    parts = partition_indices(spec)
    # Shard size ⌊4000 / (8·2)⌋ = 250 < each class (~400): a shard spans at most two labels.
    assert [len(p) for p in parts] == [500] * 8
    assert ((label_histogram(spec) > 0).sum(axis=1) <= 4).all()
    # With one shard each, a client holds one contiguous run of the label-sorted rows.
    one = _spec(
        partitioner="shards", **{"num-clients": 10, "shards-per-client": 1, "val-fraction": 0.0}
    )
    for row in label_histogram(one):
        labels = np.flatnonzero(row)
        assert row.sum() == 400 and labels.tolist() == list(range(labels[0], labels[-1] + 1))


IMPOSSIBLE: list[tuple[dict[str, object], str]] = [
    # e¹ / Σe^(i+1) of 4,000 rows is less than one example for the first of 10 clients.
    ({"partitioner": "exponential"}, "partitioner 'exponential' failed"),
    ({"partitioner": "linear", "min-partition-size": 500}, "min-partition-size: 500"),
    ({"partitioner": "shards", "shards-per-client": 500}, "shards-per-client: 500 is not"),
    ({"partitioner": "pathological", "classes-per-client": 11}, "mnist1d has 10 classes"),
    ({"num-clients": 4001, "partitioner": "iid"}, "num-clients: 4001 is not allowed"),
    # 401 × 10 > 4,000: the message names both keys and the largest federation that fits.
    ({"num-clients": 401}, "min-partition-size: 10 is not allowed with num-clients=401"),
    (
        {
            "dataset": "synthetic",
            "model": "logreg",
            "partitioner": "natural-id",
            "min-partition-size": 10**6,
        },
        "natural clients with at least min-partition-size",
    ),
]


@pytest.mark.parametrize(("values", "message"), IMPOSSIBLE)
def test_impossible_splits_are_one_line_config_errors(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        partition_indices(DataSpec.from_config(Config.from_mapping(values)))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_clients_rebuild_the_servers_data_spec_from_the_train_message() -> None:
    cfg = Config.from_mapping(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "partitioner": "natural-id",
            "synthetic-alpha": 0.5,
            "synthetic-beta": 0.25,
            "synthetic-iid": True,
            "shards-per-client": 3,
            "resnet-norm": "group",
        }
    )
    record = {**TrainRequest.from_config(cfg, "decoupled").to_wire(), "server-round": 1}
    request = TrainRequest.from_wire(record)
    assert request.data == DataSpec.from_config(cfg) == prepare(cfg)
    assert request.resnet_norm == "group"


@pytest.mark.parametrize("clients", [100, 400])
def test_many_dirichlet_clients_work_with_the_default_min_partition_size(clients: int) -> None:
    # flwr-datasets gives up after 10 draws (some Dirichlet(0.3) share of 4,000 rows is always
    # under 10 for 100 clients); the small shares are then topped up from the largest ones.
    spec = _spec(**{"num-clients": clients})
    parts = partition_indices(spec)
    rows = np.concatenate(parts)
    assert len(parts) == clients and min(len(p) for p in parts) >= 10
    assert len(rows) == len(np.unique(rows)) == 4000  # still disjoint, still every row
    again = _split_partitions(spec)  # made again, not read from a cache: seeded
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    # Against the draw without a floor: a small client gains exactly what it lacked, a large
    # one only gives rows away; every other row stays where the Dirichlet draw put it.
    draw = _split_partitions(dataclasses.replace(spec, min_partition_size=0))
    for got, drawn in zip(parts, draw, strict=True):
        gained, lost = np.setdiff1d(got, drawn), np.setdiff1d(drawn, got)
        assert len(gained) == max(0, 10 - len(drawn))
        assert len(gained) == 0 or len(lost) == 0
    assert sum(max(0, 10 - len(d)) for d in draw) > 0  # the draw did need topping up
