"""What `fedadamw dashboard|report|figures` run: check the input, do the work, say one line.

Each takes one or more output folders (overlaid: runs grouped by setting across them), returns
an exit status and prints one line on stderr for bad input, never a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fedadamw.errors import EXIT_BAD_INPUT, print_error
from fedadamw.results.reader import StoreError, resolve_store_path
from fedadamw.viz.export import ExportError, OverwriteError, write_figures
from fedadamw.viz.html_report import write_report
from fedadamw.viz.serve import free_port, port_is_free, start_dashboard, stop_process


def _check_outs(outs: Sequence[Path]) -> list[Path] | None:
    """The store files of `outs`, or None (after one line on stderr) when one has none."""
    paths = [resolve_store_path(out) for out in outs]
    for path in paths:
        if not path.is_file():
            print_error(f"no results store at {path}")
            return None
    return paths


class _StopSignalError(Exception):
    """SIGTERM or SIGHUP arrived: stop the server like Ctrl-C does."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopSignalError(signum)


def dashboard_command(outs: Sequence[Path] | Path, port: int) -> int:
    """`fedadamw dashboard OUT [OUT …] [--port N]`: serve the dashboard until stopped.

    Ctrl-C, SIGTERM and SIGHUP stop the Streamlit server this command started (and a
    SIGKILL of this command reaches it too: the server dies with its parent).
    """
    outs = [outs] if isinstance(outs, Path) else list(outs)
    paths = [resolve_store_path(out) for out in outs]
    for out, path in zip(outs, paths, strict=True):
        # A folder that does not exist yet is fine: the page waits for the run to create it.
        existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            return print_error(f"OUT {str(out)!r}: {existing} is a file, not a folder")
    if not 0 <= port <= 65535:
        return print_error(f"--port: {port} is not allowed; expected 1..65535 (0: any free port)")
    port = port or free_port()
    if not port_is_free(port):
        return print_error(f"--port: {port} is in use on 127.0.0.1; choose another with --port N")
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        proc = start_dashboard(paths, port, quiet=True)
        waiting = [p for p in paths if not p.is_file()]
        state = " (waiting for the run to create it)" if waiting else ""
        shown = "  ".join(str(p) for p in paths)
        print(
            f"fedadamw dashboard: http://127.0.0.1:{port}  ·  "
            f"store{'s' if len(paths) > 1 else ''} {shown}{state}  ·  Ctrl-C stops",
            flush=True,
        )
        return_code = proc.wait()
    except (KeyboardInterrupt, _StopSignalError):
        return 0
    finally:
        if proc is not None:
            stop_process(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if return_code != 0:
        return print_error(f"the dashboard server exited with status {return_code}")
    return 0


def report_command(outs: Sequence[Path] | Path, html_path: Path) -> int:
    """`fedadamw report OUT [OUT …] --html FILE`: write the self-contained HTML report."""
    outs = [outs] if isinstance(outs, Path) else list(outs)
    if _check_outs(outs) is None:
        return EXIT_BAD_INPUT
    try:
        written = write_report(outs, html_path)
    except StoreError as exc:  # EmptyStoreError included
        return print_error(str(exc))
    except OSError as exc:
        return print_error(f"--html {str(html_path)!r}: cannot write ({exc.strerror or exc})")
    size = written.stat().st_size / 1e6
    print(f"report: {written} ({size:.1f} MB, self-contained)")
    return 0


def figures_command(outs: Sequence[Path] | Path, directory: Path, force: bool = False) -> int:
    """`fedadamw figures OUT [OUT …] --dir D [--force]`: the standard figures as PNG and PDF."""
    outs = [outs] if isinstance(outs, Path) else list(outs)
    if _check_outs(outs) is None:
        return EXIT_BAD_INPUT
    try:
        written = write_figures(outs, directory, force)
    except (StoreError, ExportError, OverwriteError) as exc:
        return print_error(str(exc))
    except OSError as exc:
        return print_error(f"--dir {str(directory)!r}: cannot write ({exc.strerror or exc})")
    print(f"figures: {len(written)} files in {Path(directory)}")
    for path in written:
        print(f"  {path.name}")
    return 0
