"""Labels and summaries derived from a store's DataFrames: what tells runs apart, per-run
summaries, the closing table of `fedadamw run`, a round's cosine matrix.

`fedadamw.results.reader` reads the store; these functions only reshape what it returns, so the
dashboard, the report, the trackers and the console agree on every label and summary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedadamw.results.reader import Store
from fedadamw.schema import NON_SETTING_KEYS, key_applies

# Column prefixes of `run_summary`: a statistic averaged over a run's trained rounds, or its last.
ROUND_MEAN = "mean over rounds:"
FINAL = "final:"


# -- labels and derived tables ------------------------------------------------------------
def varying_keys(runs: pd.DataFrame) -> list[str]:
    """Config keys whose values differ between the conditions of `runs` (seeds excluded)."""
    keys: set[str] = set()
    for config in runs["config"]:
        keys |= set(config)
    varying = []
    for key in sorted(keys - NON_SETTING_KEYS):
        values = {json.dumps(c.get(key)) for c in runs["config"]}
        if len(values) > 1:
            varying.append(key)
    return varying


def setting_labels(runs: pd.DataFrame) -> dict[str, str]:
    """A short label per setting: the config values that differ between settings."""
    keys = [k for k in varying_keys(runs) if k != "mode"]
    labels: dict[str, str] = {}
    for setting, config in zip(runs["setting"], runs["config"], strict=True):
        shown = [k for k in keys if key_applies(k, config)]
        labels[setting] = " · ".join(f"{k}={_fmt(config.get(k))}" for k in shown) or "all runs"
    return labels


def condition_labels(runs: pd.DataFrame) -> dict[str, str]:
    """A short legend label per condition: the mode plus the config values that differ."""
    keys = [k for k in varying_keys(runs) if k != "mode"]
    multi_exp = runs["experiment"].nunique() > 1
    labels: dict[str, str] = {}
    for _, row in runs.iterrows():
        parts = [f"{row['experiment']}: {row['mode']}" if multi_exp else str(row["mode"])]
        parts += [
            f"{k}={_fmt(row['config'].get(k))}" for k in keys if key_applies(k, row["config"])
        ]
        labels[row["condition"]] = " · ".join(parts)
    return labels


def config_diff(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows: config keys that differ between conditions (plus mode); columns: conditions."""
    labels = condition_labels(runs)
    firsts = runs.drop_duplicates("condition")
    keys = ["mode", *[k for k in varying_keys(runs) if k != "mode"]]
    seeds = runs.groupby("condition")["seed"].apply(lambda s: ", ".join(str(x) for x in sorted(s)))
    data = {
        labels[row["condition"]]: [
            *(row["mode"] if k == "mode" else _fmt(row["config"].get(k)) for k in keys),
            seeds[row["condition"]],
        ]
        for _, row in firsts.iterrows()
    }
    return pd.DataFrame(data, index=[*keys, "seeds"])


def shared_config(runs: pd.DataFrame) -> dict[str, Any]:
    """The config values every run of `runs` shares (the fixed part of an experiment)."""
    varying = set(varying_keys(runs)) | NON_SETTING_KEYS
    first = runs["config"].iloc[0] if len(runs) else {}
    return {k: v for k, v in sorted(first.items()) if k not in varying}


def run_summary(runs: pd.DataFrame, rounds: pd.DataFrame, stats: Sequence[str]) -> pd.DataFrame:
    """Per run: final test accuracy; each statistic's mean over trained rounds and last value."""
    out = runs[["run_id", "experiment", "mode", "seed", "condition", "config"]].copy()
    trained = rounds[rounds["round"] >= 1]
    last = rounds.sort_values("round").groupby("run_id").tail(1).set_index("run_id")
    acc = last["test_accuracy"] if "test_accuracy" in last else pd.Series(dtype=float)
    out["final_accuracy"] = out["run_id"].map(acc)
    for stat in stats:
        if stat not in rounds:
            continue
        out[ROUND_MEAN + stat] = out["run_id"].map(trained.groupby("run_id")[stat].mean())
        final = trained.dropna(subset=[stat]).sort_values("round").groupby("run_id").tail(1)
        out[FINAL + stat] = out["run_id"].map(final.set_index("run_id")[stat])
    return out


def last_rounds_mean(rounds: pd.DataFrame, columns: Sequence[str], k: int) -> pd.DataFrame:
    """Per run (index `run_id`), each column's mean over its last `k` trained rounds.

    NULLs (NaN) are skipped; a run with fewer than `k` trained rounds averages what it has.
    """
    trained = rounds[rounds["round"] >= 1].sort_values(["run_id", "round"])
    present = [c for c in columns if c in trained]
    return trained.groupby("run_id").tail(k).groupby("run_id")[present].mean()


def cosine_matrix(pairs: pd.DataFrame) -> tuple[list[int], np.ndarray]:
    """The symmetric K×K cosine matrix of one round from its i < j rows (diagonal 1)."""
    ids = sorted(set(pairs["partition_i"].astype(int)) | set(pairs["partition_j"].astype(int)))
    index = {pid: n for n, pid in enumerate(ids)}
    mat = np.eye(len(ids))
    for i, j, c in pairs[["partition_i", "partition_j", "cosine"]].itertuples(index=False):
        value = math.nan if c is None or pd.isna(c) else float(c)
        mat[index[int(i)], index[int(j)]] = mat[index[int(j)], index[int(i)]] = value
    return ids, mat


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


SUMMARY_STATS = ("mean_pairwise_cosine", "dispersion", "relative_drift")


def arm_summary(path: str | Path, run_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per run (in `run_ids` order): status, final test accuracy, trained rounds and the mean
    over trained rounds of `SUMMARY_STATS` — the closing table of `fedadamw run`."""
    store = Store(path)
    runs = store.runs()
    rounds = store.rounds(None if run_ids is None else list(run_ids))
    summary = run_summary(runs, rounds, SUMMARY_STATS).set_index("run_id")
    trained = rounds[rounds["round"] >= 1].groupby("run_id")["round"].count()
    rows = []
    for _, run in runs.iterrows():
        rid = run["run_id"]
        if run_ids is not None and rid not in run_ids:
            continue
        row = {k: run[k] for k in ("run_id", "arm", "mode", "weight_decay", "status")}
        row["final_accuracy"] = _float_or_none(summary.at[rid, "final_accuracy"])
        row["rounds"] = int(trained.get(rid, 0))
        for stat in SUMMARY_STATS:
            column = ROUND_MEAN + stat
            row[stat] = _float_or_none(summary.at[rid, column]) if column in summary else None
        rows.append(row)
    if run_ids is not None:
        order = {rid: n for n, rid in enumerate(run_ids)}
        rows.sort(key=lambda r: order[r["run_id"]])
    return rows


def _float_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)
