"""The results store: SQLite in WAL mode, one transaction per round, idempotent writes.

Tables (docs/design.md; columns named here are a contract other tools rely on):

- ``runs``: one row per arm of an experiment, with its resolved config.
- ``rounds``: per round, losses, test and validation accuracy, every divergence statistic and
  the effective shrink.
- ``clients``: per round and client, its work and its update's norm and cosine to the aggregate.
- ``layers``: per round and parameter tensor, every divergence statistic.
- ``pairs``: per round, the pairwise cosine matrix (i < j, by partition id).
- ``rejections``: per round, client replies that were not aggregated and why.

- ``checkpoints``: per run, the global model after its last completed round, written in the
  same transaction as that round, so an interrupted run resumes exactly where it stopped.
- ``kept_checkpoints``: per run and round, the global model (and server optimizer state) of
  every `checkpoint-every`-th round, kept over the run (empty with the default 0).
- ``probes``: per run, checkpoint round and probe setting (mode, η, λ, engine), the statistics
  of the one-round counterfactual probe (`fedadamw probe`, fedadamw.run.probe).
- ``probe_updates``: with ``--keep-updates``, every probed client's update (float32, npz).

Re-writing a round replaces its rows, so a resumed run never duplicates them. Non-finite
statistics that are undefined by definition (NaN, e.g. pairwise cosines with one client) are
written as NULL.

A run's status is ``pending`` (registered, not started), ``running``, ``finished``,
``interrupted`` or ``failed: <reason>``. ``running`` is only true while a live process holds the
output folder's writer lock (`fedadamw.results.lock`); readers show a ``running`` run without a live
writer as ``interrupted`` (`effective_status`).
"""

from __future__ import annotations

import io
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fedadamw.schema import (
    CLIENT_DECAY_COLUMN,
    EFFECTIVE_SHRINK,
    FINISHED,
    INTERRUPTED,
    OPTIMIZER_STEPS_COLUMN,
    PARAM_COUNT_COLUMNS,
    PARAM_COUNTS_TABLE,
    PROBE_COLUMNS,
    PROBE_KEY,
    PROBE_UPDATE_COLUMNS,
    PROBE_UPDATES_TABLE,
    PROBES_TABLE,
    RUNNING,
    SHRINK_COLUMNS,
    STAT_COLUMNS,
    VAL_ACCURACY,
    VAL_LOSS,
)

# 2: decay_/data_ parts, shrink ratios, client work; 3: checkpoints; 4: label histograms;
# 5: validation loss/accuracy and effective shrink; 6: each client's λ and Adam step count at
# the start of its round, decayed-tensor counts, the server optimizer's state in checkpoints;
# 7: kept_checkpoints (the global model every `checkpoint-every` rounds); 8: probes and
# probe_updates (`fedadamw probe`)
SCHEMA_VERSION = 8
# Stores this version can upgrade in place: the changes since then only add tables (CREATE
# TABLE IF NOT EXISTS) and columns (`_ADDED_COLUMNS`, ALTER TABLE ADD COLUMN).
_UPGRADABLE = (2, 3, 4, 5, 6, 7)
# Columns added to existing tables since schema 2, added in place to an older store.
_ADDED_COLUMNS = {
    "rounds": (f"{VAL_LOSS} REAL", f"{VAL_ACCURACY} REAL", f"{EFFECTIVE_SHRINK} REAL"),
    "clients": (
        f"{EFFECTIVE_SHRINK} REAL",
        f"{CLIENT_DECAY_COLUMN} REAL",
        f"{OPTIMIZER_STEPS_COLUMN} INTEGER",
    ),
    # 6: the server optimizer's state (momentum, FedAdam's m and v) as npz bytes
    "checkpoints": ("server_state BLOB",),
}

