"""`fedadamw export`: every table, tidy, read back with pandas and polars, equals the store."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest

from fedadamw import cli
from fedadamw.results.export import TABLES, read_tables
from fedadamw.results.lock import WriterLock
from tests.test_figures import Synthetic, write_synthetic_store

GRID = [{"weight-decay": wd} for wd in (0.001, 0.1)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    out = tmp_path_factory.mktemp("export") / "run"
    syn = write_synthetic_store(out, seeds=(0, 1), num_rounds=3, num_clients=4, grid=GRID)
    conn = sqlite3.connect(syn.path)
    conn.execute(
        "INSERT INTO rejections VALUES (?, 2, 3, '77', 'non-finite update')", (syn_id(syn),)
    )
    conn.commit()
    conn.close()
    return syn


def syn_id(syn: Synthetic) -> str:
    return syn.run_ids[("coupled", 1, "1")]


def _sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    """The table as sqlite3 itself returns it: the independent reference."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    finally:
        conn.close()


def _same(a: Any, b: Any) -> bool:
    if b is None:
        return a is None or (isinstance(a, float) and math.isnan(a)) or a is pd.NA
    if isinstance(b, float):
        return bool(float(a) == b)  # exact: CSV and Parquet keep every bit of a float
    if isinstance(b, str):
        return str(a) == b  # CSV has no types: a text column of digits reads back as numbers
    return bool(a == b)


def _check_against_store(tables: dict[str, pd.DataFrame], syn: Synthetic) -> None:
    for table, key in TABLES.items():
        ref = _sqlite_rows(syn.path, table)
        got = tables[table]
        assert len(got) == len(ref), table
        indexed = {tuple(r[k] for k in key): r for r in got.to_dict("records")}
        for row in ref:
            exported = indexed[tuple(row[k] for k in key)]
            config = syn.configs[row["run_id"]]
            for col, value in row.items():
                if col in ("config_json", "status"):
                    continue
                assert _same(exported[col], value), (table, col, exported[col], value)
            # the run's config rides along under its own keys
            for k in ("weight-decay", "seed", "num-clients", "dataset"):
                assert _same(exported[k], config[k]), (table, k)
            assert exported["mode"] == config["arms"] and exported["status"] == "finished"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trips_every_table_with_pandas(
    synthetic: Synthetic, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "tables"
    args = ["export", str(synthetic.path.parent), "--format", fmt, "--dir", str(target)]
    assert cli.main(args) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{t}.{fmt}" for t in TABLES)
    assert f"export: {len(TABLES)} {fmt} files" in capsys.readouterr().out
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    tables = {t: read(target / f"{t}.{fmt}") for t in TABLES}
    _check_against_store(tables, synthetic)
    (rejection,) = tables["rejections"].to_dict("records")
    assert rejection["reason"] == "non-finite update" and rejection["weight-decay"] == 0.1


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_polars_reads_the_files_as_they_are(synthetic: Synthetic, tmp_path: Path, fmt: str) -> None:
    assert (
        cli.main(["export", str(synthetic.path.parent), "--format", fmt, "--dir", str(tmp_path)])
        == 0
    )
    read = pl.read_csv if fmt == "csv" else pl.read_parquet
    rounds = read(tmp_path / f"rounds.{fmt}")
    # a tidy table groups by a swept key without a join
    means = (
        rounds.filter(pl.col("round") >= 1)
        .group_by("mode", "weight-decay")
        .agg(pl.col("dispersion").mean())
        .sort("mode", "weight-decay")
    )
    for mode, wd, value in means.iter_rows():
        runs = [
            r
            for (m, _, g), r in synthetic.run_ids.items()
            if m == mode and GRID[int(g)]["weight-decay"] == wd
        ]
        ref = [synthetic.rounds[r][k]["dispersion"] for r in runs for k in (1, 2, 3)]
        assert value == pytest.approx(sum(ref) / len(ref), rel=1e-12)
    assert rounds.schema["round"] == pl.Int64 and rounds.schema["seed"] == pl.Int64
    clients = read(tmp_path / f"clients.{fmt}")
    assert clients.height == len(_sqlite_rows(synthetic.path, "clients"))


def test_export_refuses_to_overwrite_and_keeps_the_folder_unchanged(
    synthetic: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rounds.csv").write_text("mine")
    args = ["export", str(synthetic.path.parent), "--dir", str(tmp_path)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --force" in err
    assert [p.name for p in tmp_path.iterdir()] == ["rounds.csv"]
    assert cli.main([*args, "--force"]) == 0
    assert len(pd.read_csv(tmp_path / "rounds.csv")) == len(_sqlite_rows(synthetic.path, "rounds"))


def test_export_default_dir_is_inside_the_output_folder(tmp_path: Path) -> None:
    syn = write_synthetic_store(tmp_path / "run", seeds=(0,), num_rounds=1, num_clients=3)
    assert cli.main(["export", str(syn.path.parent), "--format", "parquet"]) == 0
    assert (syn.path.parent / "export" / "runs.parquet").is_file()
    # `fedadamw run` counts the folder as its own: a rerun into OUT is not refused
    assert cli.prepare_out_dir(str(syn.path.parent), "default", force=False) == syn.path.parent


def test_an_unknown_format_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", str(tmp_path), "--format", "xlsx"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'xlsx'" in err and err.count("\n") == 1


def test_a_folder_without_a_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no results store at" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_export_while_a_run_writes_shows_it_running(tmp_path: Path) -> None:
    syn = write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, num_clients=3, finish=False)
    with WriterLock(tmp_path):
        tables = read_tables(tmp_path)
    assert set(tables["runs"]["status"]) == {"running"}
    config = json.loads(_sqlite_rows(syn.path, "runs")[0]["config_json"])
    assert set(tables["runs"].columns) >= {k for k in config if k not in ("arms", "experiment")}
    assert "config_json" not in tables["runs"]
