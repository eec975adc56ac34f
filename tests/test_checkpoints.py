"""Checkpoints over the run (`checkpoint-every`): which rounds are kept, what they hold, resume.

A run with `checkpoint-every = k` keeps the global model of every k-th round plus the last
stored round (the one a resumed run continues from). The reference for a kept state is the
store's own evaluation of that round: the test accuracy recomputed from the loaded weights with
the model's forward pass (numpy argmax, not `core.training.evaluate`) must be the stored one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from fedadamw.config import Config
from fedadamw.core.models import model_for
from fedadamw.data.split import DataSpec, load_splits
from fedadamw.errors import ConfigError
from fedadamw.results.reader import Store, StoreError
from fedadamw.run.experiment import run_id_for
from fedadamw.run.recorder import Progress, RoundReport
from server.app import run_experiment
from server.cohort_grid import CohortGrid

CLIENTS = 3
ROUNDS = 5
SETTINGS = {
    "experiment": "ckpt",
    "engine": "vmap",
    "num-clients": CLIENTS,
    "num-server-rounds": ROUNDS,
    "local-steps": 4,
    "arms": "decoupled",
    "weight-decay": 0.05,
    "min-partition-size": 5,
}
# Columns that are timings, not results.
TIMINGS = ("seconds", "train_seconds")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**changes: object) -> Config:
    return Config.from_mapping({**SETTINGS, **changes})


def _rows(db: Path, table: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    order = {"checkpoints": "run_id", "runs": "run_id"}.get(table, "rowid")
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    conn.close()
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


class _StopAfter(Progress):
    """Interrupts the run (as Ctrl-C would) once round `last` is stored."""

    def __init__(self, last: int) -> None:
        self.last = last

    def round(self, report: RoundReport) -> None:
        if report.round == self.last:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with checkpoint-every = 2."""
    out = tmp_path_factory.mktemp("straight")
    run_experiment(CohortGrid(CLIENTS), [_cfg(**{"checkpoint-every": 2})], out)
    return out / "results.db"


def _accuracy(cfg: Config, state: dict[str, np.ndarray]) -> float:
    model = model_for(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.eval()
    _, test = load_splits(DataSpec.from_config(cfg))
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(test.x, dtype=np.float32))).numpy()
    return float(np.mean(logits.argmax(axis=1) == np.asarray(test.y)))


def test_every_kth_round_and_the_last_are_kept_and_hold_the_evaluated_model(
    straight: Path,
) -> None:
    cfg = _cfg(**{"checkpoint-every": 2})
    run_id = run_id_for(cfg, "decoupled")
    store = Store(straight)
    assert store.checkpoint_rounds(run_id) == [2, 4, 5]
    stored = store.rounds([run_id]).set_index("round")["test_accuracy"]
    states = {}
    for rnd in (2, 4, 5):
        ckpt = store.checkpoint(run_id, rnd)
        assert ckpt.round == rnd and ckpt.server_state == {}  # FedAvg has no server state
        assert _accuracy(cfg, ckpt.state) == stored[rnd]
        states[rnd] = ckpt.state
    # Three different models (the accuracy check would pass for a repeated one by chance).
    assert not np.array_equal(states[2]["conv1.weight"], states[4]["conv1.weight"])
    with pytest.raises(StoreError, match=r"no checkpoint of round 3 \(kept rounds: 2, 4, 5;"):
        store.checkpoint(run_id, 3)


def test_the_default_keeps_only_the_last_and_changes_no_result(
    straight: Path, tmp_path: Path
) -> None:
    cfg = _cfg()
    assert cfg.checkpoint_every == 0
    # How often checkpoints are kept is not part of the run's identity.
    assert run_id_for(cfg, "decoupled") == run_id_for(cfg.replace(checkpoint_every=2), "decoupled")
    run_experiment(CohortGrid(CLIENTS), [cfg], tmp_path)
    db = tmp_path / "results.db"
    assert Store(db).checkpoint_rounds(run_id_for(cfg, "decoupled")) == [ROUNDS]
    assert _rows(db, "kept_checkpoints") == []
    for table in ("rounds", "clients", "pairs", "layers", "checkpoints"):
        assert _rows(db, table) == _rows(straight, table), table


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    straight: Path, tmp_path: Path
) -> None:
    cfg = _cfg(**{"checkpoint-every": 2})
    run_id = run_id_for(cfg, "decoupled")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(CohortGrid(CLIENTS), [cfg], tmp_path, _StopAfter(3))
    db = tmp_path / "results.db"
    assert Store(db).checkpoint_rounds(run_id) == [2, 3]  # round 2 kept, round 3 the last
    run_experiment(CohortGrid(CLIENTS), [cfg], tmp_path)
    assert Store(db).checkpoint_rounds(run_id) == [2, 4, 5]
    for table in ("rounds", "clients", "pairs", "layers", "checkpoints", "kept_checkpoints"):
        got, want = _rows(db, table), _rows(straight, table)
        assert len(got) == len(want) > 0, table
        assert got == want, table


def test_a_negative_checkpoint_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^checkpoint-every: -1 is not allowed"):
        _cfg(**{"checkpoint-every": -1})
