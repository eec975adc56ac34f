"""One real run through Flower's simulation engine (Ray): the wiring, end to end."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fedadamw.core.sampling import sample_partitions
from fedadamw.results.reader import connect_readonly

CLIENTS, ROUNDS, PER_ROUND = 4, 2, 3
TENSORS = 8  # cnn1d: three conv weights + biases, one linear weight + bias
DECAYED = 4  # its weights (ndim ≥ 2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedadamw.cli",
            "run",
            "--out",
            str(out),
            "--set",
            f"num-clients={CLIENTS}",
            "--set",
            f"num-server-rounds={ROUNDS}",
            "--set",
            f"fraction-train={PER_ROUND / CLIENTS}",
            "--set",
            "local-epochs=1",
            "--set",
            "experiment=sim-test",
            "--set",
            "track-decay=true",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "final test acc" in proc.stdout and "results:" in proc.stdout
    return out


def _db(run_dir: Path) -> sqlite3.Connection:
    return connect_readonly(run_dir / "results.db")


def test_every_table_has_the_rows_of_two_arms(run_dir: Path) -> None:
    conn = _db(run_dir)
    runs = conn.execute(
        "SELECT run_id, arm, mode, status, weight_decay FROM runs ORDER BY arm"
    ).fetchall()
    assert [(r["arm"], r["mode"], r["status"]) for r in runs] == [
        ("coupled", "coupled", "finished"),
        ("decoupled", "decoupled", "finished"),
    ]
    pairs_per_round = PER_ROUND * (PER_ROUND - 1) // 2
    for run in runs:
        rid = run["run_id"]

        def count(table: str, rid: str = rid) -> int:
            return int(
                conn.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id=?", (rid,)).fetchone()[0]
            )

        assert count("rounds") == ROUNDS + 1  # round 0 = the initial model's evaluation
        assert count("clients") == ROUNDS * PER_ROUND
        assert count("layers") == ROUNDS * TENSORS
        assert count("pairs") == ROUNDS * pairs_per_round
        assert count("rejections") == 0
        for row in conn.execute("SELECT * FROM rounds WHERE run_id=? AND round>=1", (rid,)):
            assert row["num_clients"] == PER_ROUND
            assert 0.0 <= row["test_accuracy"] <= 1.0
            assert 0.0 <= row["val_accuracy"] <= 1.0  # the clients' held-out rows
            assert -1.0 <= row["mean_pairwise_cosine"] <= 1.0
            # DESIGN's self-check identity on the stored numbers.
            r = row["resultant_length"]
            assert row["mean_pairwise_cosine"] == pytest.approx(
                (PER_ROUND * r * r - 1) / (PER_ROUND - 1), abs=1e-9
            )
    conn.close()


def test_both_arms_train_the_same_seeded_clients(run_dir: Path) -> None:
    conn = _db(run_dir)
    for rnd in range(1, ROUNDS + 1):
        want = sample_partitions(0, rnd, range(CLIENTS), PER_ROUND)
        for arm in ("coupled", "decoupled"):
            got = [
                r[0]
                for r in conn.execute(
                    "SELECT c.partition_id FROM clients c JOIN runs u USING (run_id) "
                    "WHERE u.arm=? AND c.round=? ORDER BY c.partition_id",
                    (arm, rnd),
                )
            ]
            assert got == want
    # Same clients, same data, different decay: their example counts agree, their updates do not.
    rows = conn.execute(
        "SELECT u.arm, c.partition_id, c.num_examples, c.update_norm FROM clients c "
        "JOIN runs u USING (run_id) WHERE c.round=1 ORDER BY c.partition_id, u.arm"
    ).fetchall()
    by_arm = {(r["arm"], r["partition_id"]): r for r in rows}
    for pid in sample_partitions(0, 1, range(CLIENTS), PER_ROUND):
        assert (
            by_arm[("coupled", pid)]["num_examples"] == by_arm[("decoupled", pid)]["num_examples"]
        )
        assert by_arm[("coupled", pid)]["update_norm"] != by_arm[("decoupled", pid)]["update_norm"]
    conn.close()


def test_config_json_is_the_resolved_config(run_dir: Path) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["num-clients"] == CLIENTS and cfg["experiment"] == "sim-test"
    assert cfg["out-dir"] == str(run_dir.resolve())
    conn = _db(run_dir)
    stored = json.loads(
        conn.execute("SELECT config_json FROM runs WHERE arm='decoupled'").fetchone()[0]
    )
    assert stored["arms"] == "decoupled" and stored["weight-decay"] == cfg["weight-decay"]
    conn.close()


def test_decay_parts_are_stored_and_tell_the_modes_apart(run_dir: Path) -> None:
    conn = _db(run_dir)
    rows = {
        r["arm"]: r
        for r in conn.execute(
            "SELECT u.arm, r.* FROM rounds r JOIN runs u USING (run_id) WHERE r.round = 1"
        )
    }
    dec, cou = rows["decoupled"], rows["coupled"]
    # Decoupled: every weight shrinks by exactly ηλ|w| per step, so the ratio is 1 everywhere,
    # and the decay part −Σηλwₜ leans on −w_global (not exactly: wₜ drifts during local steps).
    assert dec["shrink_p5"] == pytest.approx(1.0, abs=1e-4)
    assert dec["shrink_p95"] == pytest.approx(1.0, abs=1e-4)
    assert dec["decay_cosine_to_neg_weights"] > 0.5
    # Coupled: Adam divides λw by each weight's own √v̂, so the shrink ratio spreads out.
    assert cou["shrink_p95"] > 2 * cou["shrink_p5"]
    for row in (dec, cou):
        assert row["decay_mean_pairwise_cosine"] is not None
        assert row["data_mean_pairwise_cosine"] is not None
    n_layers = conn.execute(
        "SELECT COUNT(*) FROM layers WHERE decay_dispersion IS NOT NULL"
    ).fetchone()[0]
    # Biases are never decayed: their decay parts are zero, their statistics NULL.
    assert n_layers == 2 * ROUNDS * DECAYED
    conn.close()


def test_without_decay_the_three_adam_arms_are_bit_identical(tmp_path: Path) -> None:
    # Adam, Adam + 0·L2 and AdamW with λ = 0 are one algorithm. Same seed → same partitions,
    # clients, batches and initial weights, and replies are summed in partition order, so the
    # stored trajectories must agree to the last bit: any unpaired randomness would show here.
    out = tmp_path / "lam0"
    sets = [
        "num-clients=3",
        "num-server-rounds=2",
        "local-epochs=1",
        "weight-decay=0",
        "arms=coupled,decoupled,none",
        "experiment=lam0",
    ]
    argv = [sys.executable, "-m", "fedadamw.cli", "run", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    conn = connect_readonly(out / "results.db")
    by_arm: dict[str, list[tuple[object, ...]]] = {}
    for row in conn.execute(
        "SELECT u.arm, r.round, r.test_accuracy, r.test_loss, r.mean_pairwise_cosine, "
        "r.relative_drift FROM rounds r JOIN runs u USING (run_id) ORDER BY r.round"
    ):
        by_arm.setdefault(row[0], []).append(tuple(row)[1:])
    conn.close()
    assert len(by_arm["none"]) == 3
    assert by_arm["coupled"] == by_arm["decoupled"] == by_arm["none"]
