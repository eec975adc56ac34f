"""Pure figure builders: DataFrames in, a styled `plotly.graph_objects.Figure` out.

The dashboard, the HTML report and the paper figures all draw with these functions, so the three
outputs cannot drift apart. None of them reads a store: `fedadamw.viz.views` queries the store
and picks what to draw; colours, fonts and labels come from `fedadamw.viz.style`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from fedadamw.results.stats import t_half_width
from fedadamw.results.summaries import condition_labels
from fedadamw.schema import PROBE_STATS as PROBE_STATS  # re-exported: the probe view's choices
from fedadamw.schema import SHRINK_COLUMNS
from fedadamw.viz.labels import ClientLabels
from fedadamw.viz.style import (
    DASHES,
    LABEL_COLORS,
    is_cosine,
    mode_color,
    mode_rank,
    rgba,
    round_axis,
    stat_label,
    stat_range,
    style,
    wrap,
)

# What a band around a mean over seeds shows. A t-interval from two seeds is no use (t = 12.7
# makes it ten times their spread), so below MIN_SEEDS_FOR_CI the "ci" choice shows the seeds'
# min–max instead, and every caption says which band is drawn (`band_note`).
BANDS = {"ci": "95% CI", "sd": "± 1 SD", "minmax": "min–max"}
MIN_SEEDS_FOR_CI = 3


def band_stats(
    df: pd.DataFrame, by: Sequence[str], value: str, band: str = "ci", column: str | None = None
) -> pd.DataFrame:
    """Mean of `value` per group with a band (`BANDS`) clipped to the statistic's range.

    Columns: the group keys, mean, n, lo, hi and `band` (the kind each row's band is: "ci"
    falls back to "minmax" below MIN_SEEDS_FOR_CI values); lo/hi are NaN for one value.
    `column` names the statistic whose range applies (default: `value`).
    """
    clean = df.dropna(subset=[value])
    agg = clean.groupby(list(by), sort=True)[value].agg(["mean", "std", "count", "min", "max"])
    agg = agg.reset_index().rename(columns={"count": "n"})
    mean, std = agg["mean"].to_numpy(float), agg["std"].to_numpy(float)
    n = agg["n"].to_numpy(float)
    low, high = agg["min"].to_numpy(float), agg["max"].to_numpy(float)
    kind = np.full(len(agg), band if band in BANDS else "ci", dtype=object)
    if band == "sd":
        lo, hi = mean - std, mean + std
    elif band == "minmax":
        lo, hi = low, high
    else:
        half = t_half_width(std, n)
        few = n < MIN_SEEDS_FOR_CI
        lo, hi = np.where(few, low, mean - half), np.where(few, high, mean + half)
        kind[few] = "minmax"
    lo_bound, hi_bound = stat_range(column or value)
    single = n < 2
    agg["lo"] = np.where(single, np.nan, np.clip(lo, lo_bound, hi_bound))
    agg["hi"] = np.where(single, np.nan, np.clip(hi, lo_bound, hi_bound))
    agg["band"] = kind
    return agg.drop(columns=["std", "min", "max"])


def band_note(runs: pd.DataFrame, band: str = "ci") -> str:
    """What the bands of a figure over `runs` show, for its caption."""
    seeds = runs.groupby("condition")["seed"].nunique() if len(runs) else pd.Series([0])
    fewest, most = int(seeds.min()), int(seeds.max())
    if most < 2:
        return "one seed per condition: lines only, no band"
    if band == "sd":
        text = "bands: mean ± 1 SD across seeds"
    elif band == "minmax":
        text = "bands: min–max across seeds"
    elif most < MIN_SEEDS_FOR_CI:
        text = f"bands: min–max of the {most} seeds (too few seeds for a 95% t-interval)"
    elif fewest < MIN_SEEDS_FOR_CI:
        text = "bands: 95% CI across seeds (Student t), min–max where a condition has < 3 seeds"
    else:
        text = "bands: 95% CI across seeds (Student t)"
    return text + ", clipped to the statistic's range"


@dataclass(frozen=True)
class Series:
    """One experimental condition as drawn: its legend label, colour and dash."""

    condition: str
    label: str
    mode: str
    color: str
    dash: str
    seeds: int


def series_of(runs: pd.DataFrame) -> list[Series]:
    """The conditions of `runs` in a stable order (by mode), each with its style."""
    labels = condition_labels(runs)
    firsts = runs.drop_duplicates("condition").copy()
    firsts["_m"] = [mode_rank(m) for m in firsts["mode"]]
    firsts = firsts.sort_values(["_m", "mode", "condition"], kind="stable")
    seeds = runs.groupby("condition")["seed"].nunique()
    out: list[Series] = []
    per_mode: dict[str, int] = {}
    for _, row in firsts.iterrows():
        k = per_mode.get(row["mode"], 0)
        per_mode[row["mode"]] = k + 1
        out.append(
            Series(
                row["condition"],
                labels[row["condition"]],
                row["mode"],
                mode_color(row["mode"]),
                DASHES[k % len(DASHES)],
                int(seeds[row["condition"]]),
            )
        )
    return out


def _legend_name(s: Series) -> str:
    return f"{s.label} ({s.seeds} seeds)" if s.seeds > 1 else s.label


def legend_height(series: Sequence[Series]) -> int:
    """Extra px a figure needs for its legend on top: its rows beyond the first two.

    A horizontal legend wraps; long entries (a sweep's settings) take a row each. The plot
    keeps its height instead of being squeezed under the legend.
    """
    if not series:
        return 0
    longest = max(len(_legend_name(s)) for s in series)
    per_row = 1 if longest > 30 else 2 if longest > 18 else 4
    rows = math.ceil(len(series) / per_row)
    return 19 * max(0, rows - 2)


def _band(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    s: Series,
    kind: str = "ci",
    stat: str = "",
    scale: float = 1.0,
    **kw: Any,
) -> go.Scatter:
    # meta: which statistic and band this is, so a test can check the band stays in range
    return go.Scatter(
        x=np.concatenate([x, x[::-1]]),
        y=np.concatenate([hi, lo[::-1]]),
        fill="toself",
        mode="lines",
        fillcolor=rgba(s.color, 0.18),
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
        legendgroup=s.condition,
        name=f"{s.label} {BANDS.get(kind, kind)}",
        meta={"band": kind, "stat": stat, "scale": scale},
        **kw,
    )


def _add_round_band(
    fig: go.Figure, agg: pd.DataFrame, s: Series, scale: float, col: int, stat: str, row: int = 1
) -> None:
    """The band of a per-round mean where at least two seeds give one (see `band_stats`)."""
    banded = agg[agg["n"] >= 2]
    if banded.empty:
        return
    x = banded["round"].to_numpy()
    lo, hi = scale * banded["lo"].to_numpy(), scale * banded["hi"].to_numpy()
    kinds = set(banded["band"])
    kind = kinds.pop() if len(kinds) == 1 else "ci"
    fig.add_trace(_band(x, lo, hi, s, kind, stat, scale), row=row, col=col)


def _band_hover(agg: pd.DataFrame, scale: float) -> np.ndarray:
    """customdata of a mean's points: band low, band high, seeds, band kind."""
    return np.stack(
        [
            scale * agg["lo"].to_numpy(float),
            scale * agg["hi"].to_numpy(float),
            agg["n"].to_numpy(),
            [BANDS.get(str(k), str(k)) for k in agg["band"]],
        ],
        axis=1,
    )


def over_rounds(
    rows: pd.DataFrame,
    runs: pd.DataFrame,
    stats: Sequence[str],
    percent: bool = False,
    band: str = "ci",
) -> go.Figure:
    """One panel per statistic: its value per round, mean and band across seeds per condition."""
    data = rows.merge(runs[["run_id", "condition"]], on="run_id")
    fig = make_subplots(
        rows=1,
        cols=len(stats),
        subplot_titles=[stat_label(s) for s in stats],
        horizontal_spacing=0.08 if len(stats) > 1 else 0.0,
    )
    for col, stat in enumerate(stats, start=1):
        if stat not in data:
            continue
        for s in series_of(runs):
            sub = data[data["condition"] == s.condition]
            agg = band_stats(sub, ["round"], stat, band)
            if agg.empty:
                continue
            scale = 100.0 if percent else 1.0
            _add_round_band(fig, agg, s, scale, col, stat)
            fig.add_trace(
                go.Scatter(
                    x=agg["round"],
                    y=scale * agg["mean"],
                    mode="lines+markers",
                    name=_legend_name(s),
                    legendgroup=s.condition,
                    showlegend=col == 1,
                    line={"color": s.color, "dash": s.dash, "width": 2.4},
                    marker={"size": 5, "color": s.color},
                    customdata=_band_hover(agg, scale),
                    hovertemplate=(
                        f"<b>{s.label}</b><br>round %{{x}}<br>mean %{{y:.4g}}"
                        "<br>%{customdata[3]} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                        "<br>seeds %{customdata[2]}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
    round_axis(fig, int(data["round"].max()) if len(data) else 1)
    if len(stats) == 1:
        fig.update_yaxes(title_text=stat_label(stats[0]) + (" (%)" if percent else ""))
        fig.layout.annotations = ()
    return style(fig, height=400 + legend_height(series_of(runs)))


def training_curves(rounds: pd.DataFrame, runs: pd.DataFrame, band: str = "ci") -> go.Figure:
    """Test accuracy (left) and test / train loss (right) per round, mean and band over seeds."""
    data = rounds.merge(runs[["run_id", "condition"]], on="run_id")
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.1,
        subplot_titles=["test accuracy (%)", "loss (solid: test, dashed: train)"],
    )
    for s in series_of(runs):
        sub = data[data["condition"] == s.condition]
        for col, metric, dash, scale in (
            (1, "test_accuracy", "solid", 100.0),
            (2, "test_loss", "solid", 1.0),
            (2, "train_loss", "dash", 1.0),
        ):
            if metric not in sub:
                continue
            agg = band_stats(sub, ["round"], metric, band)
            if agg.empty:
                continue
            _add_round_band(fig, agg, s, scale, col, metric)
            fig.add_trace(
                go.Scatter(
                    x=agg["round"],
                    y=scale * agg["mean"],
                    mode="lines",
                    name=_legend_name(s),
                    legendgroup=s.condition,
                    showlegend=metric == "test_accuracy",
                    line={
                        "color": s.color,
                        "dash": dash if metric == "train_loss" else s.dash,
                        "width": 2.4 if metric != "train_loss" else 1.6,
                    },
                    hovertemplate=(
                        f"<b>{s.label}</b><br>{metric.replace('_', ' ')}"
                        "<br>round %{x}: %{y:.4g}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
    round_axis(fig, int(data["round"].max()) if len(data) else 1)
    return style(fig, height=400 + legend_height(series_of(runs)))


def shrink_ratios(rounds: pd.DataFrame, runs: pd.DataFrame) -> go.Figure:
    """The decay step's per-weight shrink ratio |decay step| / (ηλ|w|) per round.

    Lines: the median weight's ratio, bands: p5 to p95 (each the mean over seeds). One global λ
    shrinks every weight alike under decoupled decay (ratio 1); coupled decay divides λw by each
    weight's own √v̂, so its ratios spread.
    """
    data = rounds[rounds["round"] >= 1].merge(runs[["run_id", "condition"]], on="run_id")
    fig = go.Figure()
    values: list[float] = []
    for s in series_of(runs):
        sub = data[data["condition"] == s.condition]
        agg = sub.groupby("round")[list(SHRINK_COLUMNS)].mean().dropna().reset_index()
        if agg.empty:
            continue
        x = agg["round"].to_numpy()
        lo, hi = agg["shrink_p5"].to_numpy(), agg["shrink_p95"].to_numpy()
        fig.add_trace(_band(x, lo, hi, s, "p5–p95", "shrink_p50"))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=agg["shrink_p50"],
                mode="lines+markers",
                name=_legend_name(s),
                legendgroup=s.condition,
                line={"color": s.color, "dash": s.dash, "width": 2.4},
                marker={"size": 5, "color": s.color},
                customdata=np.stack([agg["shrink_p5"], agg["shrink_p95"]], axis=1),
                hovertemplate=(
                    f"<b>{s.label}</b><br>round %{{x}}<br>median %{{y:.3g}}"
                    "<br>p5–p95 [%{customdata[0]:.3g}, %{customdata[1]:.3g}]"
                    "<extra></extra>"
                ),
            )
        )
        values += [float(v) for v in agg[list(SHRINK_COLUMNS)].to_numpy().ravel()]
    fig.add_hline(y=1.0, line={"color": "#888", "dash": "dot", "width": 1})
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 20:
        fig.update_yaxes(type="log")  # coupled ratios span decades
    fig.update_yaxes(title_text="|decay step| / (ηλ|w|)")
    round_axis(fig, int(data["round"].max()) if len(data) else 1)
    return style(fig, height=380 + legend_height(series_of(runs)))


@dataclass(frozen=True)
class HeatPanel:
    """One cosine matrix to draw: its run's mode, a title and clients in display order."""

    title: str
    mode: str
    partition_ids: list[int]  # display order
    matrix: np.ndarray  # rows/cols in that order
    dominant: list[int | None]  # dominant label per displayed client


@dataclass(frozen=True)
class Grid:
    """Panels wrapped into rows of at most `cols`, with pixel sizes that keep titles apart."""

    n: int
    cols: int
    rows: int
    panel_h: int  # px of one panel's plot area
    gap_h: int  # px between rows: the row above's tick labels and axis title, this row's title
    top: int  # px above the first row: its (two-line) panel titles
    bottom: int  # px below the last row: tick labels, axis title, maybe a colour bar

    @property
    def height(self) -> int:
        """The figure's height in px."""
        return self.top + self.rows * self.panel_h + (self.rows - 1) * self.gap_h + self.bottom

    @property
    def vertical_spacing(self) -> float:
        """`make_subplots`' vertical spacing: the gap as a share of the plot area's height."""
        area = self.rows * self.panel_h + (self.rows - 1) * self.gap_h
        return self.gap_h / area if self.rows > 1 else 0.0

    def cell(self, k: int) -> tuple[int, int]:
        """(row, col) of panel `k` (0-based), filled row by row."""
        return k // self.cols + 1, k % self.cols + 1

    def axis(self, k: int) -> str:
        """The suffix of panel `k`'s axes ('' for the first, '2', …)."""
        return "" if k == 0 else str(k + 1)


def grid(n: int, max_cols: int, panel_h: int, gap_h: int, top: int = 70, bottom: int = 60) -> Grid:
    """A `Grid` for `n` panels: one row while they fit, else rows of `max_cols`."""
    n = max(1, n)
    cols = min(n, max_cols)
    return Grid(n, cols, math.ceil(n / cols), panel_h, gap_h, top, bottom)


def _subplots(
    g: Grid, titles: Sequence[str], spacing: float, title_width: int = 34, **kw: Any
) -> go.Figure:
    # Titles wrap onto more lines instead of running into the next panel's (0: as given).
    width = title_width if g.cols > 1 else 90
    return make_subplots(
        rows=g.rows,
        cols=g.cols,
        subplot_titles=[wrap(t, width) if title_width else t for t in titles] or [""],
        horizontal_spacing=spacing,
        vertical_spacing=g.vertical_spacing,
        **kw,
    )


def cosine_heatmaps(panels: Sequence[HeatPanel]) -> go.Figure:
    """Pairwise cosine matrices, two per row, on one −1…1 scale, clients by dominant label."""
    g = grid(len(panels), 2, panel_h=340, gap_h=170, top=80, bottom=120)
    fig = _subplots(g, [p.title for p in panels], spacing=0.14)
    for k, p in enumerate(panels):
        row, col = g.cell(k)
        ticks = [
            str(pid) if lab is None else f"{pid} ({lab})"
            for pid, lab in zip(p.partition_ids, p.dominant, strict=True)
        ]
        fig.add_trace(
            go.Heatmap(
                z=p.matrix,
                x=ticks,
                y=ticks,
                coloraxis="coloraxis",
                xgap=1,
                ygap=1,
                hovertemplate="clients %{y} × %{x}<br>cosine %{z:.3f}<extra></extra>",
            ),
            row=row,
            col=col,
        )
        # Lines between groups of clients that share a dominant label, where groups exist
        # (with about one client per label they would only draw a grid).
        groups = len({lab for lab in p.dominant if lab is not None})
        ref = g.axis(k)
        for j in range(1, len(p.dominant) if 2 * groups <= len(p.dominant) else 0):
            if p.dominant[j] != p.dominant[j - 1] and p.dominant[j] is not None:
                for axis in ("x", "y"):
                    edge = j - 0.5
                    fig.add_shape(
                        type="line",
                        line={"color": "#222", "width": 1.5},
                        xref=f"x{ref}",
                        yref=f"y{ref}",
                        x0=edge if axis == "x" else -0.5,
                        x1=edge if axis == "x" else len(ticks) - 0.5,
                        y0=edge if axis == "y" else -0.5,
                        y1=edge if axis == "y" else len(ticks) - 0.5,
                    )
        fig.update_yaxes(
            autorange="reversed",
            scaleanchor=f"x{ref}",
            constrain="domain",
            row=row,
            col=col,
            tickfont={"size": 10},
        )
        fig.update_xaxes(
            constrain="domain",
            tickangle=-90,
            row=row,
            col=col,
            tickfont={"size": 10},
            title_text="client (dominant label)",
            title_standoff=6,
        )
    fig.update_layout(
        coloraxis={
            "colorscale": "RdBu",
            "cmin": -1,
            "cmax": 1,
            "cmid": 0,
            "colorbar": {"title": {"text": "cosine", "side": "top"}, "thickness": 14, "len": 0.8},
        }
    )
    style(fig, height=g.height, legend=False)
    fig.update_layout(margin={"t": g.top, "b": g.bottom, "r": 90})
    fig.update_xaxes(showgrid=False, ticks="")
    fig.update_yaxes(showgrid=False, ticks="")
    for ann, p in zip(fig.layout.annotations, panels, strict=False):
        ann.font.color = mode_color(p.mode)
    return fig


def client_scatter(
    clients: pd.DataFrame, runs: pd.DataFrame, color_by: str, color_label: str | None = None
) -> go.Figure:
    """Per client: update norm against cosine to the aggregate, one panel per condition."""
    data = clients.merge(runs[["run_id", "condition"]], on="run_id")
    series = [s for s in series_of(runs) if (data["condition"] == s.condition).any()]
    has_color = color_by in data and data[color_by].notna().any()
    g = grid(len(series), 4, panel_h=300, gap_h=120, top=80, bottom=170 if has_color else 70)
    fig = _subplots(
        g,
        [s.label for s in series],
        spacing=0.06,
        shared_yaxes="all",
        shared_xaxes="all",
        title_width=24,
    )
    for k, s in enumerate(series):
        row, col = g.cell(k)
        sub = data[data["condition"] == s.condition]
        marker: dict[str, Any] = {"size": 11, "line": {"color": s.color, "width": 2}}
        if has_color:
            marker |= {"color": sub[color_by], "coloraxis": "coloraxis"}
        else:
            marker |= {"color": rgba(s.color, 0.5)}
        fig.add_trace(
            go.Scatter(
                x=sub["cosine_to_aggregate"],
                y=sub["update_norm"],
                mode="markers",
                marker=marker,
                name=s.label,
                showlegend=False,
                customdata=np.stack(
                    [sub["partition_id"], sub[color_by] if has_color else sub["partition_id"]],
                    axis=1,
                ),
                hovertemplate=(
                    "client %{customdata[0]}<br>cosine to aggregate %{x:.3f}"
                    "<br>update norm %{y:.4g}"
                    + (f"<br>{color_label or color_by} %{{customdata[1]:.3g}}" if has_color else "")
                    + "<extra></extra>"
                ),
            ),
            row=row,
            col=col,
        )
        if row == g.rows or k + g.cols >= len(series):  # the lowest panel of its column
            fig.update_xaxes(title_text="cosine to aggregate", row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text="update norm ‖Δᵢ‖", row=row, col=col)
    style(fig, height=g.height, legend=False)
    fig.update_layout(margin={"t": g.top, "b": g.bottom})
    if has_color:
        # A horizontal colour bar below the panels leaves them the full width; its title
        # sits above it, whole.
        area = g.height - g.top - g.bottom
        fig.update_layout(
            coloraxis={
                "colorscale": "Viridis",
                "colorbar": {
                    "title": {"text": color_label or stat_label(color_by), "side": "top"},
                    "orientation": "h",
                    "thickness": 12,
                    "len": 0.6,
                    "x": 0.5,
                    "xanchor": "center",
                    "y": -75 / area,
                    "yanchor": "top",
                },
            }
        )
    for ann, s in zip(fig.layout.annotations, series, strict=False):
        ann.font.color = s.color
    return fig


def layer_bars(
    layers: pd.DataFrame,
    runs: pd.DataFrame,
    stat: str,
    layer_order: Sequence[str],
    band: str = "ci",
) -> go.Figure:
    """Per layer: the statistic's mean over rounds, mean and band across seeds per condition."""
    data = layers[layers["round"] >= 1].merge(runs[["run_id", "condition"]], on="run_id")
    per_run = data.groupby(["condition", "run_id", "layer"], as_index=False)[stat].mean()
    order = [name for name in layer_order if name in set(per_run["layer"])]
    fig = go.Figure()
    for s in series_of(runs):
        agg = band_stats(per_run[per_run["condition"] == s.condition], ["layer"], stat, band)
        if agg.empty:
            continue
        agg = agg.set_index("layer").reindex(order).dropna(subset=["mean"]).reset_index()
        # Asymmetric once clipped to the statistic's range.
        err = (agg["hi"] - agg["mean"]).where(agg["n"] >= 2)
        err_minus = (agg["mean"] - agg["lo"]).where(agg["n"] >= 2)
        kinds = set(agg.loc[agg["n"] >= 2, "band"])
        fig.add_trace(
            go.Bar(
                y=agg["layer"],
                x=agg["mean"],
                orientation="h",
                name=_legend_name(s),
                marker={"color": s.color, "pattern": {"shape": "" if s.dash == "solid" else "/"}},
                error_x={
                    "type": "data",
                    "symmetric": False,
                    "array": err,
                    "arrayminus": err_minus,
                    "visible": bool(err.notna().any()),
                    "color": "#333",
                    "thickness": 1.2,
                },
                meta={"band": kinds.pop() if len(kinds) == 1 else "ci", "stat": stat, "scale": 1},
                customdata=_band_hover(agg, 1.0),
                hovertemplate=(
                    f"<b>{s.label}</b><br>%{{y}}: %{{x:.4g}}"
                    "<br>%{customdata[3]} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                    "<extra></extra>"
                ),
            )
        )
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_yaxes(
        categoryorder="array", categoryarray=order, autorange="reversed", title_text="layer"
    )
    fig.update_xaxes(title_text=f"{stat_label(stat)} (mean over rounds)")
    return style(fig, height=max(320, 120 + 34 * len(order)) + legend_height(series_of(runs)))


def _sort_key(value: Any) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, math.nan, str(value))


def _cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_heatmaps(summary: pd.DataFrame, x_key: str, y_key: str | None, metric: str) -> go.Figure:
    """One heatmap per mode over two config keys of the metric's mean (over seeds), one scale."""
    data = summary.dropna(subset=[metric]).copy()
    data["_x"] = [c.get(x_key) for c in data["config"]]
    data["_y"] = [c.get(y_key) if y_key else "" for c in data["config"]]
    modes = sorted(data["mode"].unique(), key=mode_rank)
    xs = sorted(data["_x"].unique(), key=_sort_key)
    ys = sorted(data["_y"].unique(), key=_sort_key)
    percent = metric == "final_accuracy"
    scale = 100.0 if percent else 1.0
    fig = make_subplots(
        rows=1,
        cols=max(1, len(modes)),
        subplot_titles=list(modes) or [""],
        shared_yaxes=True,
        horizontal_spacing=0.06,
    )
    cells: list[float] = []
    for col, mode in enumerate(modes, start=1):
        sub = data[data["mode"] == mode]
        table = sub.groupby(["_y", "_x"])[metric].agg(["mean", "count"])
        z = np.full((len(ys), len(xs)), np.nan)
        counts = np.zeros((len(ys), len(xs)), dtype=int)
        for (yv, xv), row in table.iterrows():
            z[ys.index(yv), xs.index(xv)] = scale * row["mean"]
            counts[ys.index(yv), xs.index(xv)] = int(row["count"])
        cells += [float(v) for v in z.ravel() if not math.isnan(v)]
        text = [
            [("" if math.isnan(v) else f"{v:.1f}" if percent else f"{v:.3f}") for v in zrow]
            for zrow in z
        ]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[_cell(v) for v in xs],
                y=[_cell(v) for v in ys] if y_key else [""],
                coloraxis="coloraxis",
                text=text,
                texttemplate="%{text}",
                textfont={"size": 13},
                customdata=counts,
                xgap=2,
                ygap=2,
                hovertemplate=(
                    f"{x_key} %{{x}}"
                    + (f"<br>{y_key} %{{y}}" if y_key else "")
                    + "<br>%{z:.4g} (runs: %{customdata})<extra></extra>"
                ),
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(type="category", title_text=x_key, row=1, col=col)
    fig.update_yaxes(type="category", title_text=y_key or "", row=1, col=1)
    fig.update_layout(coloraxis=sweep_scale(metric, cells, percent))
    # The colour bar lies below the panels, its title above it: long titles stay whole.
    height = max(340, 290 + 60 * len(ys))
    style(fig, height=height, legend=False)
    fig.update_layout(margin={"b": 200})
    area = height - int(fig.layout.margin.t) - 200
    fig.update_layout(coloraxis_colorbar_y=-80 / area)  # below the x axis' title
    fig.update_xaxes(showgrid=False)
    fig.update_yaxes(showgrid=False)
    for ann, mode in zip(fig.layout.annotations, modes, strict=False):
        ann.font.color = mode_color(mode)
    return fig


def sweep_scale(metric: str, values: Sequence[float], percent: bool) -> dict[str, Any]:
    """The sweep's colour axis: symmetric around 0 for cosines, else the grid's range, labelled.

    A scale stretched over whatever range the cells span makes a 0.03 difference look like
    the whole range: cosines get a diverging scale symmetric around 0 (0 = unrelated
    directions), everything else names the range its colours span in the colour bar's title.
    """
    finite = [v for v in values if math.isfinite(v)]
    label = stat_label(metric) + (" (%)" if percent else "")
    bar: dict[str, Any] = {
        "orientation": "h",
        "thickness": 12,
        "len": 0.6,
        "x": 0.5,
        "xanchor": "center",
        "yanchor": "top",
        "tickformat": ".3g",
    }
    if is_cosine(metric) and finite:
        m = max(abs(v) for v in finite) or 1.0
        bar["title"] = {"text": f"{label}<br>colours symmetric around 0", "side": "top"}
        return {"colorscale": "RdBu", "cmin": -m, "cmax": m, "cmid": 0, "colorbar": bar}
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    spec = ".1f" if percent else ".3g"
    bar["title"] = {
        "text": f"{label}<br>colours span {lo:{spec}} – {hi:{spec}} (this grid's range)",
        "side": "top",
    }
    return {
        "colorscale": "Viridis" if percent else "Cividis",
        "cmin": lo,
        "cmax": hi if hi > lo else lo + 1e-12,
        "colorbar": bar,
    }


TRAJECTORY_METRICS = ("update_norm", "cosine_to_aggregate", "train_loss")


def client_trajectories(
    clients: pd.DataFrame, runs: pd.DataFrame, metrics: Sequence[str] = TRAJECTORY_METRICS
) -> go.Figure:
    """Each client's metrics over rounds: one row per condition, one colour per client."""
    data = clients.merge(runs[["run_id", "condition"]], on="run_id")
    series = [s for s in series_of(runs) if (data["condition"] == s.condition).any()]
    shown = [m for m in metrics if m in data and data[m].notna().any()]
    lines = max((wrap(s.label, 30).count("<br>") + 2 for s in series), default=2)
    g = Grid(
        len(series) * len(shown), len(shown), len(series), 230, 60 + 17 * lines, 30 + 17 * lines, 60
    )
    titles = [f"{wrap(s.label, 30)}<br>{stat_label(m)}" for s in series for m in shown]
    fig = _subplots(g, titles, spacing=0.07, title_width=0, shared_xaxes="all")
    ids = sorted({int(p) for p in data["partition_id"]})
    palette = sample_colorscale(
        "Turbo", [0.05 + 0.9 * k / max(1, len(ids) - 1) for k in range(len(ids))]
    )
    color = dict(zip(ids, palette, strict=True))
    for row, s in enumerate(series, start=1):
        sub = data[data["condition"] == s.condition]
        for col, metric in enumerate(shown, start=1):
            for pid, rows in sub.groupby("partition_id", sort=True):
                rows = rows.sort_values("round")
                fig.add_trace(
                    go.Scatter(
                        x=rows["round"],
                        y=rows[metric],
                        mode="lines+markers",
                        name=f"client {int(pid)}",
                        legendgroup=f"client {int(pid)}",
                        showlegend=row == 1 and col == 1,
                        line={"color": color[int(pid)], "width": 1.6},
                        marker={"size": 4, "color": color[int(pid)]},
                        hovertemplate=(
                            f"<b>client {int(pid)}</b> · {s.label}<br>round %{{x}}"
                            f"<br>{stat_label(metric)} %{{y:.4g}}<extra></extra>"
                        ),
                    ),
                    row=row,
                    col=col,
                )
            if row == len(series):
                fig.update_xaxes(title_text="round", row=row, col=col)
    last = int(data["round"].max()) if len(data) else 1
    fig.update_xaxes(tick0=0, dtick=max(1, math.ceil(last / 10)))
    style(fig, height=g.height)
    fig.update_layout(
        margin={"t": g.top, "b": g.bottom},
        legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top"},
    )
    for k, ann in enumerate(fig.layout.annotations):
        ann.font.color = series[k // len(shown)].color if shown else "#222"
    return fig


def label_distribution(labels: ClientLabels, partition_ids: Sequence[int]) -> go.Figure:
    """Each client's label counts as stacked bars, clients ordered by dominant label."""
    fig = go.Figure()
    hist = labels.histogram
    if hist is None:
        return style(fig, height=300, legend=False)
    ids = [pid for pid in labels.order(partition_ids) if 0 <= pid < len(hist)]
    ticks = [f"{pid} ({labels.dominant(pid)})" for pid in ids]
    classes = hist.shape[1]
    palette = (
        list(LABEL_COLORS)
        if classes <= len(LABEL_COLORS)
        else sample_colorscale("Turbo", [k / max(1, classes - 1) for k in range(classes)])
    )
    for label in range(classes):
        fig.add_trace(
            go.Bar(
                y=ticks,
                x=[int(hist[pid, label]) for pid in ids],
                orientation="h",
                name=str(label),
                marker={"color": palette[label], "line": {"width": 0}},
                hovertemplate=f"client %{{y}}<br>label {label}: %{{x}} examples<extra></extra>",
            )
        )
    fig.update_layout(barmode="stack", bargap=0.15, legend_title_text="label")
    style(fig, height=max(320, 110 + 22 * len(ids)))
    # A vertical legend at the side: ten labels do not fit in one row of a half-width figure.
    fig.update_layout(
        legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top"}, margin={"t": 24}
    )
    fig.update_yaxes(autorange="reversed", title_text="client (dominant label)", type="category")
    fig.update_xaxes(title_text="training examples")
    return fig


# -- the probe: one round re-run from a checkpoint under each (mode, η, λ) ---------------------
# What the probe view can show: `fedadamw probe`'s statistics (`PROBE_STATS`, the default first).
PROBE_KEYS = ("learning_rate", "mode", "round", "weight_decay")  # one mean per group
SOURCE = "source"  # optional column: what was probed (the runs' condition), one row of panels each


def probe_means(probes: pd.DataFrame, stat: str, band: str = "ci") -> pd.DataFrame:
    """Mean of `stat` over the probed runs per (source, η, mode, checkpoint round, λ), with a band.

    The band is `band_stats`' (95% Student t over the runs from 3 runs on, their min–max below);
    a source is what was probed (`SOURCE`, when the frame has that column).
    """
    keys = [SOURCE, *PROBE_KEYS] if SOURCE in probes else list(PROBE_KEYS)
    engine = probe_engine(probes)
    if engine is not None:  # the engines agree to tolerance: one of them, never both as runs
        probes = probes[probes["engine"] == engine]
    if stat not in probes or probes.empty:
        return pd.DataFrame(columns=[*keys, "mean", "n", "lo", "hi", "band"])
    return band_stats(probes, keys, stat, band)


def probe_engine(probes: pd.DataFrame) -> str | None:
    """The engine whose probe rows are drawn when several probed the same runs (else None).

    The one with the most rows (ties: by name): the same setting probed by both engines is
    one measurement made twice, not two runs.
    """
    if "engine" not in probes or probes["engine"].nunique() < 2:
        return None
    counts = probes["engine"].astype(str).value_counts()
    return str(min(counts.index, key=lambda e: (-int(counts[e]), e)))


def probe_band_note(probes: pd.DataFrame, band: str = "ci") -> str:
    """What the bands and error bars of `probe_figure` show, for its caption."""
    engine = probe_engine(probes)
    if engine is not None:
        probes = probes[probes["engine"] == engine]
    keys = [k for k in (SOURCE, *PROBE_KEYS) if k in probes]
    group = probes[keys].astype(str).agg("|".join, axis=1) if len(probes) else []
    note = band_note(pd.DataFrame({"condition": group, "seed": probes["run_id"]}), band)
    note = note.replace("seeds", "runs").replace("one seed per condition", "one run per point")
    note = note.replace("bands:", "bands (error bars at λ = 0):")
    return note + (f"; engine {engine} drawn (probed by several)" if engine else "")


def zero_position(lambdas: Sequence[float]) -> float:
    """Where λ = 0 sits on the log λ axis: a decade left of the smallest positive λ."""
    positive = [v for v in lambdas if v > 0]
    return min(positive) / 10.0 if positive else 1.0


def _lambda_ticks(lambdas: Sequence[float]) -> tuple[list[float], list[str]]:
    """Tick positions and labels: "0" at `zero_position`, then the probed λ (or decades)."""
    positive = sorted({float(v) for v in lambdas if v > 0})
    vals: list[float] = [zero_position(lambdas)] if any(v == 0 for v in lambdas) else []
    text = ["0"] * len(vals)
    if len(positive) > 8:  # a fine grid: decades only
        lo, hi = math.floor(math.log10(positive[0])), math.ceil(math.log10(positive[-1]))
        positive = [10.0**k for k in range(lo, hi + 1)]
    vals += positive
    text += [f"{v:g}" for v in positive]
    return vals, text


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def probe_figure(probes: pd.DataFrame, stat: str, band: str = "ci") -> go.Figure:
    """`stat` against λ: one line per (mode, checkpoint round), mean and band over the runs.

    λ is on a log axis; λ = 0 is drawn at its own tick "0" a decade left of the smallest λ, as
    a marker with error bars that no line joins to the rest. One panel per η (columns) and per
    source (rows, when the frame has a `SOURCE` column with several values). Colour: the mode;
    dash: the checkpoint round.
    """
    agg = probe_means(probes, stat, band)
    sources = list(dict.fromkeys(agg[SOURCE])) if SOURCE in agg else [""]
    rates = sorted({float(v) for v in agg["learning_rate"]}) or [math.nan]
    rounds = sorted({int(v) for v in agg["round"]})
    modes = sorted({str(m) for m in agg["mode"]}, key=lambda m: (mode_rank(m), m))
    zero = zero_position([float(v) for v in agg["weight_decay"]])
    n = len(sources) * len(rates)
    g = Grid(n, len(rates), len(sources), 340, 110, 56 if n > 1 else 30, 60)
    titles = [
        " · ".join(t for t in (src, f"η = {rate:g}" if len(rates) > 1 else "") if t)
        for src in sources
        for rate in rates
    ]
    fig = _subplots(g, titles, spacing=0.08)
    shown: set[str] = set()
    for r, src in enumerate(sources, start=1):
        for c, rate in enumerate(rates, start=1):
            panel = agg[agg["learning_rate"] == rate]
            if SOURCE in agg:
                panel = panel[panel[SOURCE] == src]
            for j, (mode, (k, rnd)) in enumerate(itertools.product(modes, enumerate(rounds))):
                line = panel[(panel["mode"] == mode) & (panel["round"] == rnd)]
                line = line.sort_values("weight_decay")
                if line.empty:
                    continue
                group = f"{mode} · round {rnd}"
                s = Series(group, group, mode, mode_color(mode), DASHES[k % len(DASHES)], 0)
                # The λ = 0 markers of the lines spread over ±0.2 decade, so each bar shows.
                spread = 10.0 ** (0.4 * (j / max(1, len(modes) * len(rounds) - 1) - 0.5))
                _probe_line(fig, line, s, zero * spread, stat, r, c, group not in shown)
                shown.add(group)
            vals, text = _lambda_ticks([float(v) for v in panel["weight_decay"]])
            fig.update_xaxes(type="log", tickvals=vals, ticktext=text, row=r, col=c)
            if r == len(sources):
                fig.update_xaxes(title_text="weight decay λ", row=r, col=c)
    if len(titles) == 1:
        fig.layout.annotations = ()
    fig.update_yaxes(title_text=stat_label(stat), col=1)
    style(fig, height=max(g.height, 120 + 20 * len(shown)))
    # A vertical legend at the side: one entry per mode and round, in that order.
    fig.update_layout(
        margin={"t": g.top, "b": g.bottom},
        legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top"},
    )
    return fig


def _probe_line(
    fig: go.Figure,
    line: pd.DataFrame,
    s: Series,
    zero: float,
    stat: str,
    row: int,
    col: int,
    legend: bool,
) -> None:
    """One (mode, round) of a probe panel: λ > 0 as a line with its band, λ = 0 a lone marker."""
    hover = (
        f"<b>{s.label}</b><br>λ %{{customdata[4]}}<br>mean %{{y:.4g}}"
        "<br>%{customdata[3]} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
        "<br>runs %{customdata[2]}<extra></extra>"
    )
    decay = line[line["weight_decay"] > 0]
    if not decay.empty:
        x = decay["weight_decay"].to_numpy(float)
        banded = decay[decay["n"] >= 2]
        if not banded.empty:
            kinds = set(banded["band"])
            fig.add_trace(
                _band(
                    banded["weight_decay"].to_numpy(float),
                    banded["lo"].to_numpy(float),
                    banded["hi"].to_numpy(float),
                    s,
                    kinds.pop() if len(kinds) == 1 else "ci",
                    stat,
                ),
                row=row,
                col=col,
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=decay["mean"].to_numpy(float),
                mode="lines+markers",
                name=s.label,
                legendgroup=s.condition,
                showlegend=legend,
                line={"color": s.color, "dash": s.dash, "width": 2.2},
                marker={"size": 6, "color": s.color},
                customdata=_probe_hover(decay),
                hovertemplate=hover,
                meta={"probe": "lambda", "stat": stat},
            ),
            row=row,
            col=col,
        )
        legend = False
    at_zero = line[line["weight_decay"] == 0]
    if not at_zero.empty:
        mean = at_zero["mean"].to_numpy(float)
        several = at_zero["n"].to_numpy() >= 2
        kinds = set(at_zero.loc[several, "band"])
        fig.add_trace(
            go.Scatter(
                x=np.full(len(at_zero), zero),
                y=mean,
                mode="markers",
                name=s.label,
                legendgroup=s.condition,
                showlegend=legend,
                marker={"size": 8, "color": s.color, "symbol": "diamond"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": np.where(several, at_zero["hi"].to_numpy(float) - mean, np.nan),
                    "arrayminus": np.where(several, mean - at_zero["lo"].to_numpy(float), np.nan),
                    "visible": bool(several.any()),
                    "color": s.color,
                    "thickness": 1.4,
                    "width": 5,
                },
                customdata=_probe_hover(at_zero),
                hovertemplate=hover,
                meta={
                    "probe": "zero",
                    "stat": stat,
                    "band": kinds.pop() if len(kinds) == 1 else "ci",
                },
            ),
            row=row,
            col=col,
        )


def _probe_hover(agg: pd.DataFrame) -> np.ndarray:
    """customdata of probe points: band low, band high, runs, band kind, λ as text."""
    lam = [_fmt_value(float(v)) for v in agg["weight_decay"]]
    return np.concatenate([_band_hover(agg, 1.0), np.asarray(lam, dtype=object)[:, None]], axis=1)
