"""The errors a user sees as one line, and the one place that prints them."""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """A configuration value, key or input path is not allowed; the message is one line."""


def print_error(message: object) -> int:
    """Print `fedadamw: error: <message>` on stderr as one line; the exit status for bad input."""
    text = " ".join(str(message).split())
    print(f"fedadamw: error: {text}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT
