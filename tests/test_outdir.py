"""A submitted run writes only under the results root: paths, `..`, symlinks, the ServerApp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp import Grid

from fedadamw.errors import ConfigError
from fedadamw.run import outdir
from server import app as server_app


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "runs-root"
    folder.mkdir()
    monkeypatch.setenv(outdir.RESULTS_ROOT_ENV, str(folder))
    return folder.resolve()


def test_the_root_comes_from_the_environment_then_the_container_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(outdir.RESULTS_ROOT_ENV, str(tmp_path / "r"))
    assert outdir.results_root() == (tmp_path / "r").resolve()
    monkeypatch.delenv(outdir.RESULTS_ROOT_ENV)
    monkeypatch.setattr(outdir, "CONTAINER_ROOT", tmp_path / "app-runs")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert outdir.results_root() == (tmp_path / "home" / "fedadamw-runs").resolve()
    (tmp_path / "app-runs").mkdir()  # what the image makes: then it is a container
    assert outdir.results_root() == (tmp_path / "app-runs").resolve()


def test_relative_and_inner_absolute_paths_are_accepted(root: Path) -> None:
    assert outdir.resolve_under_root("", "default") == root / "default"
    assert outdir.resolve_under_root("a/b", "x") == root / "a" / "b"
    assert outdir.resolve_under_root(str(root / "abs"), "x") == root / "abs"
    assert outdir.resolve_under_root("a/../c", "x") == root / "c"  # `..` that stays inside


@pytest.mark.parametrize(
    "given",
    ["/etc/cron.d", "../escape", "a/../../escape", ".", "~", "/", "x\0y"],
)
def test_paths_that_leave_the_root_are_one_line_errors(root: Path, given: str) -> None:
    with pytest.raises(ConfigError) as info:
        outdir.resolve_under_root(given, "default")
    message = str(info.value)
    assert message.startswith("out-dir: ") and "\n" not in message


def test_a_symlink_inside_the_root_cannot_lead_out(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ConfigError, match="not a folder under the results root"):
        outdir.resolve_under_root("link/run", "x")
    # A root that is itself a symlink is fine: the check compares resolved paths.
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert outdir.resolve_under_root("run", "x", root=alias) == root / "run"


def _context(run_config: dict[str, bool | float | int | str]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


class _NoGrid:
    """A grid that fails the test when the ServerApp gets as far as using it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the ServerApp used the grid ({name}) after refusing the run")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_the_serverapp_refuses_an_escaping_out_dir_with_one_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "elsewhere"
    grid: Grid = _NoGrid()  # type: ignore[assignment]
    server_app.main(grid, _context({"out-dir": str(target), "num-clients": 3}))
    err = capsys.readouterr().err
    assert err.startswith("fedadamw: error: out-dir: ") and err.count("\n") == 1
    assert str(target) in err
    assert not target.exists() and _files(root) == []
    # A symlink planted under the root is no way round it either.
    (root / "planted").symlink_to(target.parent)
    server_app.main(grid, _context({"out-dir": "planted/elsewhere", "num-clients": 3}))
    assert capsys.readouterr().err.count("\n") == 1
    assert not target.exists() and _files(root) == []


def test_the_serverapp_takes_a_relative_out_dir_under_the_root(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []
    monkeypatch.setattr(server_app, "run_experiment", lambda g, c, out, **options: seen.append(out))
    server_app.main(_NoGrid(), _context({"out-dir": "mine", "experiment": "e"}))  # type: ignore[arg-type]
    server_app.main(_NoGrid(), _context({"experiment": "e"}))  # type: ignore[arg-type]
    assert seen == [root / "mine", root / "e"]
    assert os.listdir(root) == []  # resolving writes nothing; run_experiment makes the folder
