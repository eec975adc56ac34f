"""Shareable outputs of a results store: the HTML report, paper figures, and the dashboard server.

- `write_report` writes one self-contained HTML file (plotly.js inlined once, no network needed
  to read it) with the figures of `fedadamw.viz.figures` for every experiment in the store.
- `write_figures` writes the same figure objects as PNG and PDF through Plotly's own static
  export (kaleido), which drives a headless Chromium: Debian's `chromium` (found on PATH, or
  wherever `BROWSER_PATH` points), so nothing is downloaded and no second plotting library has
  to redraw the figures.
- `start_dashboard` runs `streamlit run fedadamw/viz/dashboard_app.py` on a loopback port.

The `*_command` functions are what `fedadamw report|figures|dashboard` call: they return an exit
status and print one line on stderr for bad input, never a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from fedadamw.results.reader import (
    ROUND_MEAN,
    Store,
    StoreError,
    config_diff,
    resolve_store_path,
    setting_labels,
    shared_config,
    varying_keys,
)
from fedadamw.viz import figures
from fedadamw.viz.labels import ClientLabels, client_labels

EXIT_BAD_INPUT = 2
DASHBOARD_SCRIPT = Path(__file__).resolve().parent / "dashboard_app.py"
STORE_ENV = "FEDADAMW_STORE"
# Statistics of the report's main divergence figure: agreement between clients, agreement with
# the aggregate, and spread in the aggregate's own units.
MAIN_STATS = ("mean_pairwise_cosine", "mean_cosine_to_aggregate", "relative_drift")
EXPORT_WIDTH = 1000  # px at scale 1; PNGs are written at scale 2 for print
PNG_SCALE = 2


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
    store: Store, labels_for: Callable[[str], ClientLabels] | None = None
) -> list[Section]:
    """The standard figures of every experiment in the store (what report and figures show)."""
    labels = labels_for or functools.cache(client_labels)
    runs_all = store.runs()
    sections = []
    for experiment in dict.fromkeys(runs_all["experiment"]):
        runs = runs_all[runs_all["experiment"] == experiment]
        sections.append(_experiment_section(store, str(experiment), runs, labels))
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
    store: Store, experiment: str, runs: pd.DataFrame, labels: Callable[[str], ClientLabels]
) -> Section:
    items: list[FigureItem] = []
    notes: list[str] = []
    slug = _slug(experiment)
    keys = [k for k in varying_keys(runs) if k != "mode"]
    if keys:
        y_key = keys[1] if len(keys) > 1 else None
        for metric in ("final_accuracy", ROUND_MEAN + "dispersion"):
            fig = figures.sweep_figure(store, runs, keys[0], y_key, metric)
            if fig is not None:
                items.append(
                    FigureItem(
                        f"{slug}-sweep-{_slug(metric.replace(ROUND_MEAN, 'mean-'))}",
                        f"Sweep: {figures.stat_label(metric)}",
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
        new, new_notes = _setting_items(store, sub, prefix, group, labels, shown)
        items += new
        notes += new_notes
    return Section(experiment, runs, items, list(dict.fromkeys(notes)))


def _setting_items(
    store: Store,
    runs: pd.DataFrame,
    prefix: str,
    group: str,
    labels: Callable[[str], ClientLabels],
    shown: list[np.ndarray],
) -> tuple[list[FigureItem], list[str]]:
    """Coupled vs decoupled at one setting: the figures of the dashboard's default view."""
    items: list[FigureItem] = []
    notes: list[str] = []
    stats = store.statistics("rounds")

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
            "Whole-model update statistics per round; lines are means across seeds, bands 95% "
            "confidence intervals (Student t).",
            figures.over_rounds(trained, runs, main),
        )
    for stat in ("mean_pairwise_cosine", "dispersion"):
        parts = stats.parts_of(stat)
        if len(parts) > 1 and trained[list(parts)].notna().any().any():
            add(
                f"parts-{_slug(stat)}",
                f"{figures.stat_label(stat)}: whole update and its parts",
                "The same statistic of the whole update, its data part and its decay part.",
                figures.over_rounds(trained, runs, parts),
            )
    add(
        "shrink",
        "Decay shrink ratio",
        "Per weight, |decay step| / (ηλ|w|): lines the median weight, bands p5 to p95 (means "
        "over seeds); 1 is uniform decay.",
        figures.shrink_figure(store, runs),
    )
    add(
        "accuracy",
        "Test accuracy and loss",
        "Global model on the test split after each round; mean ± 95% CI across seeds.",
        figures.accuracy_figure(store, runs),
    )
    seed = int(min(runs["seed"]))
    last = int(runs[runs["seed"] == seed]["rounds_done"].max())
    if last >= 1:
        fig, heat_notes = figures.heatmap_figure(store, runs, seed, last, labels)
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
            figures.scatter_figure(store, runs, seed, last, "dominant_share", labels),
        )
    add(
        "layers",
        "Which layers diverge most",
        "Mean pairwise cosine per parameter tensor, mean over rounds ± 95% CI across seeds.",
        figures.layers_figure(store, runs, "mean_pairwise_cosine"),
    )
    fig, note = figures.labels_figure(runs, seed, labels)
    if note:
        notes.append(note)
    hist = labels(str(figures.seed_runs(runs, seed)["config_json"].iloc[0])).histogram
    if hist is not None and not any(np.array_equal(hist, h) for h in shown):
        shown.append(hist)
        add(
            "labels",
            f"Label distribution per client (seed {seed})",
            "Training examples per label; clients ordered by dominant label.",
            fig,
        )
    return items, notes


