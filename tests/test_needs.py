"""A missing tool skips a test outside CI and fails it under CI; system-deps.sh agrees."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import needs

ROOT = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash") or "/bin/bash"  # found before any test narrows PATH


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH that holds only `id`: no chromium, no docker-compose, no apt-get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    id_program = shutil.which("id")
    assert id_program is not None
    (bin_dir / "id").symlink_to(id_program)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.mark.parametrize("value", ["true", "1", "yes", "True"])
def test_a_missing_tool_fails_the_test_under_ci(
    bare_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    for check in (needs.chromium, needs.docker_compose, needs.kaleido):
        with pytest.raises(pytest.fail.Exception, match="CI is set, so this test must run"):
            check()


@pytest.mark.parametrize("value", [None, "", "0", "false", "no"])
def test_a_missing_tool_skips_the_test_outside_ci(
    bare_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="chromium or chromium-browser is missing"):
        needs.chromium()
    with pytest.raises(pytest.skip.Exception, match="docker-compose is missing"):
        needs.docker_compose()


def test_a_tool_on_path_is_returned(bare_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    fake = bare_path / "docker-compose"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert needs.docker_compose() == str(fake)


def _system_deps(path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(path)} | ({} if ci is None else {"CI": ci})
    return subprocess.run(
        [BASH, str(ROOT / "scripts" / "system-deps.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_system_deps_fails_under_ci_when_it_cannot_install(bare_path: Path) -> None:
    if os.geteuid() == 0:
        # As root it would try apt-get; without apt-get on PATH it still cannot install.
        assert shutil.which("apt-get", path=str(bare_path)) is None
    refused = _system_deps(bare_path, "true")
    assert refused.returncode != 0
    assert "CI is set and chromium docker-compose missing" in refused.stderr
    allowed = _system_deps(bare_path, None)
    assert allowed.returncode == 0
    assert "(their tests will skip)" in allowed.stderr
