"""`fedadamw partitions`: how a config splits its data set, as a label histogram per client."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedadamw.config import Config

MAX_CLASS_COLUMNS = 20  # wider histograms (FEMNIST's 62 classes) go to the plot only


def describe(cfg: Config) -> str:
    """The split in a few words, e.g. 'mnist1d · 10 clients · dirichlet α=0.3'."""
    detail = {
        "dirichlet": f"dirichlet α={cfg.dirichlet_alpha:g}",
        "pathological": f"pathological, {cfg.classes_per_client} classes per client",
        "shards": f"shards, {cfg.shards_per_client} per client",
        "exponential": "exponential sizes",
        "linear": "linear sizes",
    }.get(cfg.partitioner, cfg.partitioner)
    data = cfg.dataset
    if data == "synthetic":
        data = (
            "synthetic IID"
            if cfg.synthetic_iid
            else f"synthetic({cfg.synthetic_alpha:g}, {cfg.synthetic_beta:g})"
        )
    return f"{data} · {cfg.num_clients} clients · {detail} · seed {cfg.seed}"


def default_plot_path(cfg: Config) -> Path:
    """Where the plot goes without --plot: the run's output folder (runs/<experiment>)."""
    return Path(cfg.out_dir or Path("runs") / cfg.experiment) / "partitions.png"


def histogram_table(hist: np.ndarray, title: str) -> object:
    """A rich Table: one row per client with its size, classes held, top class and counts."""
    from rich.table import Table

    clients, classes = hist.shape
    table = Table(title=title)
    for name in ("client", "examples", "labels", "top (share)"):
        table.add_column(name, justify="right", no_wrap=True)
    per_class = classes <= MAX_CLASS_COLUMNS
    if per_class:
        for c in range(classes):
            table.add_column(str(c), justify="right", no_wrap=True)
    for i in range(clients):
        row = hist[i]
        total = int(row.sum())
        top = int(row.argmax())
        share = row[top] / total if total else 0.0
        cells = [str(i), str(total), str(int((row > 0).sum())), f"{top} ({share:.0%})"]
        if per_class:
            cells += [str(int(v)) if v else "·" for v in row]
        table.add_row(*cells)
    sums = hist.sum(axis=0)
    footer = ["all", str(int(sums.sum())), str(int((sums > 0).sum())), ""]
    if per_class:
        footer += [str(int(v)) for v in sums]
    table.add_row(*footer, style="bold")
    return table


def write_plot(hist: np.ndarray, path: Path, title: str) -> Path:
    """A stacked bar per client, one colour per label; written as PNG (or the suffix's format)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    clients, classes = hist.shape
    # Figure() without pyplot: no global backend state, safe in any process.
    fig = Figure(figsize=(max(6.0, min(24.0, 0.35 * clients + 2)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if classes <= 10 else "tab20" if classes <= 20 else "viridis"]
    bottom = np.zeros(clients)
    ids = np.arange(clients)
    for c in range(classes):
        color = cmap(c if classes <= 20 else c / max(classes - 1, 1))
        ax.bar(ids, hist[:, c], bottom=bottom, color=color, label=str(c), width=0.85)
        bottom += hist[:, c]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training examples")
    ax.set_title(title, fontsize=10)
    if classes <= 20:
        ax.legend(title="label", fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(-0.6, clients - 0.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def partitions_command(cfg: Config, plot: Path | None) -> int:
    """Print the per-client label histogram of `cfg`'s split and write it as a plot; exit code."""
    import sys

    from rich.console import Console

    from fedadamw.data.split import label_histogram, prepare

    hist = label_histogram(prepare(cfg))
    title = describe(cfg)
    # A pipe or CI log has no width: give the table room for ten label columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(histogram_table(hist, title))
    sizes = hist.sum(axis=1)
    share = hist.max(axis=1) / np.maximum(sizes, 1)
    console.print(
        f"examples per client: min {int(sizes.min())}, median {float(np.median(sizes)):g}, "
        f"max {int(sizes.max())} · mean top-class share {float(share.mean()):.0%}"
    )
    path = write_plot(hist, plot or default_plot_path(cfg), title)
    console.print(f"plot: {path}")
    return 0
