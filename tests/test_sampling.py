"""Seeded client sampling and system heterogeneity (dropout, stragglers, batch sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedadamw.config import Config
from fedadamw.core.models import MLP
from fedadamw.core.sampling import (
    client_batch_size,
    dropped_partitions,
    local_steps,
    sample_partitions,
    work_fraction,
)
from fedadamw.core.training import TrainSpec, train_local
from fedadamw.core.wire import TrainRequest
from fedadamw.data.split import ArrayDataset


def test_sampling_is_seeded_sized_and_uniform() -> None:
    pool = range(10)
    assert sample_partitions(1, 5, pool, 4) == sample_partitions(1, 5, reversed(pool), 4)
    assert sample_partitions(1, 5, pool, 4) != sample_partitions(1, 6, pool, 4)
    assert sample_partitions(1, 5, pool, 20) == list(pool)
    # Every partition is equally likely: 3 of 10 per round → 0.3 each (binomial 3σ bound).
    hits = np.zeros(10)
    rounds = 4000
    for rnd in range(rounds):
        hits[sample_partitions(0, rnd, pool, 3)] += 1
    assert np.all(np.abs(hits / rounds - 0.3) < 3 * math.sqrt(0.3 * 0.7 / rounds))


def test_dropout_rate_is_the_share_of_dropped_clients() -> None:
    rate, rounds = 0.25, 3000
    dropped = sum(len(dropped_partitions(7, r, range(10), rate)) for r in range(rounds))
    share = dropped / (10 * rounds)
    assert abs(share - rate) < 3 * math.sqrt(rate * (1 - rate) / (10 * rounds))
    assert dropped_partitions(7, 1, range(10), 0.0) == []


def test_stragglers_do_a_uniform_share_of_their_work() -> None:
    draws = np.array([work_fraction(3, r, p, 0.5) for r in range(400) for p in range(10)])
    stragglers = draws[draws < 1.0]
    assert abs(len(stragglers) / len(draws) - 0.5) < 0.04
    # U(0, 1): mean 1/2, and a Kolmogorov–Smirnov distance well under the 1% critical value.
    assert abs(stragglers.mean() - 0.5) < 0.03
    ecdf = np.arange(1, len(stragglers) + 1) / len(stragglers)
    assert np.max(np.abs(np.sort(stragglers) - ecdf)) < 1.63 / math.sqrt(len(stragglers))
    assert work_fraction(3, 1, 1, 0.0) == 1.0


def test_local_steps_formula() -> None:
    assert local_steps(100, 32, 2, 1.0) == 8  # ⌈100/32⌉ = 4 batches × 2 epochs
    assert local_steps(100, 32, 2, 0.3) == 3  # ⌈0.3 · 8⌉
    assert local_steps(100, 32, 2, 1e-9) == 1  # at least one step


def test_client_batch_sizes_are_per_client_and_fixed_across_rounds() -> None:
    cfg = Config.from_mapping({"client-batch-sizes": "8,64"})
    sizes = {p: client_batch_size(0, p, cfg.client_batch_size_list, 32) for p in range(40)}
    assert set(sizes.values()) == {8, 64}
    for rnd in (1, 2):
        for p in (0, 5):
            request = TrainRequest.from_wire(TrainRequest.from_config(cfg, "coupled").to_wire())
            assert request.train_spec(p, rnd).batch_size == sizes[p]
    assert client_batch_size(0, 3, [], 32) == 32


def test_a_straggler_stops_after_its_share_of_steps() -> None:
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(100, 40)).astype(np.float32), rng.integers(0, 10, 100))
    spec = TrainSpec("decoupled", 1e-3, 0.01, 2, 32, 0, 0, 1, work_fraction=0.3)
    result = train_local(MLP(), data, spec, device=None)
    assert result.local_steps == local_steps(100, 32, 2, 0.3) == 3
    full = train_local(MLP(), data, TrainSpec("decoupled", 1e-3, 0.01, 2, 32, 0, 0, 1))
    assert full.local_steps == 8


@pytest.mark.parametrize("bad", ["8,x", "0,16", "-4"])
def test_bad_batch_size_list_is_a_config_error(bad: str) -> None:
    from fedadamw.errors import ConfigError

    with pytest.raises(ConfigError, match="client-batch-sizes"):
        Config.from_mapping({"client-batch-sizes": bad})
