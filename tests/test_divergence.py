"""divergence_stats against a plain numpy float64 implementation of docs/design.md's definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fedadamw.core.divergence import analyze, divergence_stats
from fedadamw.schema import STAT_NAMES


def reference(updates: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """The table of docs/design.md, term by term, in float64 (no Gram matrix, no shortcuts)."""
    d = updates.astype(np.float64)
    k = d.shape[0]
    n = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    p = n / n.sum()
    u = d / np.linalg.norm(d, axis=1, keepdims=True)
    pairs = [float(u[i] @ u[j]) for i, j in itertools.combinations(range(k), 2)]
    agg = (p[:, None] * d).sum(0)
    r = float(np.linalg.norm(u.mean(0)))
    return {
        "mean_pairwise_cosine": float(np.mean(pairs)),
        "min_pairwise_cosine": float(np.min(pairs)),
        "resultant_length": r,
        "dispersion": 1.0 - r,
        "mean_cosine_to_aggregate": float(sum(p[i] * u[i] @ agg for i in range(k)))
        / float(np.linalg.norm(agg)),
        "relative_drift": float(sum(p[i] * np.sum((d[i] - agg) ** 2) for i in range(k)))
        / float(agg @ agg),
        "gradient_diversity": float(np.sum(d**2)) / float(np.sum(d.sum(0) ** 2)),
        "mean_update_norm": float(np.linalg.norm(d, axis=1).mean()),
    }


@pytest.mark.parametrize("seed", range(5))
def test_matches_numpy_reference_on_random_updates(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, d = int(rng.integers(2, 12)), int(rng.integers(1, 3000))
    # A shared direction plus client noise, so cosines are neither all ~0 nor all ~1.
    updates = rng.normal(size=d) * rng.uniform(0, 2) + rng.normal(size=(k, d))
    weights = rng.integers(1, 500, size=k)
    got = divergence_stats(updates.astype(np.float32), weights)
    want = reference(updates.astype(np.float32), weights)
    assert set(got) == set(STAT_NAMES)
    for name in STAT_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), name


@pytest.mark.parametrize("k", [2, 3, 7, 20])
def test_identity_between_pairwise_cosine_and_resultant(k: int) -> None:
    updates = np.random.default_rng(k).normal(size=(k, 257))
    s = divergence_stats(updates)
    r = s["resultant_length"]
    assert s["mean_pairwise_cosine"] == pytest.approx((k * r * r - 1) / (k - 1), abs=1e-12)


def test_torch_input_chunking_and_layers_agree_with_whole() -> None:
    rng = np.random.default_rng(7)
    updates = rng.normal(size=(5, 1000)).astype(np.float32)
    weights = [3, 1, 4, 1, 5]
    whole = divergence_stats(torch.from_numpy(updates), weights)
    segments = {"a": slice(0, 10), "b": slice(10, 999), "c": slice(999, 1000)}
    from fedadamw.core.divergence import segment_grams

    small_chunks, _ = segment_grams(updates, chunk=7)
    full, per_layer = analyze(updates, weights, segments)
    for name in STAT_NAMES:
        assert full.stats[name] == pytest.approx(whole[name], rel=1e-12)
    assert np.allclose(small_chunks, updates.astype(np.float64) @ updates.astype(np.float64).T)
    for layer, sl in segments.items():
        want = reference(updates[:, sl], np.asarray(weights))
        for name in STAT_NAMES:
            assert per_layer[layer].stats[name] == pytest.approx(want[name], rel=1e-9), layer


def test_two_clients_pointing_opposite_ways() -> None:
    s = divergence_stats(np.array([[1.0, 2.0], [-2.0, -4.0]]))
    assert s["mean_pairwise_cosine"] == pytest.approx(-1.0)
    assert s["resultant_length"] == pytest.approx(0.0, abs=1e-12)
    assert s["dispersion"] == pytest.approx(1.0)
    # Δ̄ = (-0.5, -1): ΣpᵢΔᵢ·Δ̄/(‖Δᵢ‖‖Δ̄‖) = 0.5·(−1) + 0.5·(+1) = 0.
    assert s["mean_cosine_to_aggregate"] == pytest.approx(0.0, abs=1e-12)
    assert s["mean_update_norm"] == pytest.approx((math.sqrt(5) + math.sqrt(20)) / 2)


def test_identical_updates_do_not_diverge() -> None:
    row = np.random.default_rng(1).normal(size=50)
    s = divergence_stats(np.stack([row, row, row]))
    assert s["mean_pairwise_cosine"] == pytest.approx(1.0)
    assert s["min_pairwise_cosine"] == pytest.approx(1.0)
    assert s["dispersion"] == pytest.approx(0.0, abs=1e-12)
    assert s["relative_drift"] == pytest.approx(0.0, abs=1e-12)
    assert s["gradient_diversity"] == pytest.approx(1 / 3)
    assert s["mean_cosine_to_aggregate"] == pytest.approx(1.0)


def test_zero_update_has_no_direction() -> None:
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.0, 1.0, 0.0])
    s = divergence_stats(np.stack([a, b, np.zeros(3)]))
    # Pairs: (a,b) = 0, (a,0) = 0, (b,0) = 0 by the documented convention.
    assert s["mean_pairwise_cosine"] == 0.0
    assert s["resultant_length"] == pytest.approx(math.sqrt(2) / 3)
    assert all(math.isfinite(v) for v in s.values())


def test_all_zero_updates_have_no_direction_statistics() -> None:
    # The decay parts at λ = 0 or in mode none: NaN (stored NULL), not dispersion 1, cosine 0.
    d = analyze(np.zeros((3, 4)))[0]
    assert d.stats["mean_update_norm"] == 0.0
    undefined = {k: v for k, v in d.stats.items() if k != "mean_update_norm"}
    assert len(undefined) == 7 and all(math.isnan(v) for v in undefined.values())
    assert np.isnan(d.cosine).all() and np.isnan(d.cosine_to_aggregate).all()


def test_cancelling_updates_give_infinite_drift_and_no_aggregate_direction() -> None:
    s = divergence_stats(np.array([[1.0, 1.0], [-1.0, -1.0]]))
    assert s["relative_drift"] == math.inf
    assert s["gradient_diversity"] == math.inf
    assert math.isnan(s["mean_cosine_to_aggregate"])  # Δ̄ = 0 has no direction
    assert s["mean_pairwise_cosine"] == pytest.approx(-1.0)


def test_single_client_pairwise_stats_are_nan_by_definition() -> None:
    s = divergence_stats(np.array([[3.0, 4.0]]))
    assert math.isnan(s["mean_pairwise_cosine"]) and math.isnan(s["min_pairwise_cosine"])
    assert s["resultant_length"] == pytest.approx(1.0)
    assert s["mean_update_norm"] == pytest.approx(5.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_update_is_refused(bad: float) -> None:
    updates = np.ones((3, 4))
    updates[1, 2] = bad
    with pytest.raises(ValueError, match=r"rows \[1\] are not finite"):
        divergence_stats(updates)


def test_bad_shapes_and_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one client"):
        divergence_stats(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"\(K, d\)"):
        divergence_stats(np.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        divergence_stats(np.ones((2, 3)), [1, -1])


def test_at_scale_float32_products_stay_within_float_tolerance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many clients: float32 chunk products (summed in float64), upper-triangle blocks."""
    from fedadamw.core import divergence

    monkeypatch.setattr(divergence, "FLOAT32_PRODUCTS_ABOVE", 0)  # as if K²·d were huge
    rng = np.random.default_rng(7)
    k, d = divergence.ROW_BLOCK + 44, 1500  # two row blocks, the second one ragged
    scale = np.exp(rng.normal(size=d))  # weights of very different sizes, as in real models
    updates = ((0.3 * rng.normal(size=d) + rng.normal(size=(k, d))) * scale).astype(np.float32)
    weights = rng.integers(1, 500, size=k)
    gram, _ = divergence.segment_grams(updates, chunk=256)
    exact = updates.astype(np.float64) @ updates.astype(np.float64).T
    norms = np.sqrt(np.diag(exact))
    assert np.abs(gram - gram.T).max() == 0.0  # mirrored blocks: exactly symmetric
    assert np.abs((gram - exact) / np.outer(norms, norms)).max() < 1e-6
    got, want = divergence.from_gram(gram, weights).stats, reference(updates, weights)
    for name in STAT_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-7), name
