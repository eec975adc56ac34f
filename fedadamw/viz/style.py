"""The house style every figure shares: mode and label colours, dashes, fonts, axis labels.

A mode has one colour everywhere (Okabe–Ito, safe for colour-blind readers and in greyscale
print): coupled is vermillion, decoupled blue. Figures carry no title; the page or the paper's
caption says what they show, panels carry short subplot titles.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from fedadamw.results.reader import base_stat
from fedadamw.results.summaries import FINAL, ROUND_MEAN

MODE_COLORS = {
    "coupled": "#D55E00",
    "decoupled": "#0072B2",
    "none": "#6E6E6E",
    "sgd-coupled": "#E69F00",
    "sgd-decoupled": "#56B4E9",
}
MODE_ORDER = tuple(MODE_COLORS)
_SPARE_COLORS = ("#009E73", "#CC79A7", "#000000")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
# Ten clearly distinct label colours (Tableau 10); labels and modes never share a figure.
LABEL_COLORS = (
    "#4E79A7",
    "#F28E2B",
    "#E15759",
    "#76B7B2",
    "#59A14F",
    "#EDC948",
    "#B07AA1",
    "#FF9DA7",
    "#9C755F",
    "#BAB0AC",
)
FONT = "Helvetica, Arial, sans-serif"

STAT_LABELS = {
    "mean_pairwise_cosine": "mean pairwise cosine",
    "min_pairwise_cosine": "min pairwise cosine",
    "resultant_length": "resultant length R",
    "dispersion": "dispersion 1 − R",
    "mean_cosine_to_aggregate": "mean cosine to aggregate",
    "relative_drift": "relative drift",
    "gradient_diversity": "gradient diversity",
    "mean_update_norm": "mean update norm ‖Δ‖",
    "test_accuracy": "test accuracy",
    "final_accuracy": "final test accuracy",
    "update_norm": "update norm ‖Δᵢ‖",
    "cosine_to_aggregate": "cosine to aggregate",
    "num_examples": "examples",
    "local_steps": "local steps",
    "train_loss": "train loss",
    "dominant_share": "dominant-label share",
    "cosine_to_neg_weights": "cosine to −w",
    "shrink_p5": "shrink ratio p5",
    "shrink_p50": "shrink ratio p50",
    "shrink_p95": "shrink ratio p95",
    "work_fraction": "local work (fraction of epochs)",
    "batch_size": "batch size",
    "decay_norm": "decay-part norm",
    # `fedadamw probe`'s statistics (one round re-run from a checkpoint under each setting)
    "shrink_cosine": "cosine of Δᵢ to −w",
    "shrink_component": "component of Δᵢ along −w/‖w‖",
    "aggregate_loss_change": "loss change of the FedAvg aggregate",
    "client_loss_change": "mean loss change of the clients' own updates",
    "total_shrink": "total shrink ηλτ",
}
# Names that only look like a part (`decay_…`): the whole name is the statistic.
_WHOLE_NAMES = {"decay_share": "decay share ‖Δ_decay‖/‖Δ‖"}


# The range each quantity lives in (docs/design.md): bands are clipped to it, so no band shows
# a cosine past ±1 or a negative norm. None: unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    **dict.fromkeys(
        (
            "mean_pairwise_cosine",
            "min_pairwise_cosine",
            "mean_cosine_to_aggregate",
            "cosine_to_aggregate",
            "cosine_to_neg_weights",
            "shrink_cosine",
        ),
        (-1.0, 1.0),
    ),
    **dict.fromkeys(
        (
            "resultant_length",
            "dispersion",
            "test_accuracy",
            "final_accuracy",
            "dominant_share",
            "work_fraction",
        ),
        (0.0, 1.0),
    ),
    **dict.fromkeys(
        (
            "relative_drift",
            "gradient_diversity",
            "mean_update_norm",
            "update_norm",
            "decay_norm",
            "test_loss",
            "train_loss",
            "shrink_p5",
            "shrink_p50",
            "shrink_p95",
            "num_examples",
            "local_steps",
            "batch_size",
            "seconds",
            "decay_share",
            "total_shrink",
        ),
        (0.0, None),
    ),
}


def stat_range(column: str) -> tuple[float, float]:
    """The range a statistic's values live in (±inf where unbounded), whatever its part."""
    for prefix in (ROUND_MEAN, FINAL):
        if column.startswith(prefix):
            column = column[len(prefix) :]
    lo, hi = _RANGES.get(column, _RANGES.get(base_stat(column), (None, None)))
    return (-math.inf if lo is None else lo, math.inf if hi is None else hi)


def is_cosine(column: str) -> bool:
    """Whether a statistic is a cosine (lives in [-1, 1], 0 meaning unrelated directions)."""
    return stat_range(column) == (-1.0, 1.0)


def wrap(text: str, width: int = 34, sep: str = " · ") -> str:
    """`text` broken into lines of about `width` characters at `sep` (Plotly's <br>)."""
    lines: list[str] = []
    for part in text.split(sep):
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return "<br>".join(lines)


def mode_color(mode: str) -> str:
    """The colour of a decay mode, the same in every figure."""
    if mode in MODE_COLORS:
        return MODE_COLORS[mode]
    return _SPARE_COLORS[sum(map(ord, mode)) % len(_SPARE_COLORS)]


def mode_rank(mode: str) -> int:
    """Where a mode sorts in legends and panels: the known modes in MODE_ORDER, others last."""
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else 99


def stat_label(column: str) -> str:
    """A readable axis label for a statistic column, naming its part (`decay part: …`)."""
    if column.startswith(ROUND_MEAN):
        return f"{stat_label(column[len(ROUND_MEAN) :])} (mean over rounds)"
    if column.startswith(FINAL):
        return f"{stat_label(column[len(FINAL) :])} (final round)"
    if column in _WHOLE_NAMES:
        return _WHOLE_NAMES[column]
    base = base_stat(column)
    label = STAT_LABELS.get(base, base.replace("_", " "))
    if column.startswith("decay_"):
        return f"decay part: {label}"
    if column.startswith("data_"):
        return f"data part: {label}"
    return label


def rgba(hex_color: str, alpha: float) -> str:
    """`#RRGGBB` as a CSS rgba() with opacity `alpha` (bands and unfilled markers)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def round_axis(fig: go.Figure, last_round: int) -> None:
    """Integer round ticks: every round while few, then an even spacing."""
    fig.update_xaxes(tick0=0, dtick=max(1, math.ceil(last_round / 10)), title_text="round")


def style(fig: go.Figure, height: int = 380, legend: bool = True) -> go.Figure:
    """The house style: white background, light grid, readable fonts, legend on top."""
    fig.update_layout(
        template="simple_white",
        height=height,
        font={"family": FONT, "size": 13, "color": "#222"},
        margin={"l": 64, "r": 24, "t": 64 if legend else 36, "b": 52},
        showlegend=legend,
        legend={
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.08,
            "xanchor": "left",
            "x": 0,
            "font": {"size": 12},
            "traceorder": "normal",
        },
        hoverlabel={"font": {"family": FONT}},
        paper_bgcolor="white",
        plot_bgcolor="white",
    )
    fig.update_xaxes(showgrid=True, gridcolor="#EBEBEB", ticks="outside", zeroline=False)
    fig.update_yaxes(showgrid=True, gridcolor="#EBEBEB", ticks="outside", zeroline=False)
    fig.update_annotations(font={"size": 13})
    return fig
