"""The grid engine (`engine = grid`): many runs stacked per round give each run's own rounds.

References: the same runs under `engine = vmap`, one run after another (whose agreement with
Flower's own clients tests/test_cohort_grid.py checks), and identical settings giving identical
rows whatever their position in the batch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from fedadamw.config import Config
from fedadamw.run.failures import RunInterruptedError
from fedadamw.run.recorder import Progress, RoundReport
from server.app import run_experiment
from server.cohort_grid import CohortGrid
from server.run_batch import RunBatch, batch_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIENTS = 6
BASE = {
    "num-clients": CLIENTS,
    "num-server-rounds": 3,
    "local-epochs": 1,
    "client-batch-sizes": "8,16,32",
    "straggler-rate": 0.5,
    "min-partition-size": 5,
    "track-decay": True,
    "experiment": "grid-engine-test",
}


def _grid() -> list[Config]:
    """A small sweep that mixes modes, λ (0 among them), η, schedules and seeds."""
    points = [
        {"weight-decay": 0.0, "arms": "coupled,decoupled,none", "seed": 0},
        {"weight-decay": 0.05, "arms": "coupled,decoupled,sgd-coupled,sgd-decoupled", "seed": 1},
        {
            "weight-decay": 0.01,
            "learning-rate": 3e-3,
            "lr-schedule": "cosine",
            "arms": "decoupled,coupled",
            "seed": 0,
        },
        {"weight-decay": 0.02, "arms": "server-decay,decoupled", "seed": 2},
        {"weight-decay": 0.0, "arms": "none,coupled", "seed": 1, "proximal-mu": 0.1},
    ]
    return [Config.from_mapping({**BASE, **p, "engine": "grid"}) for p in points]


def _rows(db: Path) -> dict[tuple[str, int], sqlite3.Row]:
    """Every stored round by (run config without its engine and folder, round)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT u.config_json, r.* FROM rounds r JOIN runs u USING (run_id) "
        "ORDER BY r.run_id, r.round"
    ).fetchall()
    conn.close()
    out = {}
    for row in rows:
        cfg = json.loads(row["config_json"])
        del cfg["engine"], cfg["out-dir"]
        out[(json.dumps(cfg, sort_keys=True), row["round"])] = row
    return out


# The evaluation's losses: the grid engine scores its runs' models in one stacked forward
# (fedadamw.core.training.evaluate_many), per-run vmap each model alone; the two sum the same
# cross-entropies in a different order, so they agree to float rounding (the engine-equality
# tolerance of tests/test_cohort_grid.py), not bit for bit.
EVALUATED = ("test_loss", "val_loss")


def _same(a: sqlite3.Row, b: sqlite3.Row, rel: float = 0.0) -> list[str]:
    """The columns in which two stored rounds differ (timings aside); the evaluation's losses
    by more than `rel` relative."""
    skip = ("run_id", "config_json", "seconds")
    return [
        k
        for k in a.keys()  # noqa: SIM118
        if k not in skip
        and a[k] != b[k]
        and not (k in EVALUATED and a[k] == pytest.approx(b[k], rel=rel, abs=0.0))
    ]


def test_every_run_of_a_stacked_grid_equals_the_same_run_alone_under_vmap(tmp_path: Path) -> None:
    grid = _grid()
    runs = sum(len(c.arm_list) for c in grid)
    run_experiment(CohortGrid(CLIENTS), grid, tmp_path / "grid", batch_runs=runs)
    alone = [c.replace(engine="vmap") for c in grid]
    run_experiment(CohortGrid(CLIENTS), alone, tmp_path / "vmap")
    got, want = _rows(tmp_path / "grid" / "results.db"), _rows(tmp_path / "vmap" / "results.db")
    assert len(got) == len(want) == runs * 4  # rounds 0 (the initial model) to 3
    assert got.keys() == want.keys()
    # Each model's rows are their own matrix products (fedadamw.core.stacked): a run's numbers
    # do not depend on the runs stacked beside it, so training agrees bit for bit, and so do
    # the accuracies; the evaluation's losses to float rounding (EVALUATED).
    differing = {key: _same(got[key], want[key], rel=1e-5) for key in got}
    assert not any(differing.values()), {k: v for k, v in differing.items() if v}
    # ... and they were evaluated: every round has a test and a validation loss.
    assert all(got[k]["test_loss"] > 0 and got[k]["val_loss"] > 0 for k in got)


