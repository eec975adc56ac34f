"""The probe view (statistic against λ) from hand-built probe rows, against numpy and scipy.

The probe table holds one row per (run, checkpoint round, mode, η, λ); the figure draws, per
(mode, round), the mean over the runs with a Student-t band. The reference here is a float64
numpy mean of the input rows and scipy's own t interval, never the code under test.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from fedadamw.viz import figures
from fedadamw.viz.style import mode_color, stat_label, stat_range
from tests.test_figures import decode, spec

MODES = ("coupled", "decoupled", "none", "sgd-coupled", "sgd-decoupled")
LAMBDAS = (0.0, 1e-4, 1e-3, 1e-2, 0.1)
RATES = (0.001, 0.01)
ROUNDS = (10, 50)


def probe_rows(runs: int = 4, sources: tuple[str, ...] = ("",), seed: int = 0) -> pd.DataFrame:
    """Probe rows as the probes table holds them: every statistic a different random value."""
    rng = np.random.default_rng(seed)
    rows = []
    for src, run, rnd, mode, rate in itertools.product(sources, range(runs), ROUNDS, MODES, RATES):
        for lam in (0.0,) if mode == "none" else LAMBDAS:
            row: dict[str, Any] = {
                "run_id": f"{src}run{run}",
                "round": rnd,
                "mode": mode,
                "learning_rate": rate,
                "weight_decay": lam,
                "seed": run,
                "arm": src or "decoupled",
            }
            for stat in figures.PROBE_STATS:
                row[stat] = float(rng.uniform(0.1, 0.6))
            if src:
                row[figures.SOURCE] = src
            rows.append(row)
    return pd.DataFrame(rows)


def groups(df: pd.DataFrame, stat: str) -> dict[tuple[Any, ...], np.ndarray]:
    """The input values of each (source, η, mode, round, λ), in float64."""
    out: dict[tuple[Any, ...], list[float]] = {}
    for row in df.itertuples():
        src = getattr(row, figures.SOURCE, "")
        key = (src, row.learning_rate, row.mode, row.round, row.weight_decay)
        out.setdefault(key, []).append(float(getattr(row, stat)))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


# Where each statistic lives (docs/design.md): a band is clipped to it.
RANGES = {
    "mean_pairwise_cosine": (-1.0, 1.0),
    "decay_share": (0.0, math.inf),
    "total_shrink": (0.0, math.inf),
}


def scipy_interval(values: np.ndarray, stat: str = "") -> tuple[float, float]:
    """scipy's 95% Student-t interval of the mean, clipped to the statistic's range."""
    lo, hi = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=values.mean(), scale=scipy_stats.sem(values)
    )
    low, high = RANGES.get(stat, (-math.inf, math.inf))
    return float(np.clip(lo, low, high)), float(np.clip(hi, low, high))


def panel_of(trace: dict[str, Any], rates: list[float], sources: list[str]) -> tuple[str, float]:
    """(source, η) of a trace from its axis: panels are filled row by row, η across columns."""
    k = int(trace.get("xaxis", "x")[1:] or 1) - 1
    return sources[k // len(rates)], rates[k % len(rates)]


def line_key(trace: dict[str, Any]) -> tuple[str, int]:
    mode, rnd = str(trace["name"]).split(" · round ")
    return mode, int(rnd)


@pytest.mark.parametrize("stat", ["mean_pairwise_cosine", "decay_share", "total_shrink"])
def test_lines_are_numpy_means_and_bands_scipy_t_intervals(stat: str) -> None:
    df = probe_rows(runs=4)
    if stat == "decay_share":  # near 0 with a wide spread: the band meets the range's edge
        df[stat] = np.abs(df[stat] - 0.1) ** 2
    ref = groups(df, stat)
    data = spec(figures.probe_figure(df, stat))["data"]
    rates = sorted(RATES)
    checked = set()
    bands = clipped = 0
    for trace in data:
        _src, rate = panel_of(trace, rates, [""])
        meta = trace.get("meta") or {}
        if meta.get("probe") == "lambda":
            mode, rnd = line_key(trace)
            x, y = decode(trace["x"]), decode(trace["y"])
            expect = [ref[("", rate, mode, rnd, lam)].mean() for lam in x]
            np.testing.assert_allclose(y, expect, rtol=1e-12)
            checked |= {("", rate, mode, rnd, float(lam)) for lam in x}
        elif meta.get("probe") == "zero":
            mode, rnd = line_key(trace)
            values = ref[("", rate, mode, rnd, 0.0)]
            (y,) = decode(trace["y"])
            assert y == pytest.approx(values.mean(), rel=1e-12)
            lo, hi = scipy_interval(values, stat)
            (plus,), (minus,) = (
                decode(trace["error_y"]["array"]),
                decode(trace["error_y"]["arrayminus"]),
            )
            assert (y + plus, y - minus) == pytest.approx((hi, lo), rel=1e-10)
            assert meta["band"] == "ci"
            checked.add(("", rate, mode, rnd, 0.0))
        elif trace.get("fill") == "toself":  # the band of a λ > 0 line
            mode, band_round = str(trace["name"]).removesuffix(" 95% CI").split(" · round ")
            x, y = decode(trace["x"]), decode(trace["y"])
            half = len(x) // 2
            for lam, top, bottom in zip(x[:half], y[:half], y[half:][::-1], strict=True):
                lo, hi = scipy_interval(ref[("", rate, mode, int(band_round), lam)], stat)
                assert (top, bottom) == pytest.approx((hi, lo), rel=1e-10)
                bands += 1
                clipped += lo == RANGES[stat][0]
    assert bands == len(RATES) * len(ROUNDS) * (len(MODES) - 1) * (len(LAMBDAS) - 1)
    assert clipped > 0 or stat != "decay_share"  # the clipped case is exercised
    # every probed point is drawn, λ = 0 included: none is dropped from the log axis
    assert checked == set(ref)


def test_lambda_zero_has_its_own_tick_left_of_the_smallest_lambda() -> None:
    df = probe_rows(runs=3)
    fig = spec(figures.probe_figure(df, "mean_pairwise_cosine"))
    smallest = min(v for v in LAMBDAS if v > 0)
    for axis in ("xaxis", "xaxis2"):
        ax = fig["layout"][axis]
        assert ax["type"] == "log"
        assert ax["ticktext"][0] == "0"
        assert decode(ax["tickvals"])[0] == pytest.approx(smallest / 10)
        assert list(ax["ticktext"][1:]) == [f"{v:g}" for v in LAMBDAS if v > 0]
    zeros = [t for t in fig["data"] if (t.get("meta") or {}).get("probe") == "zero"]
    # one marker per (mode, round) and η, each within ±0.2 decade of the "0" tick, none joined
    assert len(zeros) == len(MODES) * len(ROUNDS) * len(RATES)
    for t in zeros:
        (x,) = decode(t["x"])
        assert abs(math.log10(x / (smallest / 10))) <= 0.2 + 1e-12 and x < smallest
        assert t["mode"] == "markers"
    lines = [t for t in fig["data"] if (t.get("meta") or {}).get("probe") == "lambda"]
    assert all(min(decode(t["x"])) > 0 for t in lines)
    # `none` has no decay: only its λ = 0 marker, no line
    assert not any(line_key(t)[0] == "none" for t in lines)


def test_each_mode_keeps_its_colour_and_each_round_its_dash() -> None:
    df = probe_rows(runs=3)
    lines = [
        t
        for t in spec(figures.probe_figure(df, "dispersion"))["data"]
        if (t.get("meta") or {}).get("probe") == "lambda"
    ]
    dash: dict[int, set[str]] = {}
    for t in lines:
        mode, rnd = line_key(t)
        assert t["line"]["color"] == mode_color(mode)
        dash.setdefault(rnd, set()).add(t["line"]["dash"])
    assert [len(d) for d in dash.values()] == [1, 1] and dash[ROUNDS[0]] != dash[ROUNDS[1]]


def test_few_runs_get_their_min_max_and_a_note_that_says_so() -> None:
    df = probe_rows(runs=2)
    ref = groups(df, "client_loss_change")
    fig = spec(figures.probe_figure(df, "client_loss_change"))
    zeros = [t for t in fig["data"] if (t.get("meta") or {}).get("probe") == "zero"]
    for t in zeros:
        mode, rnd = line_key(t)
        rate = panel_of(t, sorted(RATES), [""])[1]
        values = ref[("", rate, mode, rnd, 0.0)]
        (y,) = decode(t["y"])
        (plus,), (minus,) = decode(t["error_y"]["array"]), decode(t["error_y"]["arrayminus"])
        assert (y + plus, y - minus) == pytest.approx((values.max(), values.min()), rel=1e-12)
        assert t["meta"]["band"] == "minmax"
    note = figures.probe_band_note(df)
    assert "min–max of the 2 runs" in note and "error bars at λ = 0" in note
    assert "one run per point" in figures.probe_band_note(probe_rows(runs=1))


def test_each_probed_arm_gets_its_own_row_of_panels_never_averaged_together() -> None:
    df = probe_rows(runs=3, sources=("coupled", "decoupled"))
    fig = spec(figures.probe_figure(df, "shrink_cosine"))
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles == [f"{s} · η = {r:g}" for s in ("coupled", "decoupled") for r in sorted(RATES)]
    ref = groups(df, "shrink_cosine")
    sources = ["coupled", "decoupled"]
    for t in fig["data"]:
        if (t.get("meta") or {}).get("probe") == "lambda":
            src, rate = panel_of(t, sorted(RATES), sources)
            mode, rnd = line_key(t)
            expect = [ref[(src, rate, mode, rnd, lam)].mean() for lam in decode(t["x"])]
            np.testing.assert_allclose(decode(t["y"]), expect, rtol=1e-12)


def test_one_eta_and_one_arm_is_one_panel_labelled_on_its_axis() -> None:
    df = probe_rows(runs=3)
    df = df[df["learning_rate"] == RATES[0]]
    fig = spec(figures.probe_figure(df, "aggregate_loss_change"))
    assert "annotations" not in fig["layout"] or not fig["layout"]["annotations"]
    assert fig["layout"]["yaxis"]["title"]["text"] == stat_label("aggregate_loss_change")
    assert fig["layout"]["xaxis"]["title"]["text"] == "weight decay λ"


def test_probe_statistics_have_labels_and_ranges() -> None:
    # decay_share is a statistic of its own, not the decay part of a statistic "share"
    assert stat_label("decay_share") == "decay share ‖Δ_decay‖/‖Δ‖"
    assert stat_range("shrink_cosine") == (-1.0, 1.0)
    assert stat_range("decay_share")[0] == 0.0
    assert all(not stat_label(s).startswith("decay part") for s in figures.PROBE_STATS)


def test_a_setting_probed_by_two_engines_counts_once() -> None:
    # The same (run, round, setting) measured by both engines is one measurement, not two runs.
    vmap = probe_rows(runs=3).assign(engine="vmap")
    flower = probe_rows(runs=3, seed=1).assign(engine="flower")
    flower = flower[flower["run_id"] == "run0"]  # flower probed one run only
    both = pd.concat([vmap, flower], ignore_index=True)
    assert figures.probe_engine(both) == "vmap" and figures.probe_engine(vmap) is None
    ref = groups(vmap, "mean_pairwise_cosine")
    for t in spec(figures.probe_figure(both, "mean_pairwise_cosine"))["data"]:
        if (t.get("meta") or {}).get("probe") == "lambda":
            rate = panel_of(t, sorted(RATES), [""])[1]
            mode, rnd = line_key(t)
            expect = [ref[("", rate, mode, rnd, lam)].mean() for lam in decode(t["x"])]
            np.testing.assert_allclose(decode(t["y"]), expect, rtol=1e-12)
    assert figures.probe_band_note(both).endswith("engine vmap drawn (probed by several)")
