"""System tools some tests need, and what a test does when one is missing.

Outside CI a test that needs Debian's chromium, kaleido or docker-compose skips and says what
to install. With the environment variable `CI` set (to anything but "", "0", "false" or "no",
as CI services set it) it fails instead: CI must run these checks, never pass by skipping them.
`scripts/system-deps.sh` installs the tools, and `.ci/run` runs it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether `CI` is set the way CI services set it (scripts/system-deps.sh reads it alike)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, install: str) -> None:
    """Skip the calling test because `what` is missing; fail it instead under CI."""
    message = f"{what} is missing; {install}"
    if in_ci():
        pytest.fail(f"CI is set, so this test must run: {message}", pytrace=False)
    pytest.skip(message)


def program(*names: str, install: str) -> str:
    """The path of the first of `names` on PATH; skips (fails under CI) when there is none."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    missing(" or ".join(names), install)
    raise AssertionError("unreachable")  # pytest.skip/fail raise


def chromium() -> str:
    """Debian's headless Chromium (the dashboard browser test, kaleido's PNG/PDF export)."""
    return program("chromium", "chromium-browser", install="scripts/system-deps.sh installs it")


def kaleido() -> None:
    """Plotly's static export package (a project dependency) and the Chromium it drives."""
    if importlib.util.find_spec("kaleido") is None:
        missing("the kaleido package", "pip install -e '.[dev]' installs it")
    chromium()


def docker_compose() -> str:
    """Debian's docker-compose (the compose schema check)."""
    return program("docker-compose", install="scripts/system-deps.sh installs it")
