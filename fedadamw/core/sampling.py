"""Who trains in a round and how much work each client does: all seeded, all by partition id.

Both arms of a paired comparison call these with the same arguments, so they see the same
clients, the same dropouts, the same stragglers and the same batch sizes in every round,
whatever node ids the runtime gave those clients. Each draw has its own stream (the last
entry of the seed sequence), so turning one kind of heterogeneity on does not reshuffle another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

_SAMPLE, _DROPOUT, _STRAGGLER, _BATCH, _PAIRS = 0x5A3, 0xD40, 0x57A, 0xBA7, 0x9A1


def sample_partitions(seed: int, server_round: int, available: Iterable[int], k: int) -> list[int]:
    """`k` of the `available` partition ids (all of them if fewer), sorted."""
    pool = sorted(set(available))
    if k >= len(pool):
        return pool
    rng = np.random.default_rng([seed, server_round, _SAMPLE])
    return sorted(int(i) for i in rng.choice(pool, size=k, replace=False))


def pair_partitions(
    seed: int, server_round: int, partition_ids: Iterable[int], limit: int
) -> list[int]:
    """The clients whose pairwise cosines a round stores: all, or a seeded `limit` of them.

    The store keeps every pair among these (a whole sub-matrix, which the dashboard draws);
    both arms of a comparison keep the same clients' pairs. Statistics never depend on it.
    """
    pool = sorted(set(partition_ids))
    if len(pool) <= limit:
        return pool
    rng = np.random.default_rng([seed, server_round, _PAIRS])
    return sorted(int(i) for i in rng.choice(pool, size=limit, replace=False))


def dropped_partitions(
    seed: int, server_round: int, sampled: Sequence[int], rate: float
) -> list[int]:
    """The sampled partitions that drop out of this round (each independently, with `rate`)."""
    if rate <= 0.0:
        return []
    return [
        p
        for p in sampled
        if np.random.default_rng([seed, server_round, p, _DROPOUT]).random() < rate
    ]


def work_fraction(seed: int, server_round: int, partition_id: int, straggler_rate: float) -> float:
    """Share of its local steps a client does this round: 1, or U(0, 1) for a straggler.

    FedProx (Li et al., 2020) makes a share of devices stragglers that do less local work;
    here a straggler's share of its steps is drawn uniformly, so work varies continuously.
    """
    if straggler_rate <= 0.0:
        return 1.0
    rng = np.random.default_rng([seed, server_round, partition_id, _STRAGGLER])
    is_straggler, share = rng.random() < straggler_rate, float(rng.random())
    return max(share, 1e-9) if is_straggler else 1.0


def local_steps(num_examples: int, batch_size: int, local_epochs: int, fraction: float) -> int:
    """Steps a client takes: ⌈fraction · epochs · batches⌉, at least one."""
    full = local_epochs * math.ceil(num_examples / batch_size)
    return max(1, math.ceil(fraction * full))


def client_batch_size(seed: int, partition_id: int, choices: Sequence[int], default: int) -> int:
    """A client's own batch size, drawn once from `choices` (fixed across rounds)."""
    if not choices:
        return default
    rng = np.random.default_rng([seed, partition_id, _BATCH])
    return int(choices[int(rng.integers(len(choices)))])
