"""What `fedadamw dashboard|report|figures` run: check the input, do the work, say one line.

Each returns an exit status and prints one line on stderr for bad input, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from fedadamw.errors import EXIT_BAD_INPUT, print_error
from fedadamw.results.reader import StoreError, resolve_store_path
from fedadamw.viz.export import ExportError, OverwriteError, write_figures
from fedadamw.viz.html_report import write_report
from fedadamw.viz.serve import free_port, port_is_free, start_dashboard, stop_process


def _check_out(out: Path) -> Path | None:
    """The store file of `out`, or None (after one line on stderr) when there is none."""
    path = resolve_store_path(out)
    if not path.is_file():
        print_error(f"no results store at {path}")
        return None
    return path


def dashboard_command(out: Path, port: int) -> int:
    """`fedadamw dashboard OUT [--port N]`: serve the dashboard until Ctrl-C."""
    path = resolve_store_path(out)
    if not path.parent.is_dir():
        return print_error(f"OUT {str(out)!r}: no such folder")
    if not 0 <= port <= 65535:
        return print_error(f"--port: {port} is not allowed; expected 1..65535 (0: any free port)")
    port = port or free_port()
    if not port_is_free(port):
        return print_error(f"--port: {port} is in use on 127.0.0.1; choose another with --port N")
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
        return print_error(f"the dashboard server exited with status {return_code}")
    return 0


def report_command(out: Path, html_path: Path) -> int:
    """`fedadamw report OUT --html FILE`: write the self-contained HTML report."""
    if _check_out(out) is None:
        return EXIT_BAD_INPUT
    try:
        written = write_report(out, html_path)
    except StoreError as exc:  # EmptyStoreError included
        return print_error(str(exc))
    except OSError as exc:
        return print_error(f"--html {str(html_path)!r}: cannot write ({exc.strerror or exc})")
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
        return print_error(str(exc))
    except OSError as exc:
        return print_error(f"--dir {str(directory)!r}: cannot write ({exc.strerror or exc})")
    print(f"figures: {len(written)} files in {Path(directory)}")
    for path in written:
        print(f"  {path.name}")
    return 0