_STAT_COLUMNS = ", ".join(f"{name} REAL" for name in STAT_COLUMNS)
_SHRINK_COLUMNS = ", ".join(f"{name} REAL" for name in SHRINK_COLUMNS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, arm TEXT NOT NULL, mode TEXT NOT NULL,
    weight_decay REAL NOT NULL, config_json TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, train_loss REAL, test_loss REAL,
    test_accuracy REAL, {_STAT_COLUMNS}, decay_cosine_to_neg_weights REAL,
    {_SHRINK_COLUMNS}, num_clients INTEGER, num_rejected INTEGER,
    seconds REAL, {", ".join(_ADDED_COLUMNS["rounds"])}, PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS clients (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, partition_id INTEGER NOT NULL,
    num_examples INTEGER, train_loss REAL, local_steps INTEGER, batch_size INTEGER,
    work_fraction REAL, train_seconds REAL, update_norm REAL, cosine_to_aggregate REAL,
    decay_norm REAL,
    decay_cosine_to_neg_weights REAL, {_SHRINK_COLUMNS}, {", ".join(_ADDED_COLUMNS["clients"])},
    PRIMARY KEY (run_id, round, partition_id)
);
CREATE TABLE IF NOT EXISTS layers (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, layer TEXT NOT NULL, {_STAT_COLUMNS},
    PRIMARY KEY (run_id, round, layer)
);
CREATE TABLE IF NOT EXISTS pairs (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, partition_i INTEGER NOT NULL,
    partition_j INTEGER NOT NULL, cosine REAL,
    PRIMARY KEY (run_id, round, partition_i, partition_j)
);
CREATE TABLE IF NOT EXISTS rejections (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, partition_id INTEGER,
    node_id TEXT,  -- Flower node ids are unsigned 64-bit: too large for SQLite's INTEGER
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_round ON rejections (run_id, round);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT PRIMARY KEY, round INTEGER NOT NULL, state BLOB NOT NULL,
    {", ".join(_ADDED_COLUMNS["checkpoints"])}
);
CREATE TABLE IF NOT EXISTS kept_checkpoints (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, state BLOB NOT NULL, server_state BLOB NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS {PARAM_COUNTS_TABLE} (
    run_id TEXT PRIMARY KEY, {", ".join(f"{c} INTEGER NOT NULL" for c in PARAM_COUNT_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS labels (
    run_id TEXT NOT NULL, partition_id INTEGER NOT NULL, label INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (run_id, partition_id, label)
);
CREATE TABLE IF NOT EXISTS {PROBES_TABLE} (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, mode TEXT NOT NULL,
    learning_rate REAL NOT NULL, weight_decay REAL NOT NULL, engine TEXT NOT NULL,
    clients INTEGER, mean_pairwise_cosine REAL, dispersion REAL, mean_update_norm REAL,
    decay_share REAL, shrink_cosine REAL, shrink_component REAL, aggregate_loss_change REAL,
    client_loss_change REAL, total_shrink REAL, PRIMARY KEY ({", ".join(PROBE_KEY)})
);
CREATE TABLE IF NOT EXISTS {PROBE_UPDATES_TABLE} (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, mode TEXT NOT NULL,
    learning_rate REAL NOT NULL, weight_decay REAL NOT NULL, engine TEXT NOT NULL,
    partition_id INTEGER NOT NULL, num_examples INTEGER NOT NULL, "update" BLOB NOT NULL,
    PRIMARY KEY ({", ".join(PROBE_KEY)}, partition_id)
);
"""
# Tables keyed by round: a resumed run drops their rows after its last checkpoint (a probe of
# a round is a probe of that round's checkpoint, so it goes with it).
ROUND_TABLES = (
    "rounds",
    "clients",
    "layers",
    "pairs",
    "rejections",
    "kept_checkpoints",
    PROBES_TABLE,
    PROBE_UPDATES_TABLE,
)


class StoreError(RuntimeError):
    """A results store this version cannot write or show; the message is one line."""


def _num(value: Any) -> Any:
    """NaN (undefined by definition) becomes NULL; everything else is stored as given."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def pack_state(state: Mapping[str, np.ndarray]) -> bytes:
    """A checkpoint's arrays as .npz bytes (no pickle: plain dtypes only)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in state.items()})  # type: ignore[arg-type]
    return buffer.getvalue()


def unpack_state(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of `pack_state`, bit for bit, in their stored order."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@dataclass
class RoundRecord:
    """Everything one round of one run writes, committed together."""

    run_id: str
    round: int
    values: dict[str, Any]  # rounds columns other than run_id / round
    clients: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> columns
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    rejections: list[tuple[int | None, int | None, str]] = field(default_factory=list)
    checkpoint: Mapping[str, np.ndarray] | None = None  # the global model after this round
    # The server optimizer's state after this round (empty for FedAvg), with the checkpoint.
    server_state: Mapping[str, np.ndarray] = field(default_factory=dict)
    # Also keep this round's checkpoint in `kept_checkpoints` (a `checkpoint-every` round).
    keep: bool = False


@dataclass(frozen=True)
class Resume:
    """Where a run (re)starts: after `round` (0: from scratch), from `state` when resuming."""

    round: int
    state: dict[str, np.ndarray] | None
    server_state: dict[str, np.ndarray] = field(default_factory=dict)  # empty: a fresh server


@dataclass(frozen=True)
class RunInfo:
    """What registers a run: its id and the columns of its `runs` row."""

    run_id: str
    experiment: str
    arm: str
    mode: str
    weight_decay: float
    config_json: str


class ResultStore:
    """A results.db file; safe to read from other processes while a run writes it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot be opened ({_first_line(exc)})") from None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(describe_open_error(self.path, exc)) from None
        except StoreError:
            self._conn.close()
            raise

    def _open(self) -> None:
        self._check_own_tables()  # reads the file: "not a database" surfaces here
        found = self._schema_version()
        self._check_own_columns(found)  # nothing is written into a file we did not make
        if found is not None and found != SCHEMA_VERSION and found not in _UPGRADABLE:
            newer = found > SCHEMA_VERSION
            raise StoreError(
                f"{self.path} holds schema {found}, this fedadamw writes schema {SCHEMA_VERSION}"
                + ("; upgrade fedadamw to write it" if newer else "")
                + "; write to a new --out folder (results already there stay readable)"
            )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.executescript(SCHEMA)
            self._add_columns()  # an older store: its rows stay, the new columns are NULL
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def _check_own_tables(self) -> None:
        """StoreError, before anything is written, for a file fedadamw did not create.

        A store of ours has only our tables, each with our columns (an older schema may lack
        the columns `_ADDED_COLUMNS` names, and whole tables); an empty file is a new store.
        """
        have = _tables(self._conn)
        if not have:
            return
        if have.get("meta") != _expected_tables()["meta"]:
            what = "no meta table" if "meta" not in have else "a meta table of other columns"
            raise StoreError(_foreign(self.path, what))

    def _check_own_columns(self, found: int | None) -> None:
        if found is not None and found > SCHEMA_VERSION:
            return  # a newer fedadamw's store: its own tables; refused by version next
        have, expected = _tables(self._conn), _expected_tables()
        unknown = sorted(set(have) - set(expected))
        if unknown:
            raise StoreError(_foreign(self.path, f"table {unknown[0]!r}"))
        for table, columns in have.items():
            added = {c.split()[0] for c in _ADDED_COLUMNS.get(table, ())}
            missing = set(expected[table]) - added - set(columns)
            extra = set(columns) - set(expected[table])
            if missing or extra:
                odd = ", ".join([*(f"no {c}" for c in sorted(missing)), *sorted(extra)])
                raise StoreError(_foreign(self.path, f"table {table!r}: {odd}"))

    def _add_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    def _schema_version(self) -> int | None:
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and not str(row[0]).isdigit():
            raise StoreError(_foreign(self.path, f"schema version {str(row[0])[:20]!r}"))
        return None if row is None else int(row[0])

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed)."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------
    def register(self, runs: Iterable[RunInfo]) -> None:
        """Add runs that are not in the store yet as ``pending`` (a sweep shows its whole grid)."""
        with self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, NULL)",
                [
                    (r.run_id, r.experiment, r.arm, r.mode, r.weight_decay, r.config_json, 0.0)
                    for r in runs
                ],
            )

    def status(self, run_id: str) -> str | None:
        """The stored status of a run (None: not in the store)."""
        row = self._conn.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def start_run(
        self,
        run_id: str,
        experiment: str,
        arm: str,
        mode: str,
        weight_decay: float,
        config_json: str,
        restart: bool = False,
    ) -> Resume:
        """Mark a run ``running``; resume it after its last checkpoint, or start it over.

        Rows of rounds after the last checkpoint (a round cut short, or a previous attempt
        that went further) are deleted, so the store never mixes two attempts. `restart`
        deletes every row of the run first.
        """
        with self._conn:
            if restart:
                self._delete_rounds(run_id, after=-1)
                self._conn.execute("DELETE FROM checkpoints WHERE run_id=?", (run_id,))
            row = self._conn.execute(
                "SELECT round, state, server_state FROM checkpoints WHERE run_id=?", (run_id,)
            ).fetchone()
            resume = (
                Resume(0, None)
                if row is None
                else Resume(
                    int(row[0]),
                    unpack_state(row[1]),
                    {} if row[2] is None else unpack_state(row[2]),
                )
            )
            # Round 0 (the initial model's evaluation) is kept when resuming from a checkpoint.
            self._delete_rounds(run_id, after=resume.round if row is not None else -1)
            self._conn.execute(
                """INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, 'running', ?, NULL)
                   ON CONFLICT(run_id) DO UPDATE SET status='running', finished_at=NULL,
                   config_json=excluded.config_json, started_at=excluded.started_at""",
                (run_id, experiment, arm, mode, weight_decay, config_json, time.time()),
            )
        return resume

    def write_labels(self, run_id: str, histogram: np.ndarray) -> None:
        """Each client's training-label counts ((clients, classes); zero counts not stored).

        The views order clients by their labels: with the counts stored they never rebuild a
        split (which needs the data stack) to draw a store.
        """
        hist = np.asarray(histogram, dtype=np.int64)
        rows = [
            (run_id, int(pid), int(label), int(hist[pid, label]))
            for pid, label in zip(*np.nonzero(hist), strict=True)
        ]
        with self._conn:
            self._conn.execute("DELETE FROM labels WHERE run_id=?", (run_id,))
            self._conn.executemany("INSERT INTO labels VALUES (?, ?, ?, ?)", rows)

    def write_param_counts(self, run_id: str, counts: tuple[int, int, int, int]) -> None:
        """How many tensors and weights the run decays and keeps (`PARAM_COUNT_COLUMNS`)."""
        with self._conn:
            self._conn.execute(
                f"INSERT OR REPLACE INTO {PARAM_COUNTS_TABLE} VALUES (?, ?, ?, ?, ?)",
                (run_id, *counts),
            )

    def _delete_rounds(self, run_id: str, after: int) -> None:
        for table in ROUND_TABLES:
            self._conn.execute(f"DELETE FROM {table} WHERE run_id=? AND round>?", (run_id, after))

    def finish_run(self, run_id: str, status: str = FINISHED) -> None:
        """Record how a run ended: 'finished', 'interrupted' or 'failed: <reason>'."""
        with self._conn:
            self._conn.execute(
                "UPDATE runs SET status=?, finished_at=? WHERE run_id=?",
                (status, time.time(), run_id),
            )

    def mark_interrupted(self, run_ids: Iterable[str] | None = None) -> int:
        """Every ``running`` run (of `run_ids`) becomes ``interrupted``; how many changed.

        Call it only while holding the folder's writer lock: then no run is really running.
        """
        ids = None if run_ids is None else list(run_ids)
        where = "" if ids is None else f" AND run_id IN ({', '.join('?' * len(ids))})"
        with self._conn:
            cur = self._conn.execute(
                f"UPDATE runs SET status=?, finished_at=? WHERE status=?{where}",
                (INTERRUPTED, time.time(), RUNNING, *(ids or [])),
            )
        return int(cur.rowcount)

    def copy_runs(self, source: str | Path, run_ids: Iterable[str]) -> None:
        """Replace every row of these runs with the rows `source` (another store) holds.

        One transaction. A sweep on a Ray cluster uses it both ways: a grid point's rows so far
        go into its task's private store (to resume there), and the finished task's rows come
        back into the experiment's store, whose one writer stays the driver.
        """
        ids = list(run_ids)
        marks = ", ".join("?" * len(ids))
        ResultStore(source).close()  # refuses a store of another schema; upgrades an older one
        self._conn.execute("ATTACH DATABASE ? AS other", (str(source),))
        try:
            with self._conn:
                for (table,) in self._conn.execute(
                    "SELECT name FROM main.sqlite_master WHERE type='table' AND name != 'meta'"
                ).fetchall():
                    cols = ", ".join(  # quoted: probe_updates has a column named update
                        f'"{r[1]}"' for r in self._conn.execute(f"PRAGMA main.table_info({table})")
                    )
                    where = f"WHERE run_id IN ({marks})"
                    self._conn.execute(f"DELETE FROM main.{table} {where}", ids)
                    self._conn.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM other.{table} "
                        + where,
                        ids,
                    )
        finally:
            self._conn.execute("DETACH DATABASE other")

    def write_round(self, rec: RoundRecord) -> None:
        """Write one round of one run in a single transaction, replacing any earlier copy."""
        key = (rec.run_id, rec.round)
        with self._conn:
            for table in ("clients", "layers", "pairs", "rejections"):
                self._conn.execute(f"DELETE FROM {table} WHERE run_id=? AND round=?", key)
            cols = ["run_id", "round", *rec.values]
            self._conn.execute(
                f"INSERT OR REPLACE INTO rounds ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' * len(cols))})",
                (*key, *(_num(v) for v in rec.values.values())),
            )
            for row in rec.clients:
                ccols = ["run_id", "round", *row]
                self._conn.execute(
                    f"INSERT INTO clients ({', '.join(ccols)}) "
                    f"VALUES ({', '.join('?' * len(ccols))})",
                    (*key, *(_num(v) for v in row.values())),
                )
            for layer, stats in rec.layers.items():
                lcols = ["run_id", "round", "layer", *stats]
                self._conn.execute(
                    f"INSERT INTO layers ({', '.join(lcols)}) "
                    f"VALUES ({', '.join('?' * len(lcols))})",
                    (*key, layer, *(_num(v) for v in stats.values())),
                )
            self._conn.executemany(
                "INSERT INTO pairs VALUES (?, ?, ?, ?, ?)",
                [(*key, i, j, _num(c)) for i, j, c in rec.pairs],
            )
            self._conn.executemany(
                "INSERT INTO rejections VALUES (?, ?, ?, ?, ?)",
                [
                    (*key, pid, None if node is None else str(node), reason)
                    for pid, node, reason in rec.rejections
                ],
            )
            self._conn.execute("DELETE FROM kept_checkpoints WHERE run_id=? AND round=?", key)
            if rec.checkpoint is not None:
                blobs = (pack_state(rec.checkpoint), pack_state(rec.server_state))
                self._conn.execute(
                    "INSERT OR REPLACE INTO checkpoints (run_id, round, state, server_state) "
                    "VALUES (?, ?, ?, ?)",
                    (*key, *blobs),
                )
                if rec.keep:
                    self._conn.execute(
                        "INSERT INTO kept_checkpoints (run_id, round, state, server_state) "
                        "VALUES (?, ?, ?, ?)",
                        (*key, *blobs),
                    )

    # -- probes (`fedadamw probe`) -----------------------------------------------------------
    def probe_keys(self, run_id: str) -> set[tuple[Any, ...]]:
        """The `PROBE_KEY`s of every probe row a run has stored (what a re-run skips)."""
        rows = self._conn.execute(
            f"SELECT {', '.join(PROBE_KEY)} FROM {PROBES_TABLE} WHERE run_id=?", (run_id,)
        ).fetchall()
        return {tuple(r) for r in rows}

    def write_probes(
        self,
        rows: Iterable[Mapping[str, Any]],
        updates: Iterable[tuple[Mapping[str, Any], Mapping[str, np.ndarray]]] = (),
    ) -> None:
        """Probe rows (`PROBE_COLUMNS`) and kept updates, in one transaction, replacing copies.

        `updates` pairs a `PROBE_UPDATE_COLUMNS` row (without ``update``) with the client's
        flat arrays (``update``: Δ; ``decay_part``: Δ_decay), stored as float32 in one
        `pack_state` npz in the ``update`` column.
        """
        cols = ", ".join(PROBE_COLUMNS)
        ucols = ", ".join(f'"{c}"' for c in PROBE_UPDATE_COLUMNS)
        with self._conn:
            self._conn.executemany(
                f"INSERT OR REPLACE INTO {PROBES_TABLE} ({cols}) "
                f"VALUES ({', '.join('?' * len(PROBE_COLUMNS))})",
                [tuple(_num(row[c]) for c in PROBE_COLUMNS) for row in rows],
            )
            self._conn.executemany(
                f"INSERT OR REPLACE INTO {PROBE_UPDATES_TABLE} ({ucols}) "
                f"VALUES ({', '.join('?' * len(PROBE_UPDATE_COLUMNS))})",
                [
                    (
                        *(row[c] for c in PROBE_UPDATE_COLUMNS[:-1]),
                        pack_state(
                            {k: np.asarray(a, np.float32).ravel() for k, a in arrays.items()}
                        ),
                    )
                    for row, arrays in updates
                ],
            )


def _tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every table of a database (SQLite's own left out) and its column names."""
    names = [
        str(r[0])
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        if not str(r[0]).startswith("sqlite_")
    ]
    return {n: [str(r[1]) for r in conn.execute(f'PRAGMA table_info("{n}")')] for n in names}


@cache
def _expected_tables() -> dict[str, list[str]]:
    """The tables and columns this version's `SCHEMA` makes, read from SQLite itself."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA)
        return _tables(conn)
    finally:
        conn.close()


def _foreign(path: Path, what: str) -> str:
    return (
        f"{path} is not a fedadamw results store ({what}); it was left untouched: "
        "move it away or choose another --out"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_open_error(path: Path, exc: sqlite3.DatabaseError, reading: bool = False) -> str:
    """One line for a store that cannot be written (or read): not SQLite, read-only, locked."""
    text = _first_line(exc)
    if reading:
        return (
            f"{path}: not a readable SQLite results store ({text}); "
            "it may be half-written or damaged"
        )
    if "not a database" in text or "malformed" in text:
        return (
            f"{path} is not a fedadamw results store (SQLite says: {text}); "
            "move it away or choose another --out"
        )
    if "readonly" in text or "read-only" in text:
        return f"{path} is read-only ({text}); choose another --out to write results"
    return f"{path}: cannot be written ({text})"
