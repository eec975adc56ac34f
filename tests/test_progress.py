"""What `fedadamw run` prints: round lines with time and ETA, arm headers, the closing table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedadamw.config import default_config
from fedadamw.results.writer import ResultStore, RoundRecord
from fedadamw.run.experiment import describe, run_id_for, swept_keys
from fedadamw.run.progress import ConsoleProgress, print_summary, summary_rows
from fedadamw.run.recorder import RoundReport
from fedadamw.text import duration

# t quantile with 2 degrees of freedom, in closed form (three seeds)
T2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
LONG = "a-rather-long-experiment-name-that-a-sweep-label-carries"


def _sweep(seeds: tuple[int, ...] = (0, 1, 2)) -> list[Any]:
    base = default_config().replace(num_server_rounds=4, experiment="sweep")
    return [base.replace(weight_decay=wd, seed=s) for wd in (0.001, 0.1) for s in seeds]


class Clock:
    """A stand-in for time.monotonic that the test advances."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _report(cfg: Any, arm: str, swept: list[str], rnd: int) -> RoundReport:
    return RoundReport(
        arm=arm,
        label=describe(cfg, arm, swept),
        round=rnd,
        num_rounds=cfg.num_server_rounds,
        train_loss=0.5,
        test_loss=1.0,
        test_accuracy=0.25,
        mean_pairwise_cosine=0.125,
        num_clients=10,
        num_rejected=0,
    )


def test_round_lines_show_round_time_eta_and_grid_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    monkeypatch.setattr("fedadamw.run.progress.monotonic", clock)
    configs = _sweep(seeds=(0,))
    swept = swept_keys(configs)
    shown = ConsoleProgress(configs)
    assert "starting Ray" in capsys.readouterr().out
    clock.now += 19.0  # Ray starts
    cfg = configs[1]
    shown.round(_report(cfg, "coupled", swept, 0))
    for rnd, took in ((1, 2.0), (2, 4.0)):
        clock.now += took
        shown.round(_report(cfg, "coupled", swept, rnd))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Ray is up after 19 s"
    assert lines[1] == "grid point 2/2 · weight-decay=0.1 · arm coupled (1/2)"
    # 16 rounds in all, 2 done; the recent rounds took 3 s on average
    assert lines[3].split("  ")[-2:] == ["4.0 s/round", f"ETA {duration(14 * 3.0)}"]
    assert "round 2/4" in lines[3] and "test-acc  25.0%" in lines[3]
    assert all(len(line) < 130 for line in lines)  # the sweep label is on the header only


def test_a_vmap_run_does_not_promise_ray(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """engine = vmap starts no Ray: the console says what happens instead."""
    clock = Clock()
    monkeypatch.setattr("fedadamw.run.progress.monotonic", clock)
    configs = [c.replace(engine="vmap") for c in _sweep(seeds=(0,))]
    shown = ConsoleProgress(configs)
    assert capsys.readouterr().out.splitlines() == [
        "training 10 simulated clients in one process (engine = vmap)…"
    ]
    clock.now += 2.0
    shown.round(_report(configs[0], "coupled", swept_keys(configs), 0))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("grid point 1/2") and not any("Ray" in line for line in lines)


def test_skipped_rounds_leave_the_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("fedadamw.run.progress.monotonic", clock)
    configs = _sweep(seeds=(0,))
    shown = ConsoleProgress(configs)
    shown.skip(4)  # one arm finished in an earlier run
    cfg, swept = configs[0], swept_keys(configs)
    shown.round(_report(cfg, "decoupled", swept, 0))
    clock.now += 5.0
    shown.round(_report(cfg, "decoupled", swept, 1))
    assert shown.eta() == pytest.approx((16 - 4 - 1) * 5.0)


def test_durations_read_like_a_person_writes_them() -> None:
    assert [duration(s) for s in (3.25, 42, 185, 3720)] == [
        "3.2 s",
        "42 s",
        "3 min 05 s",
        "1 h 02 min",
    ]


def test_a_seed_sweep_closes_with_one_row_per_setting_and_mean_ci() -> None:
    configs = _sweep()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    truth: dict[tuple[float, str], list[dict[str, float]]] = {}
    for cfg in configs:
        for arm in cfg.arm_list:
            values = {
                "final_accuracy": float(rng.uniform(0.3, 0.9)),
                "mean_pairwise_cosine": float(rng.uniform(0, 0.2)),
                "dispersion": float(rng.uniform(0.4, 0.7)),
                "relative_drift": float(rng.uniform(1, 10)),
            }
            rid = run_id_for(cfg, arm)
            rows.append({"run_id": rid, "rounds": 4, "status": "finished", **values})
            truth.setdefault((cfg.weight_decay, arm), []).append(values)
    table = summary_rows(configs, rows)
    assert [r.label for r in table] == [
        "weight-decay=0.001 coupled",
        "weight-decay=0.001 decoupled",
        "weight-decay=0.1 coupled",
        "weight-decay=0.1 decoupled",
    ]
    for r in table:
        wd, arm = float(r.label.split()[0].split("=")[1]), r.label.split()[1]
        acc = np.array([v["final_accuracy"] for v in truth[(wd, arm)]])
        half = T2 * acc.std(ddof=1) / math.sqrt(3)
        assert r.cells[0] == f"{100 * acc.mean():.1f}% ± {100 * half:.1f}"
        drift = np.array([v["relative_drift"] for v in truth[(wd, arm)]])
        half = T2 * drift.std(ddof=1) / math.sqrt(3)
        assert r.cells[3] == f"{drift.mean():.4f} ± {half:.4f}"
        assert (r.seeds, r.rounds, r.status) == (3, "4", "finished")


def test_the_closing_table_is_whole_in_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = default_config().replace(num_server_rounds=1, experiment=LONG[:60], out_dir="")
    configs = [
        base.replace(weight_decay=wd, learning_rate=lr) for wd in (1e-4, 0.3) for lr in (1e-3, 0.03)
    ]
    with ResultStore(tmp_path / "results.db") as store:
        for cfg in configs:
            for arm in cfg.arm_list:
                rid = run_id_for(cfg, arm)
                store.start_run(rid, cfg.experiment, arm, arm, cfg.weight_decay, cfg.to_json())
                values = {
                    "test_accuracy": 0.123456,
                    "dispersion": 0.5,
                    "relative_drift": 12.3456789,
                }
                store.write_round(RoundRecord(rid, 1, values | {"mean_pairwise_cosine": -0.25}))
                store.finish_run(rid)
    print_summary(configs, tmp_path, 75.0)
    out = capsys.readouterr().out  # captured: not a terminal, as in a pipe or a CI log
    assert "…" not in out
    assert "learning-rate=0.03 weight-decay=0.3 decoupled" in out
    assert "12.3457" in out and "-0.2500" in out and "12.3%" in out
    assert "wall time: 1 min 15 s" in out
