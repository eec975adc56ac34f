"""The self-contained HTML report of a results store: one file that reads offline.

plotly.js is inlined once, so opening the report fetches nothing; the figures are the standard
set of `fedadamw.viz.views`, the same objects the dashboard draws and `figures` exports.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedadamw.fileio import atomic_write_bytes
from fedadamw.results.summaries import config_diff, shared_config
from fedadamw.viz.stores import Stores
from fedadamw.viz.style import mode_color
from fedadamw.viz.views import Section, live_status, rejections_table, runs_table, standard_sections

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


def _runs_html(store: Stores, runs: pd.DataFrame) -> str:
    table = runs_table(runs, store.rounds(list(runs["run_id"])))
    table["arm"] = [
        f'<span class="swatch" style="background:{mode_color(m)}"></span>{html.escape(m)}'
        for m in table["arm"]
    ]
    for column in table.columns:
        if column != "arm" and table[column].dtype == object:
            table[column] = [html.escape(str(v)) for v in table[column]]
    return str(
        table.to_html(
            index=False,
            border=0,
            escape=False,
            na_rep="—",
            formatters={
                "final test acc (%)": lambda v: "—" if pd.isna(v) else f"{v:.1f}",
                "final mean pairwise cos": lambda v: "—" if pd.isna(v) else f"{v:.3f}",
            },
        )
    )


def _rejections_html(store: Stores, runs: pd.DataFrame) -> str:
    table = rejections_table(store, runs)
    if table.empty:
        return "<p class='caption'>No client reply was dropped or rejected.</p>"
    return _table(table, index=False)


def render_html(store: Stores, sections: Sequence[Section]) -> str:
    """The report as one HTML document; plotly.js is inlined once, so it reads offline."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>fedadamw report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Update divergence: coupled vs decoupled weight decay</h1>",
        f"<p class='meta'>{html.escape(' + '.join(str(p) for p in store.paths))} · generated "
        f"{time.strftime('%Y-%m-%d %H:%M')} · {sum(len(s.runs) for s in sections)} runs</p>",
    ]
    parts += [f"<p class='note'>{html.escape(w)}</p>" for w in store.warnings]
    first = True
    for section in sections:
        parts.append(f"<h2>Experiment {html.escape(section.experiment)}</h2>")
        live = live_status(section.runs, store.rounds(list(section.runs["run_id"])))
        if live:
            parts.append(
                f"<p class='note'>{html.escape(live.replace('**', ''))} (at the time "
                "of writing: the report is a snapshot)</p>"
            )
        parts.append("<h3>Runs</h3>" + _runs_html(store, section.runs))
        parts.append("<h3>Config difference between arms</h3>" + _table(config_diff(section.runs)))
        shared = ", ".join(f"{k}={v}" for k, v in shared_config(section.runs).items())
        parts.append(f"<p class='caption'>Shared config: {html.escape(shared)}</p>")
        parts.append(
            "<h3>Dropped and rejected clients</h3>" + _rejections_html(store, section.runs)
        )
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


def write_report(outs: Sequence[str | Path], html_path: str | Path) -> Path:
    """Write the self-contained HTML report of the stores in `outs`; returns the file written."""
    store = Stores(outs)
    # A reader (a browser reloading it) never sees half a report.
    return atomic_write_bytes(html_path, render_html(store, standard_sections(store)).encode())
