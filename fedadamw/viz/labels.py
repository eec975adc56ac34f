"""Each client's label counts, for ordering clients by their dominant label.

Runs store their clients' label counts (`labels` table). Stores written before that have
none: then the split, a deterministic function of the run's config, is rebuilt — that needs
the data layer, imported only then, so importing the views stays light.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fedadamw.viz.stores import Stores


@dataclass(frozen=True)
class ClientLabels:
    """Each client's label counts, or why they are unknown (then clients keep partition order)."""

    histogram: np.ndarray | None  # (num_partitions, num_classes)
    note: str | None = None

    def dominant(self, partition_id: int) -> int | None:
        """The most frequent label of a client (None when unknown)."""
        if self.histogram is None or not 0 <= partition_id < len(self.histogram):
            return None
        return int(np.argmax(self.histogram[partition_id]))

    def dominant_share(self, partition_id: int) -> float | None:
        """The fraction of a client's examples that carry its dominant label (label skew)."""
        if self.histogram is None or not 0 <= partition_id < len(self.histogram):
            return None
        row = self.histogram[partition_id]
        total = row.sum()
        return float(row.max() / total) if total > 0 else None

    def order(self, partition_ids: Iterable[int]) -> list[int]:
        """Clients sorted by dominant label, then by how dominant it is, then by id."""
        ids = list(partition_ids)
        if self.histogram is None:
            return sorted(ids)

        def key(pid: int) -> tuple[int, float, int]:
            label = self.dominant(pid)
            share = self.dominant_share(pid)
            return (-1 if label is None else label, -(share or 0.0), pid)

        return sorted(ids, key=key)


def client_labels(config_json: str) -> ClientLabels:
    """Regenerate a run's split from its config (deterministic) and count labels per client."""
    try:
        # Imported here: the data stack is needed only for this view.
        from fedadamw.config import Config
        from fedadamw.data.split import DataSpec, label_histogram

        try:
            values = json.loads(config_json)
        except (TypeError, json.JSONDecodeError):
            values = None
        if not isinstance(values, dict) or not values:
            raise ValueError("the run has no stored config")
        hist = label_histogram(DataSpec.from_config(Config.from_mapping(values)))
    except Exception as exc:  # any failure only costs the ordering; say why, keep the page
        text = str(exc).strip()
        why = text.splitlines()[0] if text else type(exc).__name__
        return ClientLabels(
            None, f"label histograms unavailable ({why}); clients shown in partition order"
        )
    return ClientLabels(np.asarray(hist))


def stored_labels(store: Stores) -> Callable[[str], ClientLabels]:
    """A label source for `store`: a run's stored counts, rebuilt only for older stores."""
    runs = store.runs()
    run_of = dict(zip(runs["config_json"].astype(str), runs["run_id"].astype(str), strict=True))

    @functools.cache
    def labels_for(config_json: str) -> ClientLabels:
        run_id = run_of.get(config_json)
        hist = None if run_id is None else store.label_histogram(run_id)
        return ClientLabels(hist) if hist is not None else client_labels(config_json)

    return labels_for