# -- HTML report ----------------------------------------------------------------------------
_CSS = """
body { font-family: Helvetica, Arial, sans-serif; color: #222; margin: 0 auto; max-width: 1100px;
       padding: 24px 32px 64px; line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 21px; margin-top: 40px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 17px; margin: 28px 0 4px; }
h3.group { font-size: 18px; margin-top: 36px; color: #333; background: #f3f3f3; padding: 4px 8px; }
h4 { font-size: 15px; margin: 24px 0 4px; }
p.meta, p.caption { color: #555; font-size: 13px; margin: 2px 0 8px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 10px; text-align: left; }
th { background: #f6f6f6; } .note { color: #8a5a00; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
          margin-right: 5px; vertical-align: -1px; }
"""


def _table(df: pd.DataFrame, index: bool = True) -> str:
    return str(df.to_html(index=index, border=0, na_rep="—", float_format=lambda v: f"{v:.4g}"))


def _runs_html(runs: pd.DataFrame) -> str:
    table = pd.DataFrame(
        {
            "arm": [
                f'<span class="swatch" style="background:{figures.mode_color(m)}"></span>'
                f"{html.escape(m)}"
                for m in runs["mode"]
            ],
            "seed": runs["seed"].to_numpy(),
            "status": [html.escape(str(s)) for s in runs["status"]],
            "rounds": runs["rounds_done"].to_numpy(),
            "run id": [html.escape(str(r)) for r in runs["run_id"]],
        }
    )
    return str(table.to_html(index=False, border=0, escape=False))


def render_html(store: Store, sections: Sequence[Section]) -> str:
    """The report as one HTML document; plotly.js is inlined once, so it reads offline."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>fedadamw report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Update divergence: coupled vs decoupled weight decay</h1>",
        f"<p class='meta'>{html.escape(str(store.path))} · generated "
        f"{time.strftime('%Y-%m-%d %H:%M')} · {sum(len(s.runs) for s in sections)} runs</p>",
    ]
    parts += [f"<p class='note'>{html.escape(w)}</p>" for w in store.warnings]
    first = True
    for section in sections:
        parts.append(f"<h2>Experiment {html.escape(section.experiment)}</h2>")
        parts.append("<h3>Runs</h3>" + _runs_html(section.runs))
        parts.append("<h3>Config difference between arms</h3>" + _table(config_diff(section.runs)))
        shared = ", ".join(f"{k}={v}" for k, v in shared_config(section.runs).items())
        parts.append(f"<p class='caption'>Shared config: {html.escape(shared)}</p>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in section.notes]
        group = ""
        for item in section.items:
            if item.group != group:
                group = item.group
                parts.append(f"<h3 class='group'>{html.escape(group)}</h3>")
            parts.append(f"<h4>{html.escape(item.title)}</h4>")
            parts.append(f"<p class='caption'>{html.escape(item.caption)}</p>")
            parts.append(
                item.figure.to_html(
                    full_html=False,
                    include_plotlyjs=first,
                    include_mathjax=False,
                    config={"displaylogo": False, "responsive": True},
                )
            )
            first = False
    if first:
        parts.append("<p>No figure yet: the store holds no trained round.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, html_path: str | Path) -> Path:
    """Write the self-contained HTML report of the store in `out`; returns the file written."""
    store = Store(out)
    target = Path(html_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(render_html(store, standard_sections(store)), encoding="utf-8")
    os.replace(tmp, target)  # a reader never sees half a report
    return target


# -- paper figures --------------------------------------------------------------------------
class ExportError(RuntimeError):
    """Static export is impossible here (no Chromium); the message says what to install."""


class OverwriteError(RuntimeError):
    """Files to be written exist already and overwriting was not asked for."""


def write_figures(out: str | Path, directory: str | Path, force: bool = False) -> list[Path]:
    """Write every standard figure as PNG and PDF into `directory`; returns the files written.

    Nothing is written when one of the files exists, unless `force`.
    """
    store = Store(out)
    items = [item for s in standard_sections(store) for item in s.items]
    target = Path(directory)
    jobs = []
    paths: list[Path] = []
    for item in items:
        height = int(item.figure.layout.height or 400)
        for ext in ("png", "pdf"):
            path = target / f"{item.name}.{ext}"
            opts = {
                "width": EXPORT_WIDTH,
                "height": height,
                "format": ext,
                "scale": PNG_SCALE if ext == "png" else 1,
            }
            jobs.append({"fig": item.figure, "path": str(path), "opts": opts})
            paths.append(path)
    if not force:
        # is_symlink: a dangling link does not "exist", yet writing would follow it.
        existing = [p for p in paths if p.exists() or p.is_symlink()]
        if existing:
            raise OverwriteError(
                f"--dir {str(target)!r}: {len(existing)} of the {len(paths)} files exist "
                f"already (e.g. {existing[0].name}); pass --force to overwrite them"
            )
    target.mkdir(parents=True, exist_ok=True)
    if jobs:
        _export(jobs)
    return paths


def _export(jobs: list[dict[str, object]]) -> None:
    import kaleido
    from choreographer.errors import ChromeNotFoundError

    try:
        # One browser for all figures: start-up dominates the cost of a static export.
        kaleido.write_fig_from_object_sync(jobs, cancel_on_error=True)
    except ChromeNotFoundError:
        raise ExportError(
            "PNG/PDF export needs Chromium: install it (Debian: apt-get install chromium) or set "
            "BROWSER_PATH to a Chrome/Chromium binary"
        ) from None


# -- dashboard server -----------------------------------------------------------------------
def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and `--port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dashboard_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line: loopback only, headless, no telemetry, no file watcher."""
    options = {
        "server.address": host,
        "server.port": str(port),
        "server.headless": "true",
        "browser.gatherUsageStats": "false",
        "server.fileWatcherType": "none",
        "client.toolbarMode": "viewer",
        # Belt and braces: the page catches its own errors, and a stray one shows no traceback.
        "client.showErrorDetails": "none",
        # Only errors on the terminal. Streamlit warns that uvicorn < 0.52 may drop websocket
        # handshakes behind a reverse proxy; flwr 1.41 pins uvicorn < 0.50, and we serve
        # loopback only.
        "logger.level": "error",
    }
    argv = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD_SCRIPT)]
    for key, value in options.items():
        argv += [f"--{key}", value]
    return argv


