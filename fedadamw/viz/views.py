"""What to draw from a store: the queries behind each view, and the standard figure set.

The `*_figure` functions read what one view needs from the stores (`fedadamw.viz.stores.Stores`,
one output folder or several overlaid) and hand it to a builder of `fedadamw.viz.figures`, or
return None when the stores hold nothing to draw yet; the dashboard calls them per selection.
`runs_table`, `rejections_table` and `live_status` are the tables and the progress line that
dashboard and report share. `standard_sections` picks the figures the HTML report and the paper
figures publish for every experiment, with the file stem and caption of each.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from fedadamw.results.summaries import (
    ROUND_MEAN,
    condition_labels,
    cosine_matrix,
    run_summary,
    setting_labels,
    varying_keys,
)
from fedadamw.schema import PENDING, RUNNING, SHRINK_COLUMNS
from fedadamw.text import duration
from fedadamw.viz import figures
from fedadamw.viz.labels import ClientLabels, stored_labels
from fedadamw.viz.stores import Stores
from fedadamw.viz.style import stat_label

LabelSource = Callable[[str], ClientLabels]  # a run's config_json → its clients' labels


def paired_series(runs: pd.DataFrame) -> list[figures.Series]:
    """The conditions of `runs` setting by setting, the modes of each together.

    Views that show only the first few conditions then show whole comparisons (coupled and
    decoupled at the same setting), not all settings of one mode.
    """
    order = {s: n for n, s in enumerate(dict.fromkeys(runs["setting"]))}
    setting = dict(zip(runs["condition"], runs["setting"], strict=True))
    series = figures.series_of(runs)
    rank = {s.condition: n for n, s in enumerate(series)}
    return sorted(series, key=lambda s: (order[setting[s.condition]], rank[s.condition]))


def seed_runs(runs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The runs of one seed, one per condition (per-client views show a single replicate)."""
    return runs[runs["seed"] == seed].drop_duplicates("condition")


def divergence_figure(
    store: Stores,
    runs: pd.DataFrame,
    stat: str,
    layer: str | None = None,
    parts: bool = True,
    band: str = "ci",
) -> go.Figure | None:
    """The statistic over rounds (with its data / decay parts when stored), or None if no data."""
    table = "layers" if layer else "rounds"
    stats = store.statistics(table).parts_of(stat) if parts else (stat,)
    ids = list(runs["run_id"])
    rows = store.layers(ids, layer) if layer else store.rounds(ids)
    rows = rows[rows["round"] >= 1] if "round" in rows else rows
    if stat not in rows or rows[stat].notna().sum() == 0:
        return None
    return figures.over_rounds(rows, runs, stats, band=band)


def shrink_figure(store: Stores, runs: pd.DataFrame) -> go.Figure | None:
    """Shrink ratios over rounds, or None when the store holds none (track-decay off)."""
    if len(store.filled("rounds", SHRINK_COLUMNS)) < len(SHRINK_COLUMNS):
        return None
    rows = store.rounds(list(runs["run_id"]))
    if rows[list(SHRINK_COLUMNS)].notna().all(axis=1).sum() == 0:
        return None
    return figures.shrink_ratios(rows, runs)


def accuracy_figure(store: Stores, runs: pd.DataFrame, band: str = "ci") -> go.Figure | None:
    """Accuracy and loss curves of `runs`, or None before the first evaluation."""
    rows = store.rounds(list(runs["run_id"]))
    if "test_accuracy" not in rows or rows["test_accuracy"].notna().sum() == 0:
        return None
    return figures.training_curves(rows, runs, band)


