"""FedProx's Synthetic(α, β) (Li et al., 2020), generated client by client with its exact recipe.

For each client k: u_k ~ N(0, α), W_k ~ N(u_k, 1) of shape 60×10, b_k ~ N(u_k, 1)¹⁰,
B_k ~ N(0, β), v_k ~ N(B_k, 1)⁶⁰, x ~ N(v_k, Σ) with Σ = diag(j^−1.2),
y = argmax softmax(xW_k + b_k),
n_k = ⌊lognormal(4, 2)⌋ + 50 examples, each client's examples shuffled and split 90/10 train/test.
The IID variant shares one W, b ~ N(0, 1) and sets v_k = 0. As in the authors' generator
(`np.random.normal(0, alpha)`), the second argument of N(·, α) and N(·, β) is a standard deviation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedadamw.data.registry import DataSet

# The recipe's sizes; the registry record states them too (for the config, without numpy), and
# `fedadamw.data.split` checks every loaded data set against its record.
DIMENSION = 60
NUM_CLASSES = 10
TRAIN_FRACTION = 0.9


def load(
    data: DataSet,
    cache: Path,
    *,
    num_clients: int,
    synthetic_alpha: float,
    synthetic_beta: float,
    synthetic_iid: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    """The data set of a run: generated from its keys (fast, so not kept on disk)."""
    return generate(num_clients, synthetic_alpha, synthetic_beta, synthetic_iid, seed)


def generate(
    num_clients: int, alpha: float, beta: float, iid: bool, seed: int
) -> dict[str, np.ndarray]:
    """Train rows grouped by client (`groups`) and the union of the clients' test parts."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50
    std = np.arange(1, DIMENSION + 1, dtype=np.float64) ** -0.6  # Σ_jj = j^−1.2
    if iid:
        w_shared = rng.normal(0.0, 1.0, (DIMENSION, NUM_CLASSES))
        b_shared = rng.normal(0.0, 1.0, NUM_CLASSES)
        means = np.zeros((num_clients, DIMENSION))
    else:
        u = rng.normal(0.0, alpha, num_clients)
        big_b = rng.normal(0.0, beta, num_clients)
        means = rng.normal(big_b[:, None], 1.0, (num_clients, DIMENSION))
    xs, ys, groups, xs_test, ys_test, groups_test = [], [], [], [], [], []
    for k in range(num_clients):
        if iid:
            w, b = w_shared, b_shared
        else:
            w = rng.normal(u[k], 1.0, (DIMENSION, NUM_CLASSES))
            b = rng.normal(u[k], 1.0, NUM_CLASSES)
        n = int(sizes[k])
        x = means[k] + rng.standard_normal((n, DIMENSION)) * std
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: its argmax is the logits' argmax
        order = rng.permutation(n)
        cut = int(TRAIN_FRACTION * n)
        xs.append(x[order[:cut]])
        ys.append(y[order[:cut]])
        groups.append(np.full(cut, k))
        xs_test.append(x[order[cut:]])
        ys_test.append(y[order[cut:]])
        groups_test.append(np.full(n - cut, k))
    return {
        "x": np.concatenate(xs).astype(np.float32),
        "y": np.concatenate(ys).astype(np.int64),
        "groups": np.concatenate(groups).astype(np.int64),
        "x_test": np.concatenate(xs_test).astype(np.float32),
        "y_test": np.concatenate(ys_test).astype(np.int64),
        "groups_test": np.concatenate(groups_test).astype(np.int64),
    }
