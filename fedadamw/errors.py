"""The errors a user sees as one line, and the one place that prints them."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO, cast

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """A configuration value, key or input path is not allowed; the message is one line."""


def print_error(message: object) -> int:
    """Print `fedadamw: error: <message>` on stderr as one line; the exit status for bad input."""
    text = " ".join(str(message).split())
    print(f"fedadamw: error: {text}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


class _PipeSafeStdout:
    """sys.stdout that, once its reader is gone (`fedadamw run … | head`), drops the rest.

    A closed pipe is not a failure: the run goes on and its results reach the store; only
    the screen output after that point goes to /dev/null.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def survive_closed_stdout() -> None:
    """Make sys.stdout drop output instead of raising once the pipe it writes to is closed."""
    if not isinstance(sys.stdout, _PipeSafeStdout) and sys.stdout is not None:
        sys.stdout = cast(TextIO, _PipeSafeStdout(sys.stdout))