def heatmap_figure(
    store: Stores,
    runs: pd.DataFrame,
    seed: int,
    round: int,
    labels_for: LabelSource,
    max_panels: int = 4,
) -> tuple[go.Figure | None, list[str]]:
    """Cosine matrices of one round and seed, one panel per condition; (figure, notes)."""
    panels: list[figures.HeatPanel] = []
    notes: list[str] = []
    chosen = seed_runs(runs, seed)
    by_condition = {c: row for c, row in zip(chosen["condition"], chosen.itertuples(), strict=True)}
    series = [s for s in paired_series(runs) if s.condition in by_condition]
    if len(series) > max_panels:
        notes.append(f"showing the first {max_panels} of {len(series)} conditions")
        series = series[:max_panels]
    for s in series:
        run = by_condition[s.condition]
        pairs = store.pairs(str(run.run_id), round)
        if pairs.empty:
            notes.append(f"{s.label}: no pairwise cosines for round {round} yet")
            continue
        ids, mat = cosine_matrix(pairs)
        labels = labels_for(str(run.config_json))
        if labels.note and labels.note not in notes:
            notes.append(labels.note)
        order = labels.order(ids)
        pos = [ids.index(pid) for pid in order]
        upper = mat[np.triu_indices(len(ids), k=1)]
        mean = float(np.nanmean(upper)) if np.isfinite(upper).any() else math.nan
        panels.append(
            figures.HeatPanel(
                title=f"{s.label} · mean cos {mean:.3f}",
                mode=s.mode,
                partition_ids=order,
                matrix=mat[np.ix_(pos, pos)],
                dominant=[labels.dominant(pid) for pid in order],
            )
        )
    return (figures.cosine_heatmaps(panels) if panels else None), notes


# What the client scatter can colour by: label skew, local work, and (where stored) decay;
# `stat_label` names each.
COLOR_CHOICES = (
    "dominant_share",
    "local_steps",
    "work_fraction",
    "num_examples",
    "batch_size",
    "train_loss",
    "decay_cosine_to_neg_weights",
    "shrink_p50",
)


def color_choices(store: Stores) -> list[str]:
    """The scatter colourings this store can fill (label skew is derived, always offered)."""
    stored = [c for c in COLOR_CHOICES if c != "dominant_share"]
    return ["dominant_share", *store.filled("clients", stored)]


def scatter_figure(
    store: Stores,
    runs: pd.DataFrame,
    seed: int,
    round: int,
    color_by: str,
    labels_for: LabelSource,
) -> go.Figure | None:
    """Per-client norm vs cosine-to-aggregate of one round and seed, or None without clients."""
    chosen = seed_runs(runs, seed)
    clients = store.clients(list(chosen["run_id"]), round)
    if clients.empty or "update_norm" not in clients or "cosine_to_aggregate" not in clients:
        return None
    if color_by == "dominant_share":
        configs = dict(zip(chosen["run_id"], chosen["config_json"], strict=True))
        clients["dominant_share"] = [
            labels_for(configs[rid]).dominant_share(int(pid))
            for rid, pid in zip(clients["run_id"], clients["partition_id"], strict=True)
        ]
    label = stat_label(color_by) if color_by in COLOR_CHOICES else None
    return figures.client_scatter(clients, chosen, color_by, label)


def layers_figure(
    store: Stores, runs: pd.DataFrame, stat: str, band: str = "ci"
) -> go.Figure | None:
    """Which layers diverge most, or None when the store has no per-layer rows."""
    rows = store.layers(list(runs["run_id"]))
    if rows.empty or stat not in rows or rows[stat].notna().sum() == 0:
        return None
    return figures.layer_bars(rows, runs, stat, store.layer_names(), band)


def sweep_figure(
    store: Stores, runs: pd.DataFrame, x_key: str, y_key: str | None, metric: str
) -> go.Figure | None:
    """Sweep heatmaps of `metric` (from `run_summary`), or None when nothing is finished yet."""
    rounds = store.rounds(list(runs["run_id"]))
    summary = run_summary(runs, rounds, store.statistics("rounds").all())
    if metric not in summary or summary[metric].notna().sum() == 0:
        return None
    return figures.sweep_heatmaps(summary, x_key, y_key, metric)


def labels_figure(
    runs: pd.DataFrame, seed: int, labels_for: LabelSource
) -> tuple[go.Figure | None, str | None]:
    """The label distribution of the split a seed's runs trained on; (figure, note)."""
    chosen = seed_runs(runs, seed)
    if chosen.empty:
        return None, None
    labels = labels_for(str(chosen["config_json"].iloc[0]))
    if labels.histogram is None:
        return None, labels.note
    return figures.label_distribution(labels, range(len(labels.histogram))), None


