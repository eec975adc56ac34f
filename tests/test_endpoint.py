"""The declared endpoint: its [endpoint] table, the window, the Holm family compare adjusts over,
descriptive rows, ηλT per point and the power note, against numpy/scipy references."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedadamw.cli import _keep_endpoint, main
from fedadamw.config import Config
from fedadamw.errors import ConfigError
from fedadamw.results.compare import compare
from fedadamw.results.compare_render import render
from fedadamw.results.endpoint import (
    ENDPOINT_FILE,
    Endpoint,
    parse_endpoint,
    parse_window,
    read_endpoint,
)
from fedadamw.results.stats import detectable_difference, paired_t_pvalue
from fedadamw.results.writer import ResultStore, RoundRecord
from fedadamw.run.experiment import load

ROUNDS = 10
MODES = {"coupled": 1e-4, "decoupled": 0.1, "none": 0.0}
Runs = dict[tuple[str, float, int], dict[str, list[float]]]


def _store(path: Path, runs: Runs, clients: int = 0) -> None:
    """Runs keyed (mode, λ, seed); per column its value in each of the ROUNDS rounds.

    With `clients`, each round stores that many client rows (effective shrink, local steps)."""
    with ResultStore(path) as store:
        for (mode, lam, seed), columns in runs.items():
            cfg = Config.from_mapping({"arms": mode, "weight-decay": lam, "seed": seed})
            rid = f"x:{mode}:{lam}:{seed}"
            store.start_run(rid, "x", mode, mode, lam, cfg.to_json())
            for rnd in range(1, ROUNDS + 1):
                values = {k: v[rnd - 1] for k, v in columns.items() if not k.startswith("c_")}
                rows = [
                    {
                        "partition_id": i,
                        "effective_shrink": columns["c_shrink"][rnd - 1] * (1 + i),
                        "local_steps": 5 + i,
                    }
                    for i in range(clients)
                ]
                store.write_round(RoundRecord(rid, rnd, values, clients=rows))
            store.finish_run(rid)


def _runs(seeds: int = 5, rng_seed: int = 0) -> Runs:
    rng = np.random.default_rng(rng_seed)
    runs: Runs = {}
    for seed in range(seeds):
        for mode, lam in MODES.items():
            level = {"coupled": 0.30, "decoupled": 0.25, "none": 0.28}[mode]
            runs[(mode, lam, seed)] = {
                "mean_pairwise_cosine": list(level + 0.02 * rng.normal(size=ROUNDS)),
                "dispersion": list(0.5 + 0.02 * rng.normal(size=ROUNDS)),
                "decay_dispersion": list(0.99 + 0.001 * rng.normal(size=ROUNDS)),
                "test_accuracy": list(0.6 + 0.02 * rng.normal(size=ROUNDS)),
                "val_accuracy": list(0.6 + 0.02 * rng.normal(size=ROUNDS)),
                "train_loss": list(np.linspace(1.0, 0.1, ROUNDS) + 0.01 * seed),
            }
    return runs


def _holm_reference(p: list[float]) -> list[float]:
    """Holm's step-down in float64, written out independently of fedadamw.results.stats."""
    order = np.argsort(p)
    m = len(p)
    adjusted = np.minimum(1.0, (m - np.arange(m)) * np.asarray(p)[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(adjusted)
    return list(out)


def test_the_declared_family_is_exactly_what_holm_adjusts_over(tmp_path: Path) -> None:
    runs = _runs()
    _store(tmp_path / "r.db", runs)
    endpoint = Endpoint()
    report = compare(tmp_path / "r.db", endpoint=endpoint)
    primary = [r for r in report.rows if r.role == "primary"]
    assert [(r.mode_a, r.mode_b) for r in primary] == list(endpoint.family)
    assert all(r.measure == "mean_pairwise_cosine" for r in primary) and report.tests == 3
    assert [r.p_holm for r in primary] == pytest.approx(
        _holm_reference([r.p_value for r in primary]), rel=1e-12
    )
    secondary = [r for r in report.rows if r.role == "secondary"]
    assert {r.measure for r in secondary} == {"dispersion", "test_accuracy"}
    assert len(secondary) == 6  # their own family: 2 measures × 3 comparisons
    assert [r.p_holm for r in secondary] == pytest.approx(
        _holm_reference([r.p_value for r in secondary]), rel=1e-12
    )
    text = render(report, "markdown")
    assert "Holm-adjusted over the 3 tests of the declared family" in text


def test_mean_pairwise_cosine_is_the_numpy_mean_of_the_stored_column_over_the_window(
    tmp_path: Path,
) -> None:
    runs = _runs()
    _store(tmp_path / "r.db", runs)
    for text, last in (("last-20%", 2), ("last-3", 3), ("all", ROUNDS), ("last-25%", 3)):
        report = compare(tmp_path / "r.db", endpoint=Endpoint(window=parse_window(text)))
        # One window for every measure, accuracy included.
        for measure in ("mean_pairwise_cosine", "test_accuracy"):
            row = next(
                r
                for r in report.rows
                if r.measure == measure and (r.mode_a, r.mode_b) == ("coupled", "none")
            )
            want = [
                np.mean(runs[("coupled", 1e-4, s)][measure][-last:])
                - np.mean(runs[("none", 0.0, s)][measure][-last:])
                for s in range(5)
            ]
            assert row.difference.mean == pytest.approx(np.mean(want), rel=1e-12), (text, measure)
            assert row.p_value == pytest.approx(stats.ttest_1samp(want, 0.0).pvalue, rel=1e-9)


def test_matched_loss_reads_the_first_round_at_or_below_and_reports_runs_that_never_reach(
    tmp_path: Path,
) -> None:
    runs = _runs()
    runs[("none", 0.0, 3)]["train_loss"] = [0.9] * ROUNDS  # never reaches 0.35
    _store(tmp_path / "r.db", runs)
    report = compare(tmp_path / "r.db", endpoint=Endpoint(window=parse_window("matched-loss:0.35")))
    assert report.unreached == ["none η=0.01 λ=0 seed 3"]
    assert any("never reach train loss ≤ 0.35" in n and "seed 3" in n for n in report.notes)
    row = next(
        r
        for r in report.rows
        if r.measure == "mean_pairwise_cosine" and (r.mode_a, r.mode_b) == ("decoupled", "none")
    )
    assert row.seeds == (0, 1, 2, 4)  # dropped from pairs, not filled in
    want = []
    for s in row.seeds:
        at = [
            int(np.flatnonzero(np.asarray(runs[(m, lam, s)]["train_loss"]) <= 0.35)[0])
            for m, lam in (("decoupled", 0.1), ("none", 0.0))
        ]
        want.append(
            runs[("decoupled", 0.1, s)]["mean_pairwise_cosine"][at[0]]
            - runs[("none", 0.0, s)]["mean_pairwise_cosine"][at[1]]
        )
    assert row.difference.mean == pytest.approx(np.mean(want), rel=1e-12)


def test_descriptive_rows_carry_no_holm_p_and_stay_out_of_the_family(tmp_path: Path) -> None:
    _store(tmp_path / "r.db", _runs())
    report = compare(tmp_path / "r.db", endpoint=Endpoint())
    descriptive = [r for r in report.rows if r.role == "descriptive"]
    assert {r.measure for r in descriptive} == {"decay_dispersion"} and len(descriptive) == 3
    assert all(math.isnan(r.p_holm) and math.isnan(r.p_value) for r in descriptive)
    assert report.tests == 3
    assert "descriptive, by construction" in render(report, "markdown")
    # A comparison named descriptive is reported but never tested.
    table = {"family": ["coupled-none"], "descriptive": ["decay_dispersion", "decoupled-none"]}
    report = compare(tmp_path / "r.db", endpoint=parse_endpoint(table))
    tested = {(r.mode_a, r.mode_b) for r in report.rows if not math.isnan(r.p_holm)}
    assert tested == {("coupled", "none")}
    assert any(r.mode_a == "decoupled" and r.role == "descriptive" for r in report.rows)


def test_held_out_selection_never_reads_the_report_seeds(tmp_path: Path) -> None:
    runs = _runs(seeds=6)
    for seed in range(6):  # two coupled points: seeds 0-2 prefer λ = 1e-3
        base = runs[("coupled", 1e-4, seed)]
        runs[("coupled", 1e-3, seed)] = {**base, "val_accuracy": [0.7] * ROUNDS}
    _store(tmp_path / "clean.db", runs)
    poisoned = {k: dict(v) for k, v in runs.items()}
    for seed in (3, 4, 5):  # the report seeds' validation now prefers λ = 1e-4 by far
        poisoned[("coupled", 1e-4, seed)]["val_accuracy"] = [1.0] * ROUNDS
        poisoned[("coupled", 1e-3, seed)]["val_accuracy"] = [0.0] * ROUNDS
    _store(tmp_path / "poisoned.db", poisoned)
    picks = []
    for name in ("clean.db", "poisoned.db"):
        report = compare(
            tmp_path / name, endpoint=Endpoint(), select_seeds={0, 1, 2}, report_seeds={3, 4, 5}
        )
        picks.append({s.mode: s.point for s in report.selections})
        assert all(r.seeds == (3, 4, 5) for r in report.rows)
    assert picks[0] == picks[1] and picks[0]["coupled"][1] == 1e-3
    unguarded = compare(tmp_path / "poisoned.db", endpoint=Endpoint())  # the poison can bite
    assert {s.mode: s.point for s in unguarded.selections}["coupled"][1] == 1e-4


def test_total_shrink_per_point_is_what_the_clients_stored(tmp_path: Path) -> None:
    runs = _runs(seeds=2)
    for (_, lam, _), columns in runs.items():
        columns["c_shrink"] = list(np.full(ROUNDS, 1e-3 * lam) * np.arange(1, ROUNDS + 1))
    _store(tmp_path / "r.db", runs, clients=3)
    report = compare(tmp_path / "r.db", endpoint=Endpoint())
    for s in report.points:
        per_run = [
            sum(
                float(np.mean([c * (1 + i) * (5 + i) for i in range(3)]))
                for c in runs[(s.mode, s.point[1], seed)]["c_shrink"]
            )
            for seed in range(2)
        ]
        assert s.total_shrink.mean == pytest.approx(np.mean(per_run), rel=1e-12)
    assert "ηλT" in render(report, "markdown", points=True)


def test_detectable_difference_has_80_percent_power() -> None:
    d = np.random.default_rng(3).normal(0.01, 0.008, size=8)
    delta = detectable_difference(d.tolist())
    n, sd = len(d), d.std(ddof=1)
    crit = stats.t.ppf(0.975, n - 1)
    nc = delta * math.sqrt(n) / sd
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.80, abs=0.01)
    try:  # statsmodels is not a dependency: checked against it where it is installed
        power_module = importlib.import_module("statsmodels.stats.power")
    except ImportError:
        return
    effect = power_module.TTestPower().solve_power(
        nobs=n, alpha=0.05, power=0.8, alternative="two-sided"
    )
    assert delta == pytest.approx(effect * sd, rel=1e-3)


def test_without_an_endpoint_compare_is_unchanged(tmp_path: Path) -> None:
    runs = _runs()
    _store(tmp_path / "r.db", runs)
    report = compare(tmp_path / "r.db", final_rounds=5)
    assert {r.measure for r in report.rows} == {"test_accuracy", "dispersion", "decay_dispersion"}
    assert all(r.role == "" for r in report.rows) and "ηλT" not in render(report, "markdown")
    disp = next(r for r in report.rows if r.measure == "dispersion")
    want = [
        float(np.mean(runs[("coupled", 1e-4, s)]["dispersion"]))
        - float(np.mean(runs[("decoupled", 0.1, s)]["dispersion"]))
        for s in range(5)
    ]
    assert disp.difference.mean == pytest.approx(np.mean(want))  # all rounds, as before
    assert disp.p_value == pytest.approx(paired_t_pvalue(want))


def _experiment(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "e.toml"
    path.write_text(f'experiment = "x"\n\n[sweep]\nseed = [0, 1]\n\n[endpoint]\n{table}\n')
    return path


def test_an_experiment_files_endpoint_is_kept_and_read_by_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _experiment(tmp_path, 'window = "last-3"\nfamily = ["decoupled-none"]')
    endpoint = load(path).endpoint
    assert endpoint is not None and endpoint.window.text == "last-3"
    assert endpoint.family == (("decoupled", "none"),)
    out = tmp_path / "out"
    out.mkdir()
    _keep_endpoint(str(path), out)
    assert read_endpoint(out) == endpoint
    assert json.loads((out / ENDPOINT_FILE).read_text())["window"] == "last-3"
    _keep_endpoint(str(path), out)  # the same again: fine
    other = _experiment(tmp_path, 'window = "all"')
    with pytest.raises(ConfigError, match="differs from the one"):
        _keep_endpoint(str(other), out)
    _store(out / "results.db", _runs())
    assert main(["compare", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["endpoint"]["family"] == ["decoupled-none"] and data["tests"] == 1
    assert {(r["mode_a"], r["mode_b"]) for r in data["rows"]} == {("decoupled", "none")}
    assert main(["compare", str(out), "--family", "coupled-none", "--format", "markdown"]) == 0
    assert "not the declared endpoint" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('primery = "dispersion"', "key 'primery' is not allowed"),
        ('primary = "accuracy"', "primary: 'accuracy' is not allowed"),
        ('window = "last-0"', "window: 'last-0' is not allowed"),
        ('window = "matched-loss:abc"', "is not allowed"),
        ('window = "last-120%"', "is not allowed"),
        ('family = ["coupled-coupled"]', "expected A-B of two different modes"),
        ('family = "coupled-none"', "expected a list of strings"),
        ('descriptive = ["coupled-none"]\nfamily = ["coupled-none"]', "tested or descriptive"),
        ('secondary = ["mean_pairwise_cosine"]', "is the primary"),
    ],
)
def test_bad_endpoint_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, message: str
) -> None:
    path = _experiment(tmp_path, table)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "[endpoint]" in err
    assert not (tmp_path / "o").exists()


def test_bad_compare_overrides_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _store(out / "results.db", _runs(seeds=2))
    for argv in (["--window", "first-5"], ["--primary", "loss"], ["--family", "a-b"]):
        assert main(["compare", str(out), *argv]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    (out / ENDPOINT_FILE).write_text(json.dumps(Endpoint().to_dict()))
    assert main(["compare", str(out), "--final-rounds", "3"]) == 2
    assert "--window last-K" in capsys.readouterr().err


def test_parse_endpoint_defaults() -> None:
    e = parse_endpoint({})
    assert e == Endpoint() and e.window.rounds(100) == 20 and e.window.rounds(7) == 2
    assert e.family == (("coupled", "decoupled"), ("decoupled", "none"), ("coupled", "none"))
    assert e.role("decay_dispersion", ("coupled", "none")) == "descriptive"
    assert parse_endpoint(e.to_dict()) == e
