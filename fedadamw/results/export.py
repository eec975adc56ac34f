"""Every table of a results store as tidy CSV or Parquet files (`fedadamw export`).

One file per table (`runs`, `rounds`, `clients`, `layers`, `pairs`, `rejections`, `labels`,
`param_counts`, `probes`),
one row per observation as the store keys it (run × round × client, run × round × layer, …).
Every row carries its run's experiment, arm, mode and status and every key of the run's
config as a column under the key's own name (`weight-decay`, `seed`, …), so a file filters
and groups by any swept key without a join. The store's own columns keep their snake_case
names; config keys are kebab-case, so the two never clash. Checkpoints (model weights) and
kept probe updates are not exported.

All tables are read in one SQLite read transaction: exported while a run writes, they show
the same rounds. pandas and polars read the files as they are.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedadamw.errors import print_error
from fedadamw.fileio import atomic_write_bytes
from fedadamw.results.lock import writer_alive
from fedadamw.results.reader import (
    Store,
    StoreError,
    connect_readonly,
    effective_status,
    resolve_store_path,
)
from fedadamw.schema import RUN_MODE_COLUMN

FORMATS = ("csv", "parquet")
EXPORT_DIR = "export"  # the default --dir, inside the output folder
# The tables exported, with the columns each is sorted by (its key in the store).
TABLES: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "rounds": ("run_id", "round"),
    "clients": ("run_id", "round", "partition_id"),
    "layers": ("run_id", "round", "layer"),
    "pairs": ("run_id", "round", "partition_i", "partition_j"),
    "rejections": ("run_id", "round", "partition_id"),
    "labels": ("run_id", "partition_id", "label"),
    "param_counts": ("run_id",),  # decayed / undecayed tensors and weights
    "probes": ("run_id", "round", "mode", "learning_rate", "weight_decay", "engine"),
}
# Run columns every other table's rows carry, in front of the config keys.
RUN_COLUMNS = ("experiment", "arm", "mode", "status")
# Config keys that repeat a run column (`experiment`) or hold the run's own arm (`arms`).
_REPEATED_KEYS = frozenset({"experiment", "arms"})


class ExportError(RuntimeError):
    """The export cannot be written as asked; the message is one line."""


def read_tables(out: str | Path) -> dict[str, pd.DataFrame]:
    """Every exported table of the store in `out`, tidy, from one consistent snapshot."""
    store = Store(out)  # one-line StoreError for a missing, empty or unreadable store
    alive = writer_alive(store.path.parent)
    conn = connect_readonly(store.path)
    try:
        # One read transaction: a run writing meanwhile cannot add a round to one table
        # between the reads of two others (WAL readers see a fixed snapshot).
        conn.execute("BEGIN")
        raw = {
            table: _read(conn, table, order, store.columns(table))
            for table, order in TABLES.items()
            if store.has_table(table)
        }
        conn.rollback()
    finally:
        conn.close()
    runs = raw["runs"]
    configs = [_config(text) for text in runs.pop("config_json")]
    runs["status"] = [effective_status(str(s), alive) for s in runs["status"]]
    keys = list(dict.fromkeys(k for c in configs for k in c if k not in _REPEATED_KEYS))
    config = pd.DataFrame(
        {k: pd.Series([c.get(k) for c in configs], dtype=_dtype(configs, k)) for k in keys}
    )
    config.insert(0, "run_id", runs["run_id"].to_numpy())
    per_run = runs[["run_id", *RUN_COLUMNS]].merge(config, on="run_id", how="left")
    tables = {"runs": runs.merge(config, on="run_id", how="left")}
    for table, df in raw.items():
        if table != "runs":
            # A probe row's `mode` is the setting it re-trained under; the run's is `run_mode`.
            base = per_run.rename(columns={"mode": RUN_MODE_COLUMN}) if "mode" in df else per_run
            tables[table] = base.merge(df, on="run_id", how="right")
    return tables


def _read(
    conn: sqlite3.Connection, table: str, order: Sequence[str], columns: Sequence[str]
) -> pd.DataFrame:
    by = ", ".join(c for c in order if c in columns)
    df = pd.read_sql_query(f"SELECT * FROM {table} ORDER BY {by}", conn)
    # The declared type decides a column's type: pandas guesses float for whole numbers with
    # a NULL, and no type at all for a column that is NULL throughout (e.g. track-decay off).
    declared = {r[1]: str(r[2]).upper() for r in conn.execute(f"PRAGMA table_info({table})")}
    for col, kind in declared.items():
        if col not in df:
            continue
        if "INT" in kind and df[col].dtype.kind != "i":
            df[col] = df[col].astype("Int64")
        elif kind in ("REAL", "FLOAT", "DOUBLE") and df[col].dtype.kind != "f":
            df[col] = df[col].astype("float64")
        elif kind == "TEXT" and df[col].dtype.kind not in ("O", "U", "T"):
            df[col] = df[col].astype("string")
    return df


def _config(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _dtype(configs: Sequence[dict[str, Any]], key: str) -> str:
    """One column type per config key (a key an older run lacks is a missing value)."""
    kinds = {type(c[key]) for c in configs if c.get(key) is not None}
    if kinds == {bool}:
        return "boolean"
    if kinds == {int}:
        return "Int64"
    if kinds and kinds <= {int, float}:
        return "float64"
    return "object" if len(kinds) != 1 or kinds != {str} else "string"


def export_store(
    out: str | Path, fmt: str, directory: str | Path, force: bool = False
) -> list[Path]:
    """Write every table of the store in `out` as `directory/<table>.<fmt>`; the files written.

    Nothing is written when one of the files exists already, unless `force`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not allowed; expected one of {', '.join(FORMATS)}")
    tables = read_tables(out)
    target = Path(directory)
    paths = {table: target / f"{table}.{fmt}" for table in tables}
    if not force:
        existing = [p for p in paths.values() if p.exists() or p.is_symlink()]
        if existing:
            raise ExportError(
                f"--dir {str(target)!r}: {len(existing)} of the {len(paths)} files exist "
                f"already (e.g. {existing[0].name}); pass --force to overwrite them"
            )
    for table, df in tables.items():
        atomic_write_bytes(paths[table], _encode(df, fmt))
    return list(paths.values())


def _encode(df: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "csv":
        # Floats are written in their shortest exact form: reading them back is lossless.
        return str(df.to_csv(index=False)).encode()
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def export_command(out: str | Path, fmt: str, directory: str | Path | None, force: bool) -> int:
    """`fedadamw export OUT --format csv|parquet [--dir D] [--force]`; the exit status."""
    store = resolve_store_path(out)
    target = Path(directory) if directory is not None else store.parent / EXPORT_DIR
    try:
        written = export_store(store, fmt, target, force)
    except (StoreError, ExportError) as exc:
        return print_error(str(exc))
    except OSError as exc:
        return print_error(f"--dir {str(target)!r}: cannot write ({exc.strerror or exc})")
    print(f"export: {len(written)} {fmt} files in {target}")
    for path in written:
        print(f"  {path.name}")
    return 0
