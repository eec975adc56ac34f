"""Several results stores read as one, so the views can overlay output folders.

`Stores` answers the same queries as `fedadamw.results.reader.Store`. With more than one store
every run id is prefixed with its store's tag (`tag|run_id`): two folders that ran the same
config hold the same run id, and their rows must stay apart. Runs are grouped by *setting*
(`fedadamw.schema.setting_of`) whatever folder holds them, so the same experiment run in two
folders overlays as one condition, its runs as replicates. A store that cannot be shown next to
others that can becomes a warning; only when none can be shown is its error raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedadamw.results.lock import writer_alive
from fedadamw.results.reader import (
    EmptyStoreError,
    StatGroups,
    Store,
    StoreError,
    connect_readonly,
    resolve_store_path,
)

SEP = "|"  # between a store's tag and a run id (run ids hold ':' but never '|')


def store_tags(paths: Sequence[Path]) -> list[str]:
    """A short distinct name per store: its folder's name, with parents where names clash."""
    depth = 1
    while True:
        tags = ["/".join(p.parent.parts[-depth:]) or str(p) for p in paths]
        if len(set(tags)) == len(tags) or depth > max(len(p.parts) for p in paths):
            return tags if len(set(tags)) == len(tags) else [str(p) for p in paths]
        depth += 1


