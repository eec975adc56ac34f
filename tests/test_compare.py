"""Paired comparison across seeds against a direct numpy/scipy computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedadamw.config import Config
from fedadamw.results.compare import compare, paired_interval
from fedadamw.results.writer import ResultStore, RoundRecord


def test_paired_interval_matches_the_t_formula() -> None:
    d = np.random.default_rng(0).normal(0.1, 0.05, size=6)
    got = paired_interval(d.tolist())
    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert (got.mean, got.low, got.high, got.n) == pytest.approx(
        (d.mean(), d.mean() - half, d.mean() + half, 6)
    )
    one = paired_interval([0.2])
    assert one.n == 1 and math.isnan(one.low)


def _store(path: Path, accuracy: dict[tuple[str, float, int], float]) -> None:
    with ResultStore(path) as store:
        for (mode, lam, seed), acc in accuracy.items():
            cfg = Config.from_mapping({"arms": mode, "weight-decay": lam, "seed": seed})
            rid = f"x:{mode}:{lam}:{seed}"
            store.start_run(rid, "x", mode, mode, lam, cfg.to_json())
            for rnd, disp in ((1, 0.5 + lam), (2, 0.3 + lam)):
                store.write_round(
                    RoundRecord(rid, rnd, {"test_accuracy": acc * rnd / 2, "dispersion": disp})
                )
            store.finish_run(rid)


def test_matched_and_best_lambda_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    acc = {}
    for seed in range(4):
        for lam in (0.01, 0.1):
            acc[("coupled", lam, seed)] = 0.5 + 0.3 * lam + 0.01 * rng.normal()  # best at 0.1
            acc[("decoupled", lam, seed)] = 0.8 - 0.5 * lam + 0.01 * rng.normal()  # best at 0.01
    _store(tmp_path / "r.db", acc)
    rows = {(r.kind, r.lambda_a, r.lambda_b): r for r in compare(tmp_path / "r.db")}
    assert set(rows) == {
        ("matched λ", 0.01, 0.01),
        ("matched λ", 0.1, 0.1),
        ("best λ per mode", 0.1, 0.01),
    }
    best = rows[("best λ per mode", 0.1, 0.01)]
    want = [acc[("coupled", 0.1, s)] - acc[("decoupled", 0.01, s)] for s in range(4)]
    assert best.seeds == (0, 1, 2, 3)
    assert best.differences["final_accuracy"].mean == pytest.approx(np.mean(want))
    half = stats.t.ppf(0.975, 3) * np.std(want, ddof=1) / 2
    assert best.differences["final_accuracy"].high == pytest.approx(np.mean(want) + half)
    # dispersion = mean over rounds of (0.5+λ, 0.3+λ) → 0.4 + λ; coupled@0.1 − decoupled@0.01.
    assert best.differences["dispersion"].mean == pytest.approx(0.09)
    assert "decay_dispersion" not in best.differences  # not stored without track-decay


def test_unpaired_seeds_are_left_out(tmp_path: Path) -> None:
    _store(
        tmp_path / "r.db",
        {("coupled", 0.01, 0): 0.5, ("coupled", 0.01, 1): 0.6, ("decoupled", 0.01, 1): 0.7},
    )
    (row,) = compare(tmp_path / "r.db")
    assert row.seeds == (1,) and row.differences["final_accuracy"].mean == pytest.approx(-0.1)
