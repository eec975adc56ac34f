"""One writer per output folder, and whether that writer is still alive.

The process that writes `DIR/results.db` holds an exclusive `flock` on `DIR/.fedadamw.results.lock`
for as long as it lives. The kernel drops the lock when the holder dies, however it dies
(SIGKILL, power loss of a local machine), so a reader can tell a live run from a dead one
without heartbeats or timeouts: if it can take a shared lock, nobody is writing, and a run
still marked ``running`` in the store is really ``interrupted``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".fedadamw.results.lock"


class FolderInUseError(RuntimeError):
    """Another live process writes this output folder; the message is one line."""


class WriterLock:
    """The exclusive writer lock of an output folder; release with `release` or `with`."""

    def __init__(self, out_dir: str | Path, wait_s: float = 2.0) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        # Readers take a shared lock for a moment: retry briefly before calling it taken.
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(self.fd)
                    raise
                if time.monotonic() > deadline:
                    holder = _read_pid(self.path)
                    os.close(self.fd)
                    who = f"pid {holder}" if holder else "another process"
                    raise FolderInUseError(
                        f"{self.path.parent} is being written by a running fedadamw ({who}); "
                        "wait for it to finish, stop it, or choose another --out"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        # A child process that inherits this descriptor shares the lock (same open file).
        os.set_inheritable(self.fd, True)

    def release(self) -> None:
        """Drop the lock (also dropped when every process holding the descriptor exits)."""
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def writer_alive(out_dir: str | Path) -> bool:
    """Whether a live process holds the writer lock of `out_dir` (works in read-only folders)."""
    path = Path(out_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: no writer has ever held this folder, or it was removed
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
