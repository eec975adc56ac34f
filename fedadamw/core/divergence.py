"""How far client updates spread apart: every statistic from one K×K Gram matrix.

K clients, Δᵢ their flattened updates, pᵢ = nᵢ/Σn, uᵢ = Δᵢ/‖Δᵢ‖, Δ̄ = Σ pᵢΔᵢ (docs/design.md):

====================== ==========================================
mean_pairwise_cosine   mean over i<j of uᵢ·uⱼ
min_pairwise_cosine    min over i<j of uᵢ·uⱼ
resultant_length       ‖(1/K) Σ uᵢ‖ ∈ [0, 1]
dispersion             1 − resultant_length
mean_cosine_to_aggregate Σ pᵢ · uᵢ·Δ̄/‖Δ̄‖
relative_drift         Σ pᵢ‖Δᵢ − Δ̄‖² / ‖Δ̄‖²
gradient_diversity     Σ‖Δᵢ‖² / ‖Σ Δᵢ‖²  (Yin et al.)
mean_update_norm       (1/K) Σ ‖Δᵢ‖
====================== ==========================================

All of them are functions of G = [Δᵢ·Δⱼ], accumulated in float64 over column chunks on the
updates' device, so K×K×d is never materialised and a large model costs one pass. The cost is
O(K²·d): at scale (more than `FLOAT32_PRODUCTS_ABOVE` multiply-adds, e.g. K = 100 clients of
a 270k-parameter model) each chunk's product is taken in float32 on the CPU, about twice as
fast, and only summed in float64 (each entry within ~1e-7 of the float64 product, relative to
‖Δᵢ‖‖Δⱼ‖); on a GPU and below that size every product is float64. With many clients only the
upper triangle of blocks is multiplied (G is symmetric).

Edge cases are defined; NaN means "undefined by definition" (the store writes NULL, readers
show "—", means and comparisons skip it), never an accident:

- K = 0 or a non-finite update: ``ValueError`` (the server rejects such updates before this).
- K = 1: the two pairwise statistics are NaN (there is no pair); the others keep their
  formulas (resultant_length = 1 for a non-zero update).
- Every update zero (e.g. the decay parts at λ = 0 or in mode ``none``, a bias's decay part):
  nothing has a direction, so every statistic but mean_update_norm (0) is NaN, and so are the
  cosines.
- One zero update among non-zero ones: uᵢ = 0, so its cosine with anything is 0. The identity
  mean_pairwise_cosine = (K·R² − 1)/(K − 1) holds when no update is zero.
- A zero aggregate Δ̄ with some non-zero update: the aggregate has no direction, so
  mean_cosine_to_aggregate (and each client's cosine to it) is NaN; relative_drift is +inf, and
  so is gradient_diversity when ΣΔᵢ = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedadamw.schema import STAT_NAMES

DEFAULT_CHUNK = 1 << 15  # columns per Gram chunk: K×2¹⁵ float64 is 2.5 MiB for K = 10
# K²·d multiply-adds above which CPU products are float32 (about 1 s of float64 on 2 cores).
FLOAT32_PRODUCTS_ABOVE = 1 << 31
ROW_BLOCK = 256  # rows per block of the upper-triangle products (many clients)


@dataclass(frozen=True)
class Divergence:
    """The statistics of one set of updates plus the per-client and pairwise pieces."""

    stats: dict[str, float]
    cosine: np.ndarray  # (K, K) uᵢ·uⱼ, diagonal 1 for non-zero updates
    norms: np.ndarray  # (K,) ‖Δᵢ‖
    cosine_to_aggregate: np.ndarray  # (K,) uᵢ·Δ̄/‖Δ̄‖


def _as_tensor(updates: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = updates if isinstance(updates, torch.Tensor) else torch.from_numpy(np.asarray(updates))
    if t.ndim != 2:
        raise ValueError(f"updates must be a (K, d) matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("updates is empty: divergence needs at least one client")
    bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"updates rows {bad} are not finite; reject them before measuring")
    return t


def _normalised_weights(weights: Sequence[float] | np.ndarray | None, k: int) -> np.ndarray:
    if weights is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != k:
        raise ValueError(f"weights has {w.shape[0]} entries for {k} updates")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return np.asarray(w / w.sum(), dtype=np.float64)


def segment_grams(
    updates: torch.Tensor | np.ndarray,
    segments: Mapping[str, slice] | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The whole-row Gram matrix and one per column segment (e.g. per parameter tensor).

    Each column is read once; products are accumulated in float64.
    """
    t = _as_tensor(updates)
    k, d = t.shape
    exact = t.device.type != "cpu" or k * k * d <= FLOAT32_PRODUCTS_ABOVE
    dtype = torch.float64 if exact or t.dtype == torch.float64 else torch.float32
    parts = dict(segments or {})
    grams = {name: torch.zeros(k, k, dtype=torch.float64, device=t.device) for name in parts}
    total = torch.zeros(k, k, dtype=torch.float64, device=t.device)
    bounds = sorted(
        (s.start or 0, s.stop if s.stop is not None else d, n) for n, s in parts.items()
    )
    for start, stop, name in bounds:
        for c in range(start, stop, chunk):
            _add_gram(grams[name], t[:, c : min(stop, c + chunk)].to(dtype))
    covered = sum(stop - start for start, stop, _ in bounds)
    if parts and covered == d:
        for g in grams.values():
            total += g  # the segments tile the row: their Grams add up to the whole one
    else:
        for c in range(0, d, chunk):
            _add_gram(total, t[:, c : c + chunk].to(dtype))
    return total.cpu().numpy(), {n: g.cpu().numpy() for n, g in grams.items()}