def test_identical_settings_give_identical_rows_whatever_their_place_in_the_batch(
    tmp_path: Path,
) -> None:
    grid = _grid()
    run_experiment(CohortGrid(CLIENTS), grid, tmp_path / "grid", batch_runs=20)
    by_round: dict[int, list[sqlite3.Row]] = {}
    for (key, rnd), row in _rows(tmp_path / "grid" / "results.db").items():
        cfg = json.loads(key)
        if cfg["weight-decay"] == 0.0 and cfg["seed"] == 0:
            by_round.setdefault(rnd, []).append(row)
    assert sorted(by_round) == [0, 1, 2, 3]
    statistics = ("train_loss", "test_loss", "test_accuracy", "mean_pairwise_cosine", "dispersion")
    for rows in by_round.values():
        # λ = 0: coupled, decoupled and none are the same optimizer (seed 0; positions 0-2).
        assert len(rows) == 3
        for key in statistics:
            assert len({r[key] for r in rows}) == 1, key


def test_evaluating_many_models_at_once_gives_each_models_own_evaluation() -> None:
    import torch

    from fedadamw.core.models import model_for
    from fedadamw.core.training import evaluate, evaluate_many
    from fedadamw.data.split import DataSpec, load_splits

    cfg = _grid()[0]
    _, test = load_splits(DataSpec.from_config(cfg))
    model = model_for(cfg)
    states = []
    for seed in range(5):
        torch.manual_seed(seed)
        states.append({k: torch.randn_like(v) * 0.3 for k, v in model.state_dict().items()})
    want = []
    for state in states:
        model.load_state_dict(state)
        want.append(evaluate(model, test, torch.device("cpu")))
    cpu = torch.device("cpu")
    # Chunks of 2 models × 150 examples (ragged at both ends), and everything in one call.
    for rows in (300, 10**6):
        got = evaluate_many(model, states, test, cpu, chunk_rows=rows)
        assert [a for _, a in got] == [a for _, a in want]
        assert [loss for loss, _ in got] == pytest.approx([loss for loss, _ in want], rel=1e-5)
    # A state with a key the architecture lacks is not stacked: each model alone, exactly.
    odd = [{**s, "extra": torch.zeros(1)} for s in states[:2]]
    strict = model_for(cfg)
    with pytest.raises(RuntimeError, match="extra"):
        evaluate_many(strict, odd, test, cpu)


class _StopAt(Progress):
    """Asks for a stop once `after` rounds have been written, whichever runs they were."""

    def __init__(self, stop: threading.Event, after: int) -> None:
        self.stop, self.after, self.seen = stop, after, 0

    def round(self, report: RoundReport) -> None:
        self.seen += 1
        if self.seen == self.after:
            self.stop.set()


def test_an_interrupted_grid_resumes_to_the_uninterrupted_rows(tmp_path: Path) -> None:
    grid = _grid()[:2]
    run_experiment(CohortGrid(CLIENTS), grid, tmp_path / "whole", batch_runs=7)
    stop = threading.Event()
    with pytest.raises(RunInterruptedError):
        run_experiment(
            CohortGrid(CLIENTS), grid, tmp_path / "cut", _StopAt(stop, 12), stop=stop, batch_runs=7
        )
    conn = sqlite3.connect(tmp_path / "cut" / "results.db")
    statuses = [s for (s,) in conn.execute("SELECT status FROM runs")]
    stored = conn.execute("SELECT count(*) FROM rounds").fetchone()[0]
    conn.close()
    assert set(statuses) == {"interrupted"} and 7 <= stored < 7 * 4
    run_experiment(CohortGrid(CLIENTS), grid, tmp_path / "cut", batch_runs=3)
    got, want = _rows(tmp_path / "cut" / "results.db"), _rows(tmp_path / "whole" / "results.db")
    assert got.keys() == want.keys()
    assert not any(_same(got[k], want[k]) for k in got)


