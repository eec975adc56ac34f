"""The results store: one transaction per round, idempotent re-writes, NaN as NULL."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedadamw.results.reader import connect_readonly
from fedadamw.results.summaries import arm_summary
from fedadamw.results.writer import ResultStore, RoundRecord
from fedadamw.schema import STAT_NAMES


def _record(run_id: str, rnd: int, acc: float, cos: float) -> RoundRecord:
    stats = {name: 0.5 for name in STAT_NAMES} | {"mean_pairwise_cosine": cos}
    return RoundRecord(
        run_id,
        rnd,
        {"test_accuracy": acc, "test_loss": 1.0, **stats},
        clients=[
            {
                "partition_id": p,
                "num_examples": 10,
                "train_loss": 1.0,
                "local_steps": 2,
                "update_norm": 1.0,
                "cosine_to_aggregate": 0.9,
            }
            for p in range(3)
        ],
        layers={"w": stats, "b": stats},
        pairs=[(0, 1, 0.1), (0, 2, 0.2), (1, 2, 0.3)],
        rejections=[(3, 7, "error reply: lost")],
    )


def table_counts(path: Path) -> dict[str, int]:
    """Rows per table of a store."""
    conn = connect_readonly(path)
    try:
        tables = ("runs", "rounds", "clients", "layers", "pairs", "rejections", "checkpoints")
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}
    finally:
        conn.close()


def test_rewriting_a_round_replaces_it(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        store.start_run("e:coupled:1", "e", "coupled", "coupled", 0.01, "{}")
        store.write_round(_record("e:coupled:1", 1, 0.3, 0.2))
        store.write_round(_record("e:coupled:1", 1, 0.4, 0.25))  # a resumed run writes it again
    counts = table_counts(tmp_path / "r.db")
    assert counts == {
        "runs": 1,
        "rounds": 1,
        "clients": 3,
        "layers": 2,
        "pairs": 3,
        "rejections": 1,
        "checkpoints": 0,
    }
    conn = connect_readonly(tmp_path / "r.db")
    assert conn.execute("SELECT test_accuracy FROM rounds").fetchone()[0] == 0.4
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_undefined_statistics_are_null_and_summary_means_skip_them(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    cosines = [0.3, math.nan, 0.1, 0.5]
    with ResultStore(path) as store:
        store.start_run("e:decoupled:1", "e", "decoupled", "decoupled", 0.01, "{}")
        store.write_round(
            RoundRecord("e:decoupled:1", 0, {"test_accuracy": 0.1})
        )  # before training
        for rnd, cos in enumerate(cosines, start=1):
            store.write_round(_record("e:decoupled:1", rnd, 0.2 + rnd / 10, cos))
        store.finish_run("e:decoupled:1")
    conn = connect_readonly(path)
    assert (
        conn.execute("SELECT mean_pairwise_cosine FROM rounds WHERE round=2").fetchone()[0] is None
    )
    conn.close()
    (row,) = arm_summary(path)
    assert row["final_accuracy"] == pytest.approx(0.6)
    assert row["rounds"] == 4 and row["status"] == "finished"
    assert row["mean_pairwise_cosine"] == pytest.approx(float(np.nanmean(cosines)))


def test_readers_see_committed_rounds_while_the_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = ResultStore(path)
    store.start_run("e:none:1", "e", "none", "none", 0.0, "{}")
    store.write_round(_record("e:none:1", 1, 0.5, 0.1))
    reader = connect_readonly(path)
    assert reader.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("DELETE FROM rounds")  # read-only really is read-only
    reader.close()
    store.close()


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results store"):
        connect_readonly(tmp_path / "nope.db")


def test_node_ids_beyond_int64_are_kept_exactly(tmp_path: Path) -> None:
    node = 2**64 - 5  # Flower node ids are unsigned 64-bit; SQLite integers are signed
    with ResultStore(tmp_path / "r.db") as store:
        store.start_run("e:coupled:1", "e", "coupled", "coupled", 0.01, "{}")
        store.write_round(RoundRecord("e:coupled:1", 1, {}, rejections=[(2, node, "lost")]))
    conn = connect_readonly(tmp_path / "r.db")
    assert conn.execute("SELECT node_id FROM rejections").fetchone()[0] == str(node)
    conn.close()


def test_a_store_of_another_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    from fedadamw.results.writer import StoreError

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="holds schema 1") as info:
        ResultStore(path)
    assert "\n" not in str(info.value)
