"""Tuned-vs-tuned comparison against direct numpy/scipy computations and hand-made stores."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedadamw.config import Config
from fedadamw.errors import ConfigError
from fedadamw.results.compare import SHRINK_TOLERANCE, compare, parse_seeds
from fedadamw.results.compare_render import render
from fedadamw.results.stats import holm, paired_t_pvalue, t_interval
from fedadamw.results.writer import ResultStore, RoundRecord

ROUNDS = 8


def test_the_paired_interval_matches_the_t_formula() -> None:
    d = np.random.default_rng(0).normal(0.1, 0.05, size=6)
    got = t_interval(d.tolist())  # what compare applies to the paired differences
    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert (got.mean, got.low, got.high, got.n) == pytest.approx(
        (d.mean(), d.mean() - half, d.mean() + half, 6)
    )
    one = t_interval([0.2])
    assert one.n == 1 and math.isnan(one.low)


def test_paired_t_pvalue_is_scipys_paired_t_test() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.5, 0.1, 5), rng.normal(0.45, 0.1, 5)
    assert paired_t_pvalue((a - b).tolist()) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert math.isnan(paired_t_pvalue([0.3]))
    assert paired_t_pvalue([0.0, 0.0, 0.0]) == 1.0 and paired_t_pvalue([0.2, 0.2]) == 0.0


def test_holm_against_a_hand_computed_example() -> None:
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04).
    got = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert got[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(got[4])  # not a test: neither adjusted nor counted
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1


def _store(path: Path, runs: Mapping[tuple[str, float, float, int], Mapping[str, object]]) -> None:
    """Runs keyed (mode, η, λ, seed); values per column: a number, or a list over the rounds."""
    with ResultStore(path) as store:
        for (mode, lr, lam, seed), columns in runs.items():
            cfg = Config.from_mapping(
                {"arms": mode, "learning-rate": lr, "weight-decay": lam, "seed": seed}
            )
            rid = f"x:{mode}:{lr}:{lam}:{seed}"
            store.start_run(rid, "x", mode, mode, lam, cfg.to_json())
            for rnd in range(1, ROUNDS + 1):
                values = {k: (v[rnd - 1] if isinstance(v, list) else v) for k, v in columns.items()}
                store.write_round(RoundRecord(rid, rnd, values))
            store.finish_run(rid)


def _ramp(final: float) -> list[float]:
    """Accuracy that climbs to `final` over the rounds (only the last five count)."""
    return [final - 0.02 * (ROUNDS - r) for r in range(1, ROUNDS + 1)]


def test_selects_on_validation_and_scores_the_last_rounds_on_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {}
    test = {}
    for seed in range(4):
        for lam in (0.01, 0.1):
            # coupled: validation prefers λ = 0.1, test would prefer λ = 0.01 (must not matter)
            val_c = 0.6 if lam == 0.1 else 0.5
            test_c = 0.5 if lam == 0.1 else 0.7
            test[("coupled", lam, seed)] = _ramp(test_c + 0.01 * rng.normal())
            runs[("coupled", 0.01, lam, seed)] = {
                "val_accuracy": _ramp(val_c),
                "test_accuracy": test[("coupled", lam, seed)],
                "dispersion": 0.4 + lam,
            }
            test[("decoupled", lam, seed)] = _ramp(0.8 - lam + 0.01 * rng.normal())
            runs[("decoupled", 0.01, lam, seed)] = {
                "val_accuracy": _ramp(0.8 - lam),
                "test_accuracy": test[("decoupled", lam, seed)],
                "dispersion": [0.3, *([0.2] * (ROUNDS - 1))],
                "decay_dispersion": None,  # undefined in every round: skipped, not 0
            }
    _store(tmp_path / "r.db", runs)
    report = compare(tmp_path / "r.db", final_rounds=5)
    assert report.selected_on == "validation"
    chosen = {s.mode: s.point for s in report.selections}
    assert chosen == {"coupled": (0.01, 0.1), "decoupled": (0.01, 0.01)}
    rows = {r.measure: r for r in report.rows}
    assert set(rows) == {"test_accuracy", "dispersion"}  # decay parts are all NULL
    want = [
        float(np.mean(test[("coupled", 0.1, s)][-5:]) - np.mean(test[("decoupled", 0.01, s)][-5:]))
        for s in range(4)
    ]
    acc = rows["test_accuracy"]
    assert acc.seeds == (0, 1, 2, 3) and acc.difference.mean == pytest.approx(np.mean(want))
    half = stats.t.ppf(0.975, 3) * np.std(want, ddof=1) / 2
    assert acc.difference.high == pytest.approx(np.mean(want) + half)
    disp_b = (0.3 + 0.2 * (ROUNDS - 1)) / ROUNDS  # mean over every trained round
    assert rows["dispersion"].difference.mean == pytest.approx(0.5 - disp_b)
    # Holm over the two tests of the table.
    p = [paired_t_pvalue(want), rows["dispersion"].p_value]
    assert [acc.p_holm, rows["dispersion"].p_holm] == pytest.approx(holm(p))


def test_lambda_zero_is_never_a_decay_modes_pick(tmp_path: Path) -> None:
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {}
    for seed in range(3):
        runs[("coupled", 0.01, 0.0, seed)] = {"val_accuracy": 0.9, "test_accuracy": 0.9}
        runs[("coupled", 0.01, 0.05, seed)] = {"val_accuracy": 0.5, "test_accuracy": 0.5}
        runs[("decoupled", 0.01, 0.0, seed)] = {"val_accuracy": 0.9, "test_accuracy": 0.9}
        runs[("none", 0.01, 0.0, seed)] = {"val_accuracy": 0.9, "test_accuracy": 0.9 + seed}
    _store(tmp_path / "r.db", runs)
    report = compare(tmp_path / "r.db", "coupled", ["decoupled", "none"])
    chosen = {s.mode: s.point for s in report.selections}
    assert chosen == {"coupled": (0.01, 0.05), "none": (0.01, 0.0)}  # none has no λ to tune
    assert any("decoupled ran no λ > 0" in n for n in report.notes)
    assert {(r.mode_b, r.point_a) for r in report.rows} == {("none", (0.01, 0.05))}


def test_nominal_and_shrink_matching(tmp_path: Path) -> None:
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {}
    shrink = {
        ("coupled", 0.001): 5e-5,  # nearest decoupled: λ = 0.001 at 1e-5, 5× off: too far
        ("coupled", 0.01): 2.5e-3,  # nearest decoupled: λ = 0.1 at 1e-3, 2.5× off: a pair
        ("decoupled", 0.001): 1e-5,
        ("decoupled", 0.1): 1e-3,
    }
    for seed in range(3):
        for (mode, lam), s in shrink.items():
            runs[(mode, 0.01, lam, seed)] = {
                "val_accuracy": 0.5,
                "test_accuracy": 0.5 + lam + 0.01 * seed * (mode == "coupled"),
                "effective_shrink": s,
            }
    _store(tmp_path / "r.db", runs)
    nominal = compare(tmp_path / "r.db", match="nominal")
    assert {(r.point_a, r.point_b) for r in nominal.rows} == {((0.01, 0.001), (0.01, 0.001))}
    matched = compare(tmp_path / "r.db", match="shrink")
    assert 2.5 < SHRINK_TOLERANCE < 5
    (row,) = [r for r in matched.rows if r.measure == "test_accuracy"]
    assert (row.point_a, row.point_b) == ((0.01, 0.01), (0.01, 0.1))
    assert (row.shrink_a, row.shrink_b) == pytest.approx((2.5e-3, 1e-3))
    assert row.difference.mean == pytest.approx(0.01 - 0.1 + 0.01)  # seeds add 0, .01, .02
    assert any("no decoupled point within" in n for n in matched.notes)


def test_undefined_measures_and_unpaired_seeds_are_left_out(tmp_path: Path) -> None:
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {
        ("coupled", 0.01, 0.01, 0): {"test_accuracy": 0.5},
        ("coupled", 0.01, 0.01, 1): {"test_accuracy": 0.6},
        ("decoupled", 0.01, 0.01, 1): {"test_accuracy": 0.7},
    }
    _store(tmp_path / "r.db", runs)
    report = compare(tmp_path / "r.db")
    assert report.selected_on == "test"  # nothing held out: flagged as optimistic
    assert any("optimistic" in n for n in report.notes)
    (row,) = report.rows
    assert row.seeds == (1,) and row.difference.mean == pytest.approx(-0.1)
    assert math.isnan(row.p_value) and math.isnan(row.p_holm) and report.tests == 0


def _grid_store(path: Path) -> None:
    rng = np.random.default_rng(7)
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {}
    for seed in range(3):
        for mode in ("coupled", "decoupled"):
            for lr in (0.001, 0.01):
                for lam in (0.001, 0.1):
                    runs[(mode, lr, lam, seed)] = {
                        "val_accuracy": float(rng.uniform(0.3, 0.9)),
                        "test_accuracy": float(rng.uniform(0.3, 0.9)),
                        "dispersion": float(rng.uniform(0.2, 0.6)),
                        "decay_dispersion": float(rng.uniform(0.0, 0.6)),
                        "data_dispersion": float(rng.uniform(0.2, 0.6)),
                        "effective_shrink": lr * lam,
                    }
    _store(path, runs)


def test_every_format_carries_the_same_numbers(tmp_path: Path) -> None:
    _grid_store(tmp_path / "r.db")
    report = compare(tmp_path / "r.db", match="nominal")
    assert len(report.rows) == 4 * 4 and report.tests == 16
    data = json.loads(render(report, "json"))
    assert data["final_rounds"] == 5 and data["tests"] == 16
    assert [r["p_holm"] for r in data["rows"]] == pytest.approx([r.p_holm for r in report.rows])
    table = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert [float(r["mean"]) for r in table] == [r.difference.mean for r in report.rows]
    assert {r["a_weight-decay"] for r in table} == {"0.001", "0.1"}
    markdown = render(report, "markdown")
    assert "final-rounds = 5" in markdown and "over the 16 tests" in markdown
    assert markdown.count("\n| ") == 2 + 2 + 2 + 16  # two headers and rules, their rows
    # --points: every point of each mode, the cells of its η × λ heatmap (2 η × 2 λ each).
    assert render(report, "markdown", points=True).count("\n| ") == 2 + 2 + 2 + 16 + 2 + 8
    cells = json.loads(render(report, "json", points=True))["points"]
    assert len(cells) == 8 and {c["mode"] for c in cells} == {"coupled", "decoupled"}


def test_the_table_keeps_every_number_in_a_pipe_at_120_columns(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    out.mkdir()
    _grid_store(out / "results.db")
    env = {**os.environ, "COLUMNS": "120"}
    argv = [sys.executable, "-m", "fedadamw.cli", "compare", str(out), "--match", "nominal"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 120
    assert "final-rounds = 5" in proc.stdout and "…" not in proc.stdout
    for row in compare(out / "results.db", match="nominal").rows:
        assert str(row.difference) in proc.stdout  # whole, on one line
    bad = subprocess.run(
        [*argv, "--final-rounds", "0"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and bad.stderr.strip().endswith("expected an integer >= 1")


def test_labels_name_only_the_keys_a_setting_used() -> None:
    """An IID split has no α, FedAvg no momentum: a label never names a value the run ignored."""
    import pandas as pd

    from fedadamw.results.compare import _labels
    from fedadamw.results.summaries import condition_labels, setting_labels
    from fedadamw.schema import key_applies

    iid = {"partitioner": "iid", "dirichlet-alpha": 0.3, "server-optimizer": "fedavg"}
    skewed = {"partitioner": "dirichlet", "dirichlet-alpha": 0.1, "server-optimizer": "fedavg"}
    momentum = {**skewed, "server-optimizer": "fedavgm", "server-momentum": 0.9}
    assert not key_applies("dirichlet-alpha", iid) and key_applies("dirichlet-alpha", skewed)
    assert not key_applies("server-momentum", skewed) and key_applies("server-momentum", momentum)
    assert key_applies("dirichlet-alpha", {"dirichlet-alpha": 0.3})  # a store older than the key
    assert key_applies("learning-rate", iid)  # no condition: always
    settings = [json.dumps(c, sort_keys=True) for c in (iid, skewed)]
    assert list(_labels(settings).values()) == [
        "partitioner=iid",
        "dirichlet-alpha=0.1 partitioner=dirichlet",
    ]
    runs = pd.DataFrame(
        {
            "setting": settings,
            "config": [iid, skewed],
            "condition": ["a", "b"],
            "mode": ["decoupled", "decoupled"],
            "experiment": ["x", "x"],
        }
    )
    assert list(setting_labels(runs).values()) == [
        "partitioner=iid",
        "dirichlet-alpha=0.1 · partitioner=dirichlet",
    ]
    assert condition_labels(runs) == {
        "a": "decoupled · partitioner=iid",
        "b": "decoupled · dirichlet-alpha=0.1 · partitioner=dirichlet",
    }


def test_runs_shorter_than_the_final_rounds_window_are_noted(tmp_path: Path) -> None:
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {}
    for seed in range(3):
        runs[("coupled", 0.01, 0.1, seed)] = {"val_accuracy": 0.5, "test_accuracy": _ramp(0.6)}
        runs[("decoupled", 0.01, 0.1, seed)] = {"val_accuracy": 0.5, "test_accuracy": 0.5}
    _store(tmp_path / "r.db", runs)
    long = compare(tmp_path / "r.db", final_rounds=ROUNDS)
    assert not any("fewer than final-rounds" in n for n in long.notes)
    short = compare(tmp_path / "r.db", final_rounds=ROUNDS + 2)
    assert any(
        f"6 run(s) have fewer than final-rounds = {ROUNDS + 2} trained rounds (as few as {ROUNDS})"
        in n
        for n in short.notes
    )
    # the mean is then over every stored round: the formula on the ramp
    (row,) = [r for r in short.rows if r.measure == "test_accuracy"]
    assert row.difference.mean == pytest.approx(np.mean(_ramp(0.6)) - 0.5)


def test_compare_during_a_live_run_says_nothing_has_finished(tmp_path: Path) -> None:
    cfg = Config.from_mapping({"arms": "coupled"})
    with ResultStore(tmp_path / "r.db") as store:
        store.start_run("x:coupled:1", "x", "coupled", "coupled", 0.1, cfg.to_json())
        store.write_round(RoundRecord("x:coupled:1", 1, {"test_accuracy": 0.5}))
        report = compare(tmp_path / "r.db")  # the writer is still open: the run is running
    assert report.rows == []
    assert any("no run has finished yet" in n for n in report.notes)
    assert not any("no validation accuracy" in n for n in report.notes)


def test_held_out_seeds_select_on_one_set_and_score_on_the_other(tmp_path: Path) -> None:
    runs: dict[tuple[str, float, float, int], dict[str, object]] = {}
    for seed in range(6):
        select = seed < 3
        for lam in (0.01, 0.1):
            # The selection seeds prefer λ = 0.1 for coupled; the report seeds would prefer
            # λ = 0.01 by far, on validation too: reading them would change the pick.
            good = (lam == 0.1) if select else (lam == 0.01)
            runs[("coupled", 0.01, lam, seed)] = {
                "val_accuracy": (0.9 if good else 0.3) if select else (0.95 if good else 0.1),
                "test_accuracy": 0.5 + 0.01 * seed + (0.2 if lam == 0.1 else 0.0),
            }
            runs[("decoupled", 0.01, lam, seed)] = {
                "val_accuracy": 0.8 if lam == 0.01 else 0.2,
                "test_accuracy": 0.6 + 0.02 * seed,
            }
    _store(tmp_path / "r.db", runs)
    report = compare(tmp_path / "r.db", select_seeds={0, 1, 2}, report_seeds={3, 4, 5})
    chosen = {s.mode: s.point for s in report.selections}
    assert chosen == {"coupled": (0.01, 0.1), "decoupled": (0.01, 0.01)}
    acc = next(r for r in report.rows if r.measure == "test_accuracy")
    assert acc.seeds == (3, 4, 5)
    want = [(0.5 + 0.01 * s + 0.2) - (0.6 + 0.02 * s) for s in (3, 4, 5)]
    assert acc.difference.mean == pytest.approx(float(np.mean(want)))
    # Selecting on every seed picks the other coupled point: the report seeds outvote.
    pooled = {s.mode: s.point for s in compare(tmp_path / "r.db").selections}
    assert pooled["coupled"] == (0.01, 0.01)
    with pytest.raises(ConfigError, match="share seeds \\[3\\]"):
        compare(tmp_path / "r.db", select_seeds={0, 3}, report_seeds={3, 4})


def test_seed_sets_are_parsed_and_bad_ones_refused() -> None:
    assert parse_seeds("0-4,7", "--select-seeds") == frozenset({0, 1, 2, 3, 4, 7})
    for bad in ("4-0", "a", "-1", ","):
        with pytest.raises(ConfigError, match="--select-seeds"):
            parse_seeds(bad, "--select-seeds")