def test_a_failing_run_stops_the_batch_and_its_error_is_raised() -> None:
    batch: RunBatch[int] = RunBatch(CohortGrid(2))
    order: list[tuple[int, int]] = []

    def work(item: int, grid: object) -> None:
        for step in range(3):
            order.append((item, step))
            if item == 1 and step == 1:
                raise ValueError("run 1 broke")
            grid.push_messages([])  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match="run 1 broke"):
        batch.run([0, 1, 2], work)
    # Turns in the given order, one run at a time; after the error nobody takes another step.
    assert order == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]


def test_the_batch_size_is_capped_by_the_flag_and_by_memory() -> None:
    configs = _grid()
    runs = sum(len(c.arm_list) for c in configs)
    size, why = batch_size(configs)
    assert size == runs and f"{runs} runs in 1 batch" in why
    size, why = batch_size(configs, most=4)
    assert size == 4 and f"{runs} runs in {-(-runs // 4)} batches of up to 4" in why


def _mixed_models() -> list[Config]:
    """cnn1d (2 runs) then the MLP (3 runs): two model sizes in one grid."""
    small = {**BASE, "num-server-rounds": 1, "engine": "grid", "model": "cnn1d"}
    return [
        Config.from_mapping({**small, "arms": "coupled,decoupled"}),
        Config.from_mapping({**small, "model": "mlp", "arms": "coupled,decoupled,none"}),
    ]


# Parameters by formula (MNIST-1D: 40 samples, 10 classes). cnn1d: convolutions of 25 channels
# (k 5, 3, 3; stride 2, padding 1) take the length 40 -> 19 -> 10 -> 5, then a linear 125 -> 10;
# the MLP: 40 -> 100 -> 100 -> 10.
CNN1D_PARAMS = (25 * 1 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
MLP_PARAMS = (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)


def test_each_batch_is_sized_by_its_own_runs_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.app
    import server.run_batch

    configs = _mixed_models()
    clients = configs[0].clients_per_round
    small, large = (clients * p * 4 * 8 for p in (CNN1D_PARAMS, MLP_PARAMS))  # 8 copies
    assert [server.run_batch.run_bytes(c) for c in configs] == [small, large]
    # Room for both cnn1d runs and one MLP run: then each MLP run alone (2 MLPs do not fit).
    budget = 2 * small + large
    monkeypatch.setattr(server.run_batch, "memory_budget", lambda: budget)
    monkeypatch.setattr(server.app, "memory_budget", lambda: budget)
    size, why = batch_size(configs)
    assert size == 3 and "5 runs in 3 batches of up to 3" in why
    assert f"({budget / 2**20:.0f} MiB" in why
    sizes: list[int] = []
    run = RunBatch.run

    def counted(self: RunBatch[object], items: list[object], work: object) -> None:
        sizes.append(len(items))
        run(self, items, work)  # type: ignore[arg-type]

    monkeypatch.setattr(RunBatch, "run", counted)
    run_experiment(CohortGrid(CLIENTS), configs, tmp_path / "mixed", batch_runs=5)
    assert sizes == [3, 1, 1]
    conn = sqlite3.connect(tmp_path / "mixed" / "results.db")
    statuses = [s for (s,) in conn.execute("SELECT status FROM runs")]
    conn.close()
    assert statuses == ["finished"] * 5


def test_a_cluster_task_is_a_batch_of_grid_points_spread_over_the_nodes() -> None:
    from fedadamw.launch.cluster import cells

    grid = _grid()  # 5 points of 3, 4, 2, 2 and 2 runs
    assert [len(c) for c in cells(grid, nodes=1)] == [5]  # all 13 runs in one task
    two = cells(grid, nodes=2)
    assert [sum(len(c.arm_list) for c in cell) for cell in two] == [7, 6]  # ≤ ⌈13/2⌉ each
    assert [c for cell in two for c in cell] == grid  # every point once, in order
    # A point is never split, even where it alone is above the cap.
    assert [len(c) for c in cells(grid, nodes=1, most_runs=4)] == [1, 1, 2, 1]
    flower = [c.replace(engine="flower") for c in grid]
    assert cells(flower, nodes=1) == [[c] for c in flower]  # one point per task, as before