def start_dashboard(out: str | Path, port: int, quiet: bool = False) -> subprocess.Popen[bytes]:
    """Start the dashboard server on 127.0.0.1:`port` for the store in `out`; stop it by pid."""
    env = dict(os.environ)
    env[STORE_ENV] = str(resolve_store_path(out).resolve())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    # quiet: Streamlit's own "you can now view…" banner goes; its errors still reach stderr.
    sink = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(dashboard_argv(port), env=env, stdout=sink)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a started process by its pid, killing it if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _fail(message: str) -> int:
    print(f"fedadamw: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check_out(out: Path) -> Path | None:
    """The store file of `out`, or None (after one line on stderr) when there is none."""
    path = resolve_store_path(out)
    if not path.is_file():
        _fail(f"no results store at {path}")
        return None
    return path


def dashboard_command(out: Path, port: int) -> int:
    """`fedadamw dashboard OUT [--port N]`: serve the dashboard until Ctrl-C."""
    path = resolve_store_path(out)
    if not path.parent.is_dir():
        return _fail(f"OUT {str(out)!r}: no such folder")
    if not 0 <= port <= 65535:
        return _fail(f"--port: {port} is not allowed; expected 1..65535 (0: any free port)")
    port = port or free_port()
    if not port_is_free(port):
        return _fail(f"--port: {port} is in use on 127.0.0.1; choose another with --port N")
    proc = start_dashboard(path, port, quiet=True)
    state = "" if path.is_file() else " (waiting for the run to create it)"
    print(
        f"fedadamw dashboard: http://127.0.0.1:{port}  ·  store {path}{state}  ·  Ctrl-C stops",
        flush=True,
    )
    try:
        return_code = proc.wait()
    except KeyboardInterrupt:
        stop_process(proc)
        return 0
    finally:
        stop_process(proc)
    if return_code != 0:
        return _fail(f"the dashboard server exited with status {return_code}")
    return 0


def report_command(out: Path, html_path: Path) -> int:
    """`fedadamw report OUT --html FILE`: write the self-contained HTML report."""
    if _check_out(out) is None:
        return EXIT_BAD_INPUT
    try:
        written = write_report(out, html_path)
    except StoreError as exc:  # EmptyStoreError included
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"--html {str(html_path)!r}: cannot write ({exc.strerror or exc})")
    size = written.stat().st_size / 1e6
    print(f"report: {written} ({size:.1f} MB, self-contained)")
    return 0


def figures_command(out: Path, directory: Path, force: bool = False) -> int:
    """`fedadamw figures OUT --dir D [--force]`: write the standard figures as PNG and PDF."""
    if _check_out(out) is None:
        return EXIT_BAD_INPUT
    try:
        written = write_figures(out, directory, force)
    except (StoreError, ExportError, OverwriteError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"--dir {str(directory)!r}: cannot write ({exc.strerror or exc})")
    print(f"figures: {len(written)} files in {Path(directory)}")
    for path in written:
        print(f"  {path.name}")
    return 0