def _add_gram(gram: torch.Tensor, block: torch.Tensor) -> None:
    """gram += block·blockᵀ, the product in block's dtype, the sum in float64."""
    k = block.shape[0]
    if k <= ROW_BLOCK:
        gram += (block @ block.T).to(torch.float64)
        return
    for i in range(0, k, ROW_BLOCK):
        for j in range(i, k, ROW_BLOCK):
            part = (block[i : i + ROW_BLOCK] @ block[j : j + ROW_BLOCK].T).to(torch.float64)
            gram[i : i + ROW_BLOCK, j : j + ROW_BLOCK] += part
            if j != i:  # the mirror block, by symmetry
                gram[j : j + ROW_BLOCK, i : i + ROW_BLOCK] += part.T


def from_gram(gram: np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> Divergence:
    """Every statistic of the table above from G = [Δᵢ·Δⱼ] (float64) and example counts."""
    g = np.asarray(gram, dtype=np.float64)
    k = g.shape[0]
    if k == 0 or g.shape != (k, k):
        raise ValueError(f"gram must be a non-empty square matrix, got shape {g.shape}")
    p = _normalised_weights(weights, k)
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    nonzero = norms > 0
    inv = np.where(nonzero, 1.0 / np.where(nonzero, norms, 1.0), 0.0)
    cos = np.clip(g * inv[:, None] * inv[None, :], -1.0, 1.0)  # zero update → row of zeros

    if not nonzero.any():
        # No update has a direction: there is nothing to measure but their (zero) size.
        undefined = dict.fromkeys(STAT_NAMES, math.nan) | {"mean_update_norm": 0.0}
        return Divergence(undefined, np.full((k, k), math.nan), norms, np.full(k, math.nan))

    iu = np.triu_indices(k, 1)
    pair = cos[iu]
    mean_pair = float(pair.mean()) if k > 1 else math.nan
    min_pair = float(pair.min()) if k > 1 else math.nan
    resultant = math.sqrt(max(float(cos.sum()), 0.0)) / k

    gp = g @ p
    agg_sq = float(p @ gp)  # ‖Δ̄‖²
    if agg_sq > 0:
        agg_norm = math.sqrt(agg_sq)
        cos_agg = np.clip(gp * inv / agg_norm, -1.0, 1.0)
        drift_sq = np.clip(np.diag(g) - 2 * gp + agg_sq, 0.0, None)  # ‖Δᵢ − Δ̄‖²
        relative_drift = float(p @ drift_sq) / agg_sq
    else:
        cos_agg = np.full(k, math.nan)  # the aggregate has no direction
        relative_drift = math.inf
    sum_sq = float(g.sum())  # ‖Σ Δᵢ‖²
    diversity = float(np.trace(g)) / sum_sq if sum_sq > 0 else math.inf

    stats = {
        "mean_pairwise_cosine": mean_pair,
        "min_pairwise_cosine": min_pair,
        "resultant_length": resultant,
        "dispersion": 1.0 - resultant,
        "mean_cosine_to_aggregate": float(p @ cos_agg),  # NaN with a zero aggregate
        "relative_drift": relative_drift,
        "gradient_diversity": diversity,
        "mean_update_norm": float(norms.mean()),
    }
    return Divergence(stats=stats, cosine=cos, norms=norms, cosine_to_aggregate=cos_agg)


def divergence_stats(
    updates: torch.Tensor | np.ndarray, weights: Sequence[float] | np.ndarray | None = None
) -> dict[str, float]:
    """Every statistic of docs/design.md for a (K, d) matrix of flattened updates, by name."""
    gram, _ = segment_grams(updates)
    return from_gram(gram, weights).stats


def analyze(
    updates: torch.Tensor | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    segments: Mapping[str, slice] | None = None,
) -> tuple[Divergence, dict[str, Divergence]]:
    """Whole-model divergence and one per named column segment, from a single pass."""
    gram, grams = segment_grams(updates, segments)
    return from_gram(gram, weights), {n: from_gram(g, weights) for n, g in grams.items()}
