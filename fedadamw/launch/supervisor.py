"""The `fedadamw run` process: it supervises the simulation process and cleans up after it.

The simulation (`fedadamw.launch.simulate`) runs in a child process that leads a process group of
its own; Ray's processes (GCS, raylet, agents, workers) join that group. This process:

- forwards Ctrl-C (SIGINT, to the process or its terminal's group) and SIGTERM to the child as
  one SIGINT, waits `GRACE_S` for an orderly stop, then kills the whole group;
- after any end of the child, kills what is left of the group and removes Ray's session files,
  so no Ray process and no temp folder outlives the run;
- restarts the simulation when a Ray worker died (exit 75): it resumes from the store's last
  checkpoint on fresh workers, at most `max_restarts` times;
- marks runs left ``running`` as ``interrupted`` (it holds the folder's writer lock, so no
  other process can be running them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from fedadamw.errors import print_error
from fedadamw.launch.spec import EXIT_STOPPED, EXIT_WORKER_LOST, Spec

GRACE_S = 6.0  # orderly stop (arms marked, Ray shut down) before the group is killed
RAY_DIR_PREFIX = "fedadamw-ray-"
_OWNER = "owner.pid"


def sweep_stale_ray_dirs(root: str | None = None) -> list[Path]:
    """Remove Ray session folders of earlier runs whose `fedadamw run` is gone; the removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(RAY_DIR_PREFIX + "*"):
        try:
            pid = int((path / _OWNER).read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def make_ray_dir(root: str | None = None) -> Path:
    """A fresh folder for Ray's session files, owned by this process.

    Short on purpose: Ray puts Unix sockets under it, whose paths may not exceed 107 bytes.
    """
    path = Path(tempfile.mkdtemp(prefix=RAY_DIR_PREFIX, dir=root))
    (path / _OWNER).write_text(str(os.getpid()))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so Ray processes whose parent died get reaped here."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_zombies() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def end_group(pgid: int, timeout: float = 3.0) -> bool:
    """SIGKILL every process of group `pgid`; whether the group is gone within `timeout`.

    No grace period: the store already holds everything, and Ray's processes keep nothing
    that a resumed run needs.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap_zombies()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def killed_message(signum: int) -> str:
    """Why the run stopped when something outside killed the simulation process."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    oom = " (often the kernel's out-of-memory killer)" if signum == signal.SIGKILL else ""
    return (
        f"the simulation process was killed by {name}{oom}; finished rounds are stored: "
        "run the same command to resume"
    )


class Supervisor:
    """Runs the simulation process, restarting it after a lost worker; see the module."""

    def __init__(self, spec: Spec, lock_fd: int, max_restarts: int = 2) -> None:
        self.spec = spec
        self.lock_fd = lock_fd
        self.max_restarts = max_restarts
        self.signal: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self._deadline: float | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:  # a second Ctrl-C: no more waiting
            self._deadline = 0.0
            return
        self.signal = signum
        self._deadline = time.monotonic() + GRACE_S
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGINT)

    def run(self, spec_file: Path) -> int:
        """Run (and re-run) the simulation until done; the exit code for `fedadamw run`."""
        _become_subreaper()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            restarts = 0
            spec = self.spec
            while True:
                spec.write(spec_file)
                code = self._run_once(spec_file)
                if self.signal is not None:
                    return 128 + self.signal
                if code != EXIT_WORKER_LOST:
                    return code
                if restarts >= self.max_restarts:
                    print_error(
                        f"Ray workers died {restarts + 1} times; the run stopped "
                        "(finished rounds are stored: run the same command to resume)"
                    )
                    return code
                restarts += 1
                print(
                    f"fedadamw: restarting Ray and resuming from the last stored round "
                    f"(restart {restarts} of {self.max_restarts})",
                    file=sys.stderr,
                    flush=True,
                )
                # Resume, never wipe again: `restart` applied to the first attempt only.
                spec = Spec(**{**spec.__dict__, "restart": False})
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.spec.ray_temp_dir:
                shutil.rmtree(self.spec.ray_temp_dir, ignore_errors=True)

    def _run_once(self, spec_file: Path) -> int:
        env = dict(os.environ)
        if self.spec.ray_address is not None:
            env["RAY_ADDRESS"] = self.spec.ray_address  # the cluster's own security applies
        if self.spec.ray_temp_dir is not None:
            # Ray's gRPC ports listen on every interface: with a token that only this run's
            # processes know (they inherit it), nobody else can use the local cluster.
            env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.child = subprocess.Popen(
            [sys.executable, "-m", "fedadamw.launch.simulate", str(spec_file)],
            env=env,
            start_new_session=True,  # its own group: a terminal's Ctrl-C reaches only us
            pass_fds=(self.lock_fd,),  # the child shares the writer lock while it lives
        )
        if self.signal is not None:  # a signal came while starting it
            self.child.send_signal(signal.SIGINT)
        while True:
            try:
                code = self.child.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    end_group(self.child.pid)  # no orderly stop in time: end it all
        end_group(self.child.pid)  # Ray's agents and workers outlive the child otherwise
        if code < 0:  # killed by a signal
            if self.signal is not None:
                return EXIT_STOPPED
            print_error(killed_message(-code))
            return 1
        return code if code < 128 else EXIT_STOPPED
