"""Compare two results stores table by table, row by row; print every differing cell.

    python scripts/compare_stores.py OUT_A OUT_B   (folders or their results.db)

Columns that measure the wall clock (`started_at`, `finished_at`, `seconds`, `train_seconds`)
are left out, and so is the `out-dir` key of `runs.config_json` (two runs of the same
experiment write to two folders). Every other cell must be equal: floats bit for bit, blobs
byte for byte. Rows are matched by the table's primary key (by all their compared cells where
it has none, so a keyless table compares as a set of rows). Exit code 0: the stores hold
the same results; 1: they differ; 2: a store is missing or unreadable.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import sys
from pathlib import Path

WALL_CLOCK = frozenset({"started_at", "finished_at", "seconds", "train_seconds"})
STORE_FILE = "results.db"  # as fedadamw.schema.STORE_FILE; standalone: runs without the venv
MAX_SHOWN = 20  # differing cells printed per table


def _open(path: str) -> sqlite3.Connection:
    p = Path(path)
    if p.is_dir():
        p = p / STORE_FILE
    if not p.is_file():
        raise SystemExit(f"compare_stores: error: no results store at {p}")
    return sqlite3.connect(f"file:{p}?mode=ro", uri=True)


def _tables(con: sqlite3.Connection) -> list[str]:
    rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    return [r[0] for r in rows]


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]


def _key(con: sqlite3.Connection, table: str) -> list[str]:
    """The primary-key columns in key order; empty if the table has none."""
    info = sorted((r[5], r[1]) for r in con.execute(f'PRAGMA table_info("{table}")') if r[5])
    return [name for _, name in info]


def _cell(table: str, column: str, value: object) -> object:
    """A value as compared: floats by their bits (NaN equals NaN), config without out-dir."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if table == "runs" and column == "config_json" and isinstance(value, str):
        config = json.loads(value)
        config.pop("out-dir", None)
        return json.dumps(config, sort_keys=True)
    return value


def _rows(con: sqlite3.Connection, table: str, columns: list[str], key: list[str]) -> list[tuple]:
    order = ", ".join(f'"{c}"' for c in (key or columns))
    select = ", ".join(f'"{c}"' for c in columns)
    rows = con.execute(f'SELECT {select} FROM "{table}" ORDER BY {order}').fetchall()
    return [tuple(_cell(table, c, v) for c, v in zip(columns, row, strict=True)) for row in rows]


def _show(value: object) -> str:
    if isinstance(value, tuple) and value and value[0] == "float":
        return repr(struct.unpack("<d", value[1])[0])
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare(a: sqlite3.Connection, b: sqlite3.Connection) -> list[str]:
    """One line per difference (a missing table, a column set, a row count, a cell)."""
    out: list[str] = []
    tables_a, tables_b = set(_tables(a)), set(_tables(b))
    out += [f"table {t}: only in A" for t in sorted(tables_a - tables_b)]
    out += [f"table {t}: only in B" for t in sorted(tables_b - tables_a)]
    for table in sorted(tables_a & tables_b):
        cols_a, cols_b = _columns(a, table), _columns(b, table)
        if cols_a != cols_b:
            out.append(f"table {table}: columns differ: {cols_a} vs {cols_b}")
            continue
        columns = [c for c in cols_a if c not in WALL_CLOCK]
        key = _key(a, table) or columns  # a keyless table: rows compared as a multiset
        at = [columns.index(k) for k in key]
        rows_a = {tuple(r[i] for i in at): r for r in _rows(a, table, columns, key)}
        rows_b = {tuple(r[i] for i in at): r for r in _rows(b, table, columns, key)}
        lines: list[str] = []
        for k in sorted(rows_a.keys() | rows_b.keys(), key=repr):
            where = ", ".join(f"{c}={_show(v)}" for c, v in zip(key, k, strict=True))
            if k not in rows_b or k not in rows_a:
                lines.append(f"{table} [{where}]: only in {'A' if k in rows_a else 'B'}")
                continue
            lines += [
                f"{table} [{where}] {c}: A={_show(va)} B={_show(vb)}"
                for c, va, vb in zip(columns, rows_a[k], rows_b[k], strict=True)
                if va != vb
            ]
        out += lines[:MAX_SHOWN]
        if len(lines) > MAX_SHOWN:
            out.append(f"table {table}: {len(lines) - MAX_SHOWN} more differences")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/compare_stores.py OUT_A OUT_B", file=sys.stderr)
        return 2
    try:
        a, b = _open(argv[0]), _open(argv[1])
        diffs = compare(a, b)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"compare_stores: error: {exc}", file=sys.stderr)
        return 2
    for line in diffs:
        print(line)
    counts = {t: a.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in _tables(a)}
    if not diffs:
        print(
            "identical (wall-clock columns and out-dir left out): "
            + ", ".join(f"{t} {n}" for t, n in counts.items())
        )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
