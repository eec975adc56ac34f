"""Starting and stopping the dashboard server: `streamlit run` on a loopback port.

The server gets the stores through the ``FEDADAMW_STORE`` environment variable (paths joined
by `os.pathsep`, like PATH); it listens on 127.0.0.1 only, sends no telemetry and watches no
files. On Linux it is started so that it dies with the process that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fedadamw.results.reader import resolve_store_path

DASHBOARD_SCRIPT = Path(__file__).resolve().parent / "dashboard_app.py"
STORE_ENV = "FEDADAMW_STORE"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server binds (SO_REUSEADDR): connections of a stopped server lingering in
        # TIME_WAIT do not make the port "in use"; only a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and `--port 0`)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that were free a moment ago.

    Every socket stays open until all are chosen: the kernel may hand a just-closed ephemeral
    port out again, so ports asked for one at a time can repeat (seen in CI: two SuperNodes
    given one port, the second failing with EADDRINUSE).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


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


def store_env(outs: Sequence[str | Path]) -> str:
    """The ``FEDADAMW_STORE`` value naming the stores of `outs`."""
    return os.pathsep.join(str(resolve_store_path(o).resolve()) for o in outs)


def stores_from_env(value: str) -> list[str]:
    """The store paths a ``FEDADAMW_STORE`` value names."""
    return [p for p in value.split(os.pathsep) if p.strip()]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PDEATHSIG


def start_dashboard(
    outs: str | Path | Sequence[str | Path], port: int, quiet: bool = False
) -> subprocess.Popen[bytes]:
    """Start the dashboard server on 127.0.0.1:`port` for the stores in `outs`; stop it by pid."""
    env = dict(os.environ)
    env[STORE_ENV] = store_env([outs] if isinstance(outs, str | Path) else outs)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    # quiet: Streamlit's own "you can now view…" banner goes; its errors still reach stderr.
    sink = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(dashboard_argv(port), env=env, stdout=sink, preexec_fn=_die_with_parent)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a started process by its pid, killing it if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