class Stores:
    """Read-side queries over one or more stores (see the module)."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        resolved = [resolve_store_path(p) for p in paths]
        if not resolved:
            raise StoreError("no results store given; pass an OUT folder of `fedadamw run`")
        self.stores: list[Store] = []
        self.tags: list[str] = []
        self.warnings: list[str] = []
        errors: list[StoreError] = []
        for tag, path in zip(store_tags(resolved), resolved, strict=True):
            try:
                store = Store(path)
            except StoreError as exc:
                errors.append(exc)
                continue
            self.stores.append(store)
            self.tags.append(tag)
            self.warnings += [f"{tag}: {w}" if len(resolved) > 1 else w for w in store.warnings]
        if not self.stores:
            broken = [e for e in errors if not isinstance(e, EmptyStoreError)]
            if len(broken) > 1:  # name every store that cannot be shown, not only the first
                raise StoreError(
                    f"none of the {len(errors)} stores can be shown: "
                    + "; ".join(str(e) for e in errors)
                )
            raise (broken or errors)[0]
        self.warnings += [str(e) for e in errors]
        self.tagged = len(resolved) > 1
        self.paths = [s.path for s in self.stores]

    @property
    def path(self) -> Path:
        """The first store's file (for messages; `paths` lists them all)."""
        return self.paths[0]

    # -- run ids ----------------------------------------------------------------------------
    def _tag(self, i: int, run_id: str) -> str:
        return f"{self.tags[i]}{SEP}{run_id}" if self.tagged else run_id

    def _split(self, run_ids: Iterable[str] | None) -> list[tuple[int, list[str] | None]]:
        """Per store: the store's own ids among `run_ids` (None: all of its runs)."""
        if run_ids is None:
            return [(i, None) for i in range(len(self.stores))]
        if not self.tagged:
            return [(0, list(run_ids))]
        mine: dict[int, list[str]] = {i: [] for i in range(len(self.stores))}
        index = {t: i for i, t in enumerate(self.tags)}
        for rid in run_ids:
            tag, _, own = str(rid).partition(SEP)
            if tag in index:
                mine[index[tag]].append(own)
        return [(i, ids) for i, ids in mine.items() if ids]

    def _gather(self, table: str, run_ids: Iterable[str] | None, query: Any) -> pd.DataFrame:
        frames = []
        for i, ids in self._split(run_ids):
            df = query(self.stores[i], ids)
            if self.tagged and "run_id" in df:
                df = df.assign(run_id=[self._tag(i, r) for r in df["run_id"]])
            frames.append(df)
        frames = [f for f in frames if len(f.columns)]
        if not frames:
            return pd.DataFrame(columns=["run_id", *self.columns(table)])
        nonempty = [f for f in frames if len(f)] or frames[:1]
        return pd.concat(nonempty, ignore_index=True) if len(nonempty) > 1 else nonempty[0]

    # -- the Store interface ----------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        """Every store's runs, tagged, with a `store` column (the store's tag)."""
        frames = []
        for i, store in enumerate(self.stores):
            df = store.runs()
            df.insert(0, "store", self.tags[i])
            df["stored_id"] = df["run_id"]
            df["run_id"] = [self._tag(i, r) for r in df["run_id"]]
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def rounds(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Round rows of the given runs."""
        return self._gather("rounds", run_ids, lambda s, ids: s.rounds(ids))

    def layers(
        self, run_ids: Iterable[str] | None = None, layer: str | None = None
    ) -> pd.DataFrame:
        """Per-layer rows of the given runs, optionally of one layer."""
        return self._gather("layers", run_ids, lambda s, ids: s.layers(ids, layer))

    def clients(
        self, run_ids: Iterable[str] | None = None, round: int | None = None
    ) -> pd.DataFrame:
        """Per-client rows of the given runs, optionally of one round."""
        return self._gather("clients", run_ids, lambda s, ids: s.clients(ids, round))

    def rejections(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Client replies that were not aggregated, and why."""
        return self._gather("rejections", run_ids, lambda s, ids: s.rejections(ids))

    def probes(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """`fedadamw probe`'s rows of the given runs: one per (run, round, mode, η, λ)."""
        return self._gather("probes", run_ids, lambda s, ids: s.probes(ids))

    def pairs(self, run_id: str, round: int) -> pd.DataFrame:
        """The pairwise cosines (i < j) of one run and round."""
        split = self._split([run_id])
        if not split:
            return pd.DataFrame(columns=["partition_i", "partition_j", "cosine"])
        i, ids = split[0]
        return self.stores[i].pairs((ids or [run_id])[0], round)

    def label_histogram(self, run_id: str) -> np.ndarray | None:
        """A run's (clients, classes) training-label counts, or None."""
        split = self._split([run_id])
        if not split:
            return None
        i, ids = split[0]
        return self.stores[i].label_histogram((ids or [run_id])[0])

    def has_table(self, table: str) -> bool:
        """Whether any store has `table`."""
        return any(s.has_table(table) for s in self.stores)

    def columns(self, table: str) -> tuple[str, ...]:
        """The columns of `table` across the stores, in first-seen order."""
        return tuple(dict.fromkeys(c for s in self.stores for c in s.columns(table)))

    def filled(self, table: str, columns: Sequence[str]) -> list[str]:
        """Those of `columns` that hold a value in some store, in the given order."""
        found = {c for s in self.stores for c in s.filled(table, columns)}
        return [c for c in columns if c in found]

    def statistics(self, table: str = "rounds") -> StatGroups:
        """The statistic columns of `table` across the stores, grouped by part."""
        groups = [s.statistics(table) for s in self.stores]

        def union(part: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(c for g in groups for c in getattr(g, part)))

        return StatGroups(union("whole"), union("data"), union("decay"), union("other"))

    def layer_names(self) -> list[str]:
        """Layer names in model order, across the stores."""
        return list(dict.fromkeys(n for s in self.stores for n in s.layer_names()))


# -- liveness -------------------------------------------------------------------------------
def store_state(paths: Sequence[str | Path]) -> tuple[tuple[bool, bool, bool], ...]:
    """Per store: (holds runs, a writer is alive, the file exists) — cheap enough to poll."""
    state = []
    for raw in paths:
        path = resolve_store_path(raw)
        exists = path.is_file()
        has_runs = False
        if exists:
            try:
                conn = connect_readonly(path)
                try:
                    has_runs = bool(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
                finally:
                    conn.close()
            except Exception:  # not a store yet (or not one at all): no runs to show
                has_runs = False
        state.append((has_runs, writer_alive(path.parent), exists))
    return tuple(state)


def is_live(state: Sequence[tuple[bool, bool, bool]]) -> bool:
    """Whether any store is being written (a live process holds its writer lock)."""
    return any(alive for _, alive, _ in state)
