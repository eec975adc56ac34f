"""Paired comparison of two decay modes across seeds, from a results store.

Runs are grouped into *settings* (`fedadamw.schema.setting_of`: every config key except the
bookkeeping ones, the seed and `weight-decay`). Within a setting, mode A and mode B are paired
by seed — the same seed means the same partitions, sampled clients, batches and initial
weights — and the per-seed differences A − B get a mean and a 95% Student-t interval.
Two comparisons per setting:

- **matched λ**: both modes at the same weight decay, for every λ where both ran;
- **best λ per mode**: each mode at the λ with its highest mean final accuracy over seeds.
  That λ is picked on the same test split it is then scored on, so this row is optimistic for
  both modes alike; it answers "is the gap an artefact of one shared λ?", not "what accuracy
  would a tuned run reach".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedadamw.results.reader import ROUND_MEAN, Store, run_summary
from fedadamw.results.stats import CI_LEVEL, Interval, t_interval
from fedadamw.schema import setting_of

# The numbers compared per run: its final test accuracy, and the mean over its trained rounds
# of whole-update, decay-part and data-part dispersion (the parts exist with track-decay).
MEASURES = ("final_accuracy", "dispersion", "decay_dispersion", "data_dispersion")
# Runs are paired within a setting; λ is not part of it: rows compare modes across λ.
TUNED_KEYS = ("weight-decay",)


@dataclass(frozen=True)
class Comparison:
    """One row: A − B in one setting, at one pair of λ values."""

    setting: str
    kind: str  # "matched λ" or "best λ per mode"
    lambda_a: float
    lambda_b: float
    seeds: tuple[int, ...]
    differences: dict[str, Interval]


def paired_interval(differences: Sequence[float], confidence: float = CI_LEVEL) -> Interval:
    """Mean and Student-t interval of paired differences (NaN entries dropped)."""
    return t_interval(differences, confidence)


def _load_runs(path: Path) -> list[dict[str, Any]]:
    """Every run of the store with its config, status and `MEASURES` (through the one reader)."""
    store = Store(path)
    runs = store.runs()
    stats = [m for m in MEASURES if m != "final_accuracy"]
    summary = run_summary(runs, store.rounds(), stats).set_index("run_id")
    loaded = []
    for _, run in runs.iterrows():
        values = {"final_accuracy": float(summary.at[run["run_id"], "final_accuracy"])}
        for stat in stats:
            if ROUND_MEAN + stat in summary:
                values[stat] = float(summary.at[run["run_id"], ROUND_MEAN + stat])
        loaded.append(
            {"mode": run["mode"], "cfg": run["config"], "values": values, "status": run["status"]}
        )
    return loaded


def _setting(cfg: dict[str, Any]) -> str:
    return setting_of(cfg, also_without=TUNED_KEYS)


def _label(setting: str, all_settings: list[str]) -> str:
    """The keys that tell this setting apart from the others (or the experiment name)."""
    mine = json.loads(setting)
    others = [json.loads(s) for s in all_settings if s != setting]
    differing = sorted({k for o in others for k in mine if o.get(k) != mine[k]})
    return " ".join(f"{k}={mine[k]}" for k in differing) or "all runs"


def compare(
    path: str | Path, mode_a: str = "coupled", mode_b: str = "decoupled"
) -> list[Comparison]:
    """Paired differences A − B for every setting of the store at `path`."""
    runs = [r for r in _load_runs(Path(path)) if r["status"] == "finished"]
    # setting -> mode -> λ -> seed -> values
    table: dict[str, dict[str, dict[float, dict[int, dict[str, float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict))
    )
    for r in runs:
        cfg = r["cfg"]
        table[_setting(cfg)][r["mode"]][float(cfg["weight-decay"])][int(cfg["seed"])] = r["values"]
    settings = sorted(table)
    out: list[Comparison] = []
    for setting in settings:
        by_mode = table[setting]
        if mode_a not in by_mode or mode_b not in by_mode:
            continue
        label = _label(setting, settings)
        for lam in sorted(set(by_mode[mode_a]) & set(by_mode[mode_b])):
            row = _pair(label, "matched λ", by_mode[mode_a][lam], by_mode[mode_b][lam], lam, lam)
            if row is not None:
                out.append(row)
        best_a, best_b = _best_lambda(by_mode[mode_a]), _best_lambda(by_mode[mode_b])
        if len(by_mode[mode_a]) > 1 or len(by_mode[mode_b]) > 1:
            row = _pair(
                label,
                "best λ per mode",
                by_mode[mode_a][best_a],
                by_mode[mode_b][best_b],
                best_a,
                best_b,
            )
            if row is not None:
                out.append(row)
    return out


def _best_lambda(by_lambda: dict[float, dict[int, dict[str, float]]]) -> float:
    def score(lam: float) -> float:
        accs = [v.get("final_accuracy", math.nan) for v in by_lambda[lam].values()]
        finite = [a for a in accs if not math.isnan(a)]
        return float(np.mean(finite)) if finite else -math.inf

    return max(sorted(by_lambda), key=score)


def _pair(
    label: str,
    kind: str,
    a: dict[int, dict[str, float]],
    b: dict[int, dict[str, float]],
    lam_a: float,
    lam_b: float,
) -> Comparison | None:
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    names = [m for m in MEASURES if m in a[seeds[0]] and m in b[seeds[0]]]
    diffs = {
        m: paired_interval([a[s].get(m, math.nan) - b[s].get(m, math.nan) for s in seeds])
        for m in names
    }
    # A measure nobody stored (decay parts without track-decay) is left out, not shown as NaN.
    diffs = {m: iv for m, iv in diffs.items() if iv.n > 0}
    return Comparison(label, kind, lam_a, lam_b, seeds, diffs)


def compare_command(out: Path, mode_a: str, mode_b: str) -> int:
    """Print the paired-difference table of `out`/results.db."""
    from rich.console import Console
    from rich.table import Table

    rows = compare(out / "results.db", mode_a, mode_b)
    console = Console(highlight=False)
    if not rows:
        console.print(
            f"no finished {mode_a} and {mode_b} runs to pair in {out / 'results.db'} "
            "(pairs need the same setting and seed)"
        )
        return 1
    names = [m for m in MEASURES if any(m in r.differences for r in rows)]
    table = Table(title=f"{mode_a} − {mode_b}, paired across seeds (mean [95% CI])")
    for col in ("setting", "comparison", f"λ {mode_a}", f"λ {mode_b}", "seeds", *names):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.setting,
            r.kind,
            f"{r.lambda_a:g}",
            f"{r.lambda_b:g}",
            str(len(r.seeds)),
            *(str(r.differences.get(m, "—")) for m in names),
        )
    console.print(table)
    console.print(
        "final_accuracy: last round's test accuracy; *dispersion: mean over rounds of "
        "1 − resultant length (whole update, decay part, data part)"
    )
    return 0
