"""Read-side queries on a results store (results.db), as pandas DataFrames.

The dashboard, the HTML report and the paper figures read the store only through this module.
It never writes and opens a fresh read-only connection per query, so it sees every round a
running experiment commits and never blocks the writer. Columns are discovered with
``PRAGMA table_info``: statistics that later schema versions add (``decay_*`` / ``data_*`` parts,
shrink-ratio quantiles, …) appear without code changes, and a store from an older version shows
what it has. Anything that makes a store unreadable is a `StoreError` with one line for the user.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedadamw.results.lock import writer_alive
from fedadamw.results.writer import SCHEMA_VERSION, describe_open_error, unpack_state
from fedadamw.results.writer import StoreError as StoreError  # one class for write and read
from fedadamw.schema import (
    INTERRUPTED,
    PARTS,
    PROBE_COLUMNS,
    PROBE_KEY,
    PROBE_STATS,
    PROBE_UPDATES_TABLE,
    PROBES_TABLE,
    RUN_MODE_COLUMN,
    RUNNING,
    STAT_NAMES,
    STORE_FILE,
    setting_of,
)

# Without these the store cannot be shown at all; everything else is optional.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "experiment", "arm", "mode", "config_json", "status"),
    "rounds": ("run_id", "round"),
}
OPTIONAL_TABLES = ("clients", "layers", "pairs", "rejections")

# Round/layer columns that are bookkeeping or training metrics, not divergence statistics.
NON_STAT_COLUMNS = frozenset(
    {
        "run_id",
        "round",
        "layer",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "num_clients",
        "num_rejected",
        "seconds",
    }
)


class EmptyStoreError(StoreError):
    """The store is readable but holds no run yet (a run may be about to start)."""


def resolve_store_path(out: str | Path) -> Path:
    """`OUT/results.db` for an output folder, or the file itself when given one."""
    p = Path(out).expanduser()
    return p / STORE_FILE if p.is_dir() or p.suffix != ".db" else p


@dataclass(frozen=True)
class StatGroups:
    """The statistic columns of one table, grouped by which part of the update they describe."""

    whole: tuple[str, ...]
    data: tuple[str, ...]
    decay: tuple[str, ...]
    other: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        """Every statistic column, whole-update ones first."""
        return (*self.whole, *self.data, *self.decay, *self.other)

    def parts_of(self, stat: str) -> tuple[str, ...]:
        """`stat` and its data/decay counterparts where the store holds them."""
        base = base_stat(stat)
        found = [p + base for p in PARTS if p + base in self.all()]
        return tuple(found) if stat in found else (stat,)


def base_stat(column: str) -> str:
    """The statistic name without its part prefix (`decay_dispersion` → `dispersion`)."""
    for prefix in ("data_", "decay_"):
        if column.startswith(prefix):
            return column[len(prefix) :]
    return column


@dataclass(frozen=True)
class Checkpoint:
    """A run's global model after `round` and its server optimizer's state (empty: FedAvg)."""

    round: int
    state: dict[str, np.ndarray]
    server_state: dict[str, np.ndarray]


class Store:
    """A results store opened for reading; raises `StoreError` if it cannot be shown."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_store_path(path)
        self.warnings: list[str] = []
        self._columns: dict[str, tuple[str, ...]] = {}
        self._stats: dict[str, StatGroups] = {}  # per table; a Store is one snapshot of a page
        self._check()

    # -- connection and schema ------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        conn = self._connect()
        try:
            return pd.read_sql_query(sql, conn, params=list(params))
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            raise StoreError(f"{self.path}: cannot be read ({_first_line(exc)})") from None
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(
                f"no results store at {self.path}; start a run with `fedadamw run --out "
                f"{self.path.parent}` or point at the folder that holds {STORE_FILE}"
            )
        try:
            # Read-only: this process can never modify a store a run is writing.
            conn = connect_readonly(self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot be opened ({_first_line(exc)})") from None
        conn.row_factory = None  # pandas reads plain tuples
        return conn

    def _check(self) -> None:
        conn = self._connect()
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            for table in tables:
                cols = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
                self._columns[table] = cols
            version = None
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = None if row is None else str(row[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: not a readable SQLite results store ({_first_line(exc)}); "
                "it may be half-written or damaged"
            ) from None
        finally:
            conn.close()
        if not tables:
            raise EmptyStoreError(
                f"{self.path} has no tables yet: the run that creates it has not written anything"
            )
        for table, needed in REQUIRED_COLUMNS.items():
            if table not in tables:
                raise StoreError(
                    f"{self.path}: no '{table}' table — not a fedadamw results store, or one "
                    f"from an older version (schema {version or 'unknown'}, this reader knows "
                    f"{SCHEMA_VERSION}); re-run the experiment to rebuild it"
                )
            missing = [c for c in needed if c not in self._columns[table]]
            if missing:
                raise StoreError(
                    f"{self.path}: table '{table}' lacks {', '.join(missing)} — written by an "
                    f"older fedadamw (schema {version or 'unknown'}, this reader knows "
                    f"{SCHEMA_VERSION}); re-run the experiment to rebuild it"
                )
        if version is not None and version.isdigit() and int(version) > SCHEMA_VERSION:
            self.warnings.append(
                f"store schema {version} is newer than this reader's {SCHEMA_VERSION}: "
                "showing the columns it knows"
            )
        absent = [t for t in OPTIONAL_TABLES if t not in tables]
        if absent:
            self.warnings.append(
                f"older store without table(s) {', '.join(absent)}: the views that need them "
                "are empty"
            )
        if int(self._query("SELECT COUNT(*) AS n FROM runs")["n"].iloc[0]) == 0:
            raise EmptyStoreError(f"{self.path} holds no run yet; it fills as a run writes rounds")

    def has_table(self, table: str) -> bool:
        """Whether the store has `table`."""
        return table in self._columns

    def columns(self, table: str) -> tuple[str, ...]:
        """The columns of `table` (empty if the table does not exist)."""
        return self._columns.get(table, ())

    def statistics(self, table: str = "rounds") -> StatGroups:
        """The statistic columns of `table`, grouped by part of the update.

        The whole-update statistics of docs/design.md are always listed; the other columns only when
        they hold a value (a schema-2 store has decay_/data_ columns, NULL without track-decay).
        """
        if table not in self._stats:
            cols = [c for c in self.columns(table) if c not in NON_STAT_COLUMNS]
            filled = set(STAT_NAMES)
            filled |= set(self.filled(table, [c for c in cols if c not in filled]))
            cols = [c for c in cols if c in filled]

            def ordered(prefix: str) -> tuple[str, ...]:
                return tuple(prefix + s for s in STAT_NAMES if prefix + s in cols)

            grouped = {*ordered(""), *ordered("data_"), *ordered("decay_")}
            other = tuple(c for c in cols if c not in grouped)
            self._stats[table] = StatGroups(ordered(""), ordered("data_"), ordered("decay_"), other)
        return self._stats[table]

    def filled(self, table: str, columns: Sequence[str]) -> list[str]:
        """Those of `columns` that exist in `table` and hold at least one value."""
        present = [c for c in columns if c in self.columns(table)]
        if not present:
            return []
        counts = self._query(
            "SELECT " + ", ".join(f'COUNT("{c}") AS "{c}"' for c in present) + f" FROM {table}"
        )
        return [c for c in present if int(counts[c].iloc[0]) > 0]

    # -- queries --------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        """One row per run with its parsed config, seed, condition key and progress."""
        cols = [
            c
            for c in (
                "run_id",
                "experiment",
                "arm",
                "mode",
                "weight_decay",
                "status",
                "started_at",
                "finished_at",
                "config_json",
            )
            if c in self.columns("runs")
        ]
        order = " ORDER BY started_at" if "started_at" in cols else ""
        df = self._query(f"SELECT {', '.join(cols)} FROM runs{order}")
        progress = self._query(
            "SELECT run_id, MAX(round) AS last_round, "
            "SUM(CASE WHEN round >= 1 THEN 1 ELSE 0 END) AS rounds_done FROM rounds GROUP BY run_id"
        )
        # 'running' only while a live process holds the folder's writer lock.
        alive = writer_alive(self.path.parent)
        df["status"] = [effective_status(str(s), alive) for s in df["status"]]
        df = df.merge(progress, on="run_id", how="left")
        df["rounds_done"] = df["rounds_done"].fillna(0).astype(int)
        configs = [_parse_config(text) for text in df["config_json"]]
        df["config"] = configs
        df["seed"] = [c.get("seed", 0) for c in configs]
        # A setting is everything but mode and seed; a condition is a setting run in one mode.
        df["setting"] = [setting_of(c) for c in configs]
        df["condition"] = [
            json.dumps([e, m, setting])
            for e, m, setting in zip(df["experiment"], df["mode"], df["setting"], strict=True)
        ]
        df["planned_rounds"] = [c.get("num-server-rounds") for c in configs]
        return df

    def rounds(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Every round row of the given runs (all runs when None), ordered by run and round."""
        return self._rows("rounds", run_ids, order="run_id, round")

    def layers(
        self, run_ids: Iterable[str] | None = None, layer: str | None = None
    ) -> pd.DataFrame:
        """Per-layer statistic rows, optionally of one layer only."""
        if not self.has_table("layers"):
            return pd.DataFrame(columns=["run_id", "round", "layer"])
        extra = ("layer = ?", [layer]) if layer is not None else None
        return self._rows("layers", run_ids, order="run_id, round", extra=extra)

    def layer_names(self) -> list[str]:
        """Layer names in the order the model holds them (the order they were written)."""
        if not self.has_table("layers"):
            return []
        df = self._query("SELECT layer FROM layers GROUP BY layer ORDER BY MIN(rowid)")
        return [str(x) for x in df["layer"]]

    def clients(
        self, run_ids: Iterable[str] | None = None, round: int | None = None
    ) -> pd.DataFrame:
        """Per-client rows of the given runs, optionally of one round."""
        if not self.has_table("clients"):
            return pd.DataFrame(columns=["run_id", "round", "partition_id"])
        extra = ("round = ?", [round]) if round is not None else None
        return self._rows("clients", run_ids, order="run_id, round, partition_id", extra=extra)

    def pairs(self, run_id: str, round: int) -> pd.DataFrame:
        """The pairwise cosines (i < j) of one run and round."""
        if not self.has_table("pairs"):
            return pd.DataFrame(columns=["partition_i", "partition_j", "cosine"])
        return self._query(
            "SELECT partition_i, partition_j, cosine FROM pairs WHERE run_id = ? AND round = ? "
            "ORDER BY partition_i, partition_j",
            (run_id, round),
        )

    def label_histogram(self, run_id: str) -> np.ndarray | None:
        """A run's (clients, classes) training-label counts, or None if the store has none."""
        if not self.has_table("labels"):
            return None
        df = self._query(
            "SELECT partition_id, label, count FROM labels WHERE run_id = ?", (run_id,)
        )
        if df.empty:
            return None
        hist = np.zeros((int(df["partition_id"].max()) + 1, int(df["label"].max()) + 1), int)
        hist[df["partition_id"].to_numpy(int), df["label"].to_numpy(int)] = df["count"]
        return hist

    def checkpoint_rounds(self, run_id: str) -> list[int]:
        """The rounds of a run whose global model the store holds, ascending.

        Every `checkpoint-every`-th round (`kept_checkpoints`) plus the run's last stored round
        (`checkpoints`, what a resumed run continues from); only the last one with the
        default `checkpoint-every = 0`.
        """
        rounds: set[int] = set()
        for table in ("checkpoints", "kept_checkpoints"):
            if self.has_table(table):
                df = self._query(f"SELECT round FROM {table} WHERE run_id = ?", (run_id,))
                rounds.update(int(r) for r in df["round"])
        return sorted(rounds)

    def checkpoint(self, run_id: str, round: int) -> Checkpoint:
        """The global model and server optimizer state a run stored after `round`.

        StoreError naming the kept rounds if the store holds no checkpoint of that round.
        """
        for table in ("kept_checkpoints", "checkpoints"):
            if not self.has_table(table):
                continue
            conn = self._connect()
            try:
                row = conn.execute(
                    f"SELECT state, server_state FROM {table} WHERE run_id = ? AND round = ?",
                    (run_id, round),
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: cannot be read ({_first_line(exc)})") from None
            finally:
                conn.close()
            if row is not None:
                server = {} if row[1] is None else unpack_state(row[1])
                return Checkpoint(round, unpack_state(row[0]), server)
        kept = ", ".join(map(str, self.checkpoint_rounds(run_id))) or "none"
        raise StoreError(
            f"{self.path}: run {run_id!r} has no checkpoint of round {round} (kept rounds: "
            f"{kept}; set checkpoint-every to keep more)"
        )

    def probes(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The probe rows (`fedadamw probe`) of the given runs, with their runs' config joined.

        Columns: `PROBE_COLUMNS` (``mode``, ``learning_rate``, ``weight_decay`` are the probe
        setting's), then the run's ``experiment``, ``arm``, ``run_mode`` (the mode the run
        trained in), ``seed``, ``setting`` and ``condition`` as `runs` has them, then every key
        of the run's config under its own kebab-case name (``dirichlet-alpha``, ``num-clients``,
        ``weight-decay`` — the run's λ, not the probe's). Ordered by run, round and setting.
        An empty DataFrame with `PROBE_COLUMNS` when the store has no probes table or rows.
        """
        if not self.has_table(PROBES_TABLE):
            return pd.DataFrame(columns=list(PROBE_COLUMNS))
        df = self._rows(PROBES_TABLE, run_ids, order=", ".join(PROBE_KEY))
        df = df[[c for c in PROBE_COLUMNS if c in df]]
        for stat in PROBE_STATS:  # NULL (undefined, e.g. cosines of one client) is NaN
            df[stat] = pd.to_numeric(df[stat], errors="coerce").astype("float64")
        if df.empty:
            return pd.DataFrame(columns=list(PROBE_COLUMNS))
        runs = self.runs()
        runs = runs[runs["run_id"].isin(set(df["run_id"]))]
        joined = runs[["run_id", "experiment", "arm", "mode", "seed", "setting", "condition"]]
        joined = joined.rename(columns={"mode": RUN_MODE_COLUMN})
        keys = list(
            dict.fromkeys(k for c in runs["config"] for k in c if k not in joined and k not in df)
        )
        config = pd.DataFrame(
            {k: [c.get(k) for c in runs["config"]] for k in keys}, index=joined.index
        )
        joined = pd.concat([joined, config], axis=1)
        return df.merge(joined, on="run_id", how="left")

    def probe_updates(
        self,
        run_ids: Iterable[str] | None = None,
        round: int | None = None,
    ) -> pd.DataFrame:
        """The probed clients' updates kept with ``--keep-updates``, one row per client.

        Columns: `PROBE_KEY`, ``partition_id``, ``num_examples``, ``update`` (the client's
        flat float32 update Δ over the model's parameters, as a numpy array) and
        ``decay_part`` (its decay part Δ_decay, same layout); optionally of one checkpoint
        round. Empty when none.
        """
        cols = [*PROBE_KEY, "partition_id", "num_examples", "update", "decay_part"]
        if not self.has_table(PROBE_UPDATES_TABLE):
            return pd.DataFrame(columns=cols)
        extra = ("round = ?", [round]) if round is not None else None
        df = self._rows(
            PROBE_UPDATES_TABLE, run_ids, order=", ".join([*PROBE_KEY, "partition_id"]), extra=extra
        )
        if df.empty:
            return pd.DataFrame(columns=cols)
        arrays = [unpack_state(bytes(b)) for b in df["update"]]
        df["update"] = [a["update"] for a in arrays]
        df["decay_part"] = [a.get("decay_part") for a in arrays]
        return df[cols]

    def rejections(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Client replies that were not aggregated, and why."""
        if not self.has_table("rejections"):
            return pd.DataFrame(columns=["run_id", "round", "partition_id", "reason"])
        return self._rows("rejections", run_ids, order="run_id, round")

    def _rows(
        self,
        table: str,
        run_ids: Iterable[str] | None,
        order: str,
        extra: tuple[str, list[Any]] | None = None,
    ) -> pd.DataFrame:
        where: list[str] = []
        params: list[Any] = []
        if run_ids is not None:
            ids = list(run_ids)
            if not ids:
                return pd.DataFrame(columns=list(self.columns(table)))
            where.append(f"run_id IN ({', '.join('?' * len(ids))})")
            params += ids
        if extra is not None:
            where.append(extra[0])
            params += extra[1]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._query(f"SELECT * FROM {table}{clause} ORDER BY {order}", params)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse_config(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- connections and liveness ----------------------------------------------
def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection (works while a writer holds the WAL, and in read-only folders).

    The URI comes from `Path.as_uri()`, so `#`, `?`, `%` and spaces in the path are escaped
    and `mode=ro` is never lost. A store in a folder this process cannot write, and that has
    no WAL file (its writer closed it cleanly), is opened as immutable: SQLite cannot create
    the shared-memory file beside it, and no writer can be changing it.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"no results store at {p}")
    uri = f"{p.as_uri()}?mode=ro"
    try:
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30.0)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            wal = p.with_name(p.name + "-wal")
            if os.access(p.parent, os.W_OK) or (wal.exists() and wal.stat().st_size > 0):
                raise
            conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=30.0)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(describe_open_error(p, exc, reading=True)) from None
    conn.row_factory = sqlite3.Row
    return conn


def effective_status(status: str, writer_alive: bool) -> str:
    """A run's status as a reader should show it: ``running`` needs a live writer."""
    return INTERRUPTED if status == RUNNING and not writer_alive else status
