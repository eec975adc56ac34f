"""The standard figures as PNG and PDF files, for a paper.

Plotly's own static export (kaleido) draws the same figure objects the report and the dashboard
show, in a headless Chromium: Debian's `chromium` (found on PATH, or wherever `BROWSER_PATH`
points), so nothing is downloaded and no second plotting library has to redraw them.
"""

from __future__ import annotations

from pathlib import Path

from fedadamw.results.reader import Store
from fedadamw.viz.views import standard_sections

EXPORT_WIDTH = 1000  # px at scale 1; PNGs are written at scale 2 for print
PNG_SCALE = 2


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