def trajectories_figure(
    store: Stores,
    runs: pd.DataFrame,
    seed: int,
    clients: Sequence[int] | None = None,
    max_rows: int = 4,
) -> go.Figure | None:
    """Chosen clients' update norm, cosine to aggregate and loss over rounds (one seed).

    One row per condition, the first `max_rows` of them (as `heatmap_figure` does).
    """
    keep = [s.condition for s in paired_series(runs)][:max_rows]
    chosen = seed_runs(runs[runs["condition"].isin(keep)], seed)
    rows = store.clients(list(chosen["run_id"]))
    if clients is not None:
        rows = rows[rows["partition_id"].isin(list(clients))]
    if rows.empty or not any(m in rows for m in figures.TRAJECTORY_METRICS):
        return None
    # Labelled against all of `runs`: a row names every key its condition differs in.
    return figures.client_trajectories(rows, runs)


NO_PROBES = (
    "no probes in this store: run `fedadamw probe DIR` to re-run one round of every sampled "
    "client from the kept checkpoints under a grid of (mode, η, λ)"
)


def probe_stats(store: Stores) -> list[str]:
    """The probe statistics (`figures.PROBE_STATS`) the store holds values of ([]: no probes)."""
    return store.filled("probes", figures.PROBE_STATS)


def probed_runs(store: Stores, runs: pd.DataFrame) -> pd.DataFrame:
    """The probe rows of `runs`, each with its run's condition label as the source probed."""
    probes = store.probes(list(runs["run_id"]))
    labels = condition_labels(runs)
    source = {r: labels[c] for r, c in zip(runs["run_id"], runs["condition"], strict=True)}
    return probes.assign(**{figures.SOURCE: [source.get(r, str(r)) for r in probes["run_id"]]})


def probe_figure(
    store: Stores, runs: pd.DataFrame, stat: str, band: str = "ci"
) -> go.Figure | None:
    """A probe statistic against λ (`figures.probe_figure`), or None when `runs` have no probes.

    One row of panels per probed condition (the checkpoints of different arms are different
    global models, so their probes are never averaged together).
    """
    if stat not in probe_stats(store):
        return None
    probes = probed_runs(store, runs)
    if stat not in probes or probes[stat].notna().sum() == 0:
        return None
    return figures.probe_figure(probes, stat, band)


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else "—" if value is None else str(value)


