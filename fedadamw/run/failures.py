"""Client failures as one line in the store, with the full text in a log beside it.

A failed client can bring a whole Ray traceback (hundreds of lines, ANSI colours). The store's
`rejections.reason` keeps one readable line of at most `MAX_REASON` characters that names the
log; `DIR/failures.log` keeps every failure in full, under a header that says which run, round
and partition it belongs to.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

MAX_REASON = 200
LOG_FILE = "failures.log"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Lines of a Python traceback that say what went wrong, e.g. "ValueError: bad shape".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
# How Flower's simulation engine words a client's exception: "<class 'pkg.Error'>:<'text'>".
_FLOWER_REASON = re.compile(r"^<class '(?:[\w]+\.)*(\w+)'>:<'(.*)", re.DOTALL)


def clean(text: str) -> str:
    """`text` without ANSI escapes and control characters, whitespace collapsed."""
    return " ".join(_CONTROL.sub(" ", _ANSI.sub("", text)).split())


def summary(text: str, limit: int = MAX_REASON) -> str:
    """The most telling line of a failure text, cleaned, at most `limit` characters.

    For a traceback that is its last exception line (what was raised), else its first line.
    """
    flower = _FLOWER_REASON.match(text.strip())
    if flower:
        name, rest = flower.groups()
        text = name + ": " + rest.strip().removesuffix("'>")
    lines = [line for line in (clean(raw) for raw in text.splitlines()) if line]
    if not lines:
        return "unknown failure"
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    best = raised[-1] if len(lines) > 1 and raised else lines[0]
    return best if len(best) <= limit else best[: limit - 1] + "…"


class FailureLog:
    """Appends full failure texts to `DIR/failures.log`; gives back the store's one line."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOG_FILE

    def reason(self, text: str, run_id: str, server_round: int, partition_id: int | None) -> str:
        """Log `text` in full when it is longer than a line; the one-line reason to store."""
        one = summary(text)
        if one == clean(text) and len(one) <= MAX_REASON:
            return one  # nothing was cut: no need for the log
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(
                f"=== {stamp} run {run_id} round {server_round} partition {partition_id}\n"
                f"{_ANSI.sub('', text).rstrip()}\n\n"
            )
        suffix = f" (full text: {LOG_FILE})"
        return summary(text, MAX_REASON - len(suffix)) + suffix


class RunInterruptedError(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM, the CLI died): the arm is marked interrupted."""


class WorkerLostError(RuntimeError):
    """A simulation worker died under a client: the run resumes on fresh workers."""


class NonFiniteRunError(ValueError):
    """Every client's update was non-finite: the settings overflow float32 (bad input)."""


# Ray's words for a worker process or actor that is gone (not a client's own exception).
_LOST_WORKER = (
    "ActorDiedError",
    "RayActorError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "NodeDiedError",
    "OutOfMemoryError",
    "The actor died",
)


def is_lost_worker(reason: str) -> bool:
    """Whether an error reply says the worker died rather than the client code failing."""
    return any(marker in reason for marker in _LOST_WORKER)
