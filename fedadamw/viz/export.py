"""The standard figures as PNG and PDF files, for a paper.

Plotly's own static export (kaleido) draws the same figure objects the report and the dashboard
show, in a headless Chromium: Debian's `chromium` (found on PATH, or wherever `BROWSER_PATH`
points), so nothing is downloaded and no second plotting library has to redraw them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from fedadamw.viz.stores import Stores
from fedadamw.viz.views import standard_sections

EXPORT_WIDTH = 1000  # px at scale 1; PNGs are written at scale 2 for print
PNG_SCALE = 2


class ExportError(RuntimeError):
    """Static export is impossible here (no Chromium); the message says what to install."""


class OverwriteError(RuntimeError):
    """Files to be written exist already and overwriting was not asked for."""


def write_figures(
    outs: Sequence[str | Path], directory: str | Path, force: bool = False
) -> list[Path]:
    """Write every standard figure as PNG and PDF into `directory`; returns the files written.

    Nothing is written when one of the files exists, unless `force`.
    """
    store = Stores(outs)
    items = [item for s in standard_sections(store) for item in s.items]
    target = Path(directory)
    jobs = []
    paths: list[Path] = []
    titles: dict[Path, str] = {}
    for item in items:
        titles[target / f"{item.name}.pdf"] = " · ".join(t for t in (item.title, item.group) if t)
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
    for path, title in titles.items():
        # Chromium titles every PDF after kaleido's own page ("Kaleido-fier").
        path.write_bytes(pdf_with_title(path.read_bytes(), title))
    return paths


def _pdf_text(text: str) -> str:
    """A PDF text string: UTF-16BE with a byte-order mark, as hex (any character, no escaping)."""
    return "<FEFF" + text.encode("utf-16-be").hex().upper() + ">"


def pdf_with_title(data: bytes, title: str) -> bytes:
    """`data` (a PDF with a classic xref table) with a new document-information dictionary.

    Appended as an incremental update (PDF 1.7, 7.5.6): the original bytes stay as they are,
    a new Info object and a trailer pointing to it (and to the previous xref) follow them.
    """
    tail = data[-2048:].decode("latin-1")
    trailers = list(re.finditer(r"trailer\s*<<(.*?)>>\s*startxref\s*(\d+)", tail, re.S))
    if not trailers:
        raise ExportError("the PDF has no trailer this export can extend")
    trailer, prev = trailers[-1].group(1), int(trailers[-1].group(2))
    size = int(re.search(r"/Size\s+(\d+)", trailer).group(1))  # type: ignore[union-attr]
    root = re.search(r"/Root\s+(\d+\s+\d+\s+R)", trailer).group(1)  # type: ignore[union-attr]
    stamp = time.strftime("D:%Y%m%d%H%M%S")
    body = (
        f"{size} 0 obj\n<</Title {_pdf_text(title)}\n/Creator (fedadamw figures)\n"
        f"/Producer (Skia/PDF via Plotly kaleido)\n/CreationDate ({stamp})\n"
        f"/ModDate ({stamp})>>\nendobj\n"
    ).encode("latin-1")
    start = len(data) + (0 if data.endswith(b"\n") else 1)
    head = data if data.endswith(b"\n") else data + b"\n"
    xref_at = start + len(body)
    xref = (
        # The free-list head (object 0) first, as most writers do: readers then need no
        # guessing about where the subsections start.
        f"xref\n0 1\n0000000000 65535 f \n{size} 1\n{start:010d} 00000 n \n"
        f"trailer\n<</Size {size + 1}\n/Root {root}\n/Info {size} 0 R\n/Prev {prev}>>\n"
        f"startxref\n{xref_at}\n%%EOF\n"
    ).encode("latin-1")
    return head + body + xref


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