def runs_table(runs: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per run: where it is stored, its arm, every swept key, seed, status, progress.

    "final" values come from the last *trained* round: a run at round 0 has none yet.
    """
    trained = rounds[rounds["round"] >= 1] if "round" in rounds else rounds
    last = trained.sort_values("round").groupby("run_id").tail(1).set_index("run_id")

    def final(column: str, scale: float = 1.0) -> list[float]:
        if column not in last:
            return [math.nan] * len(runs)
        return [scale * float(last[column].get(r, math.nan)) for r in runs["run_id"]]

    table: dict[str, object] = {}
    if "store" in runs and runs["store"].nunique() > 1:
        table["store"] = runs["store"].to_numpy()
    if runs["experiment"].nunique() > 1:
        table["experiment"] = runs["experiment"].to_numpy()
    table["arm"] = runs["mode"].to_numpy()
    for key in (k for k in varying_keys(runs) if k != "mode"):
        table[key] = [_fmt(c.get(key)) for c in runs["config"]]
    table["seed"] = runs["seed"].to_numpy()
    table["status"] = runs["status"].to_numpy()
    table["rounds"] = [
        f"{d}/{p}" if p else str(d)
        for d, p in zip(runs["rounds_done"], runs["planned_rounds"], strict=True)
    ]
    table["final test acc (%)"] = final("test_accuracy", 100.0)
    table["final mean pairwise cos"] = final("mean_pairwise_cosine")
    table["run id"] = (runs["stored_id"] if "stored_id" in runs else runs["run_id"]).to_numpy()
    return pd.DataFrame(table)


def rejections_table(store: Stores, runs: pd.DataFrame) -> pd.DataFrame:
    """Dropped and rejected client replies of `runs`: run, round, client, node and reason."""
    rows = store.rejections(list(runs["run_id"]))
    labels = condition_labels(runs)
    run_label = {
        r: f"{labels[c]} · seed {s}"
        for r, c, s in zip(runs["run_id"], runs["condition"], runs["seed"], strict=True)
    }
    return pd.DataFrame(
        {
            "run": [run_label.get(r, str(r)) for r in rows["run_id"]],
            "round": rows["round"].astype(int).to_numpy() if len(rows) else [],
            "client": rows["partition_id"].to_numpy() if "partition_id" in rows else [],
            "node": rows["node_id"].to_numpy() if "node_id" in rows else [None] * len(rows),
            "reason": rows["reason"].to_numpy() if "reason" in rows else [],
        }
    )


RECENT_ROUNDS = 10  # the ETA assumes the next rounds take as long as the last ones


def live_status(runs: pd.DataFrame, rounds: pd.DataFrame) -> str | None:
    """'2 running · decoupled round 12/30 · 1.3 s/round · ETA 2 min 10 s', or None if idle."""
    running = runs[runs["status"] == RUNNING]
    if running.empty:
        return None
    live_stores = set(running["store"]) if "store" in runs else None
    queued = runs[runs["status"] == PENDING]
    if live_stores is not None:
        queued = queued[queued["store"].isin(live_stores)]  # the grid of the live command
    left = sum(
        max(0, int(p or 0) - int(d))
        for p, d in zip(running["planned_rounds"], running["rounds_done"], strict=True)
    )
    left += sum(int(p or 0) for p in queued["planned_rounds"])
    mine = rounds[rounds["run_id"].isin(list(running["run_id"])) & (rounds["round"] >= 1)]
    recent = (
        mine.sort_values("round").groupby("run_id").tail(RECENT_ROUNDS)["seconds"].dropna()
        if "seconds" in mine
        else pd.Series(dtype=float)
    )
    parts = [f"**{len(running)} running**"]
    labels = condition_labels(runs)
    for _, run in running.head(3).iterrows():
        parts.append(
            f"{labels[run['condition']]} round {run['rounds_done']}/{run['planned_rounds']}"
        )
    if len(recent):
        per_round = float(recent.mean())
        parts.append(f"{duration(per_round)}/round")
        parts.append(f"ETA {duration(left * per_round)}")
    return " · ".join(parts)


# -- the standard figure set -----------------------------------------------------------------
# Statistics of the standard divergence figure: agreement between clients, agreement with
# the aggregate, and spread in the aggregate's own units.
MAIN_STATS = ("mean_pairwise_cosine", "mean_cosine_to_aggregate", "relative_drift")


@dataclass(frozen=True)
class FigureItem:
    """One figure of the standard set, with the file stem and caption it is published under."""

    name: str
    title: str
    caption: str
    figure: go.Figure
    group: str = ""  # the setting (or "Sweep") it belongs to; "" in a one-setting experiment


@dataclass(frozen=True)
class Section:
    """The standard figures of one experiment plus its tables and notes."""

    experiment: str
    runs: pd.DataFrame
    items: list[FigureItem]
    notes: list[str]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text).strip("-") or "x"


def standard_sections(
    store: Stores, labels_for: LabelSource | None = None, band: str = "ci"
) -> list[Section]:
    """The standard figures of every experiment in the stores (what report and figures show)."""
    labels = labels_for or stored_labels(store)
    runs_all = store.runs()
    sections = []
    for experiment in dict.fromkeys(runs_all["experiment"]):
        runs = runs_all[runs_all["experiment"] == experiment]
        sections.append(_experiment_section(store, str(experiment), runs, labels, band))
    _distinct_names(sections)
    return sections


def _distinct_names(sections: Sequence[Section]) -> None:
    """Give every figure its own file stem, in place.

    Slugs are not one-to-one: experiments `a b` and `a-b`, or settings `lr=0.1` and `lr-0.1`,
    give the same stem, as do stems differing only in case on a case-insensitive disk. Each
    clashing stem gets a tag hashed from what it stands for (stable from run to run); a numeric
    suffix settles what is left.
    """

    counts = Counter(item.name.casefold() for s in sections for item in s.items)
    for section in sections:
        for i, item in enumerate(section.items):
            if counts[item.name.casefold()] > 1:
                source = f"{section.experiment}\0{item.group}\0{item.name}"
                tag = hashlib.sha1(source.encode()).hexdigest()[:6]
                section.items[i] = replace(item, name=f"{item.name}-{tag}")
    taken: set[str] = set()
    for section in sections:
        for i, item in enumerate(section.items):
            name, n = item.name, 1
            while name.casefold() in taken:
                n += 1
                name = f"{item.name}-{n}"
            taken.add(name.casefold())
            if name != item.name:
                section.items[i] = replace(item, name=name)


def _experiment_section(
    store: Stores, experiment: str, runs: pd.DataFrame, labels: LabelSource, band: str
) -> Section:
    items: list[FigureItem] = []
    notes: list[str] = []
    slug = _slug(experiment)
    keys = [k for k in varying_keys(runs) if k != "mode"]
    if keys:
        y_key = keys[1] if len(keys) > 1 else None
        for metric in ("final_accuracy", ROUND_MEAN + "dispersion"):
            fig = sweep_figure(store, runs, keys[0], y_key, metric)
            if fig is not None:
                items.append(
                    FigureItem(
                        f"{slug}-sweep-{_slug(metric.replace(ROUND_MEAN, 'mean-'))}",
                        f"Sweep: {stat_label(metric)}",
                        f"Mean over seeds per cell ({keys[0]}"
                        + (f" × {y_key}" if y_key else "")
                        + "); one panel per mode on one colour scale.",
                        fig,
                        group="Sweep",
                    )
                )
    settings = setting_labels(runs)
    shown: list[np.ndarray] = []  # label histograms already drawn (settings often share a split)
    for setting, label in settings.items():
        sub = runs[runs["setting"] == setting]
        prefix = slug if len(settings) == 1 else f"{slug}-{_slug(label)}"
        group = "" if len(settings) == 1 else label
        new, new_notes = _setting_items(store, sub, prefix, group, labels, shown, band)
        items += new
        notes += new_notes
    probe_items = _probe_items(store, runs, slug, settings, band)
    if probe_items:
        items += probe_items
    else:
        notes.append(NO_PROBES.replace("this store", f"experiment {experiment}", 1) + ".")
    return Section(experiment, runs, items, list(dict.fromkeys(notes)))


# The probe statistics the report and the paper figures show: agreement between clients, how
# much of the update decay is, and whether the aggregate still lowers the clients' loss.
REPORT_PROBE_STATS = ("mean_pairwise_cosine", "decay_share", "aggregate_loss_change")


def _probe_items(
    store: Stores, runs: pd.DataFrame, slug: str, settings: dict[str, str], band: str
) -> list[FigureItem]:
    """The probe figures of an experiment, setting by setting; [] when nothing was probed."""
    stats = [s for s in REPORT_PROBE_STATS if s in probe_stats(store)]
    if not stats:
        return []
    items = []
    for setting, label in settings.items():
        probes = probed_runs(store, runs[runs["setting"] == setting])
        prefix = slug if len(settings) == 1 else f"{slug}-{_slug(label)}"
        group = "Probes" if len(settings) == 1 else f"Probes · {label}"
        for stat in stats:
            if stat not in probes or probes[stat].notna().sum() == 0:
                continue
            items.append(
                FigureItem(
                    f"{prefix}-probe-{_slug(stat)}",
                    f"Probe: {stat_label(stat)} against λ",
                    "One round re-run from each kept checkpoint, every sampled client on the "
                    "same batches, under each (mode, η, λ); one line per mode and checkpoint "
                    "round (the global model after it), one row of panels per probed arm; "
                    f"lines: mean over the probed runs, {figures.probe_band_note(probes, band)}; "
                    "λ = 0 at its own tick '0', left of the smallest λ.",
                    figures.probe_figure(probes, stat, band),
                    group=group,
                )
            )
    return items


def _setting_items(
    store: Stores,
    runs: pd.DataFrame,
    prefix: str,
    group: str,
    labels: LabelSource,
    shown: list[np.ndarray],
    band: str = "ci",
) -> tuple[list[FigureItem], list[str]]:
    """Coupled vs decoupled at one setting: the figures of the dashboard's default view."""
    items: list[FigureItem] = []
    notes: list[str] = []
    stats = store.statistics("rounds")
    bands = figures.band_note(runs, band)

    def add(name: str, title: str, caption: str, fig: go.Figure | None) -> None:
        if fig is not None:
            items.append(FigureItem(f"{prefix}-{name}", title, caption, fig, group))

    main = [s for s in MAIN_STATS if s in stats.whole]
    rows = store.rounds(list(runs["run_id"]))
    trained = rows[rows["round"] >= 1]
    if main and trained[main].notna().any().any():
        add(
            "divergence",
            "Update divergence over rounds",
            f"Whole-model update statistics per round; lines are means across seeds, {bands}.",
            figures.over_rounds(trained, runs, main, band=band),
        )
    for stat in ("mean_pairwise_cosine", "dispersion"):
        parts = stats.parts_of(stat)
        # The whole update's panel is left out where the figure above shows it already.
        panels = [p for p in parts if p not in main]
        if len(parts) > 1 and trained[panels].notna().any().any():
            whole = stat in panels
            add(
                f"parts-{_slug(stat)}",
                f"{stat_label(stat)}: "
                + ("whole update and its parts" if whole else "data part and decay part"),
                (
                    "The same statistic of the whole update, its data part and its decay part"
                    if whole
                    else "The data and decay parts of the update (the whole update: above)"
                )
                + f"; {bands}.",
                figures.over_rounds(trained, runs, panels, band=band),
            )
    add(
        "shrink",
        "Decay shrink ratio",
        "Per weight, |decay step| / (ηλ|w|): lines the median weight, bands p5 to p95 (means "
        "over seeds); 1 is uniform decay.",
        shrink_figure(store, runs),
    )
    add(
        "accuracy",
        "Test accuracy and loss",
        f"Global model on the test split after each round; means across seeds, {bands}.",
        accuracy_figure(store, runs, band),
    )
    seed = int(min(runs["seed"]))
    last = int(runs[runs["seed"] == seed]["rounds_done"].max())
    if last >= 1:
        fig, heat_notes = heatmap_figure(store, runs, seed, last, labels)
        notes += heat_notes
        add(
            "cosine-heatmap",
            f"Pairwise cosine of client updates (round {last}, seed {seed})",
            "Clients ordered by dominant label, shown as client (label); where several clients "
            "share a label, lines separate the groups.",
            fig,
        )
        add(
            "clients",
            f"Per-client update norm vs cosine to aggregate (round {last}, seed {seed})",
            "Colour: share of the client's examples that carry its dominant label.",
            scatter_figure(store, runs, seed, last, "dominant_share", labels),
        )
    add(
        "layers",
        "Which layers diverge most",
        "Mean pairwise cosine per parameter tensor, mean over rounds; means across seeds, "
        f"error bars: {bands.removeprefix('bands: ')}.",
        layers_figure(store, runs, "mean_pairwise_cosine", band=band),
    )
    fig, note = labels_figure(runs, seed, labels)
    if note:
        notes.append(note)
    hist = labels(str(seed_runs(runs, seed)["config_json"].iloc[0])).histogram
    if hist is not None and not any(np.array_equal(hist, h) for h in shown):
        shown.append(hist)
        add(
            "labels",
            f"Label distribution per client (seed {seed})",
            "Training examples per label; clients ordered by dominant label.",
            fig,
        )
    return items, notes
