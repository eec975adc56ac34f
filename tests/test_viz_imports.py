"""The read side stays light: the viz layer and the report start without torch or Flower.

Each check runs in a fresh interpreter (this one has torch loaded already) with an import hook
that records which fedadamw file first imported a watched package, so a failure names the line
to fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedadamw.viz.serve import DASHBOARD_SCRIPT, STORE_ENV
from tests.test_figures import write_synthetic_store

WATCHED = ("torch", "flwr")
# Prepended to every probe: records, per watched package, the fedadamw line that imported it.
WATCH = """
import importlib.abc, json, os, sys, traceback
import fedadamw
PKG = os.path.dirname(fedadamw.__file__) + os.sep
FIRST = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in WATCHED and top not in FIRST:
            ours = [f for f in traceback.extract_stack() if f.filename.startswith(PKG)]
            FIRST[top] = f"{ours[-1].filename[len(PKG):]}:{ours[-1].lineno}" if ours else "?"
        return None
sys.meta_path.insert(0, Watch())
"""
REPORT = "print(json.dumps(FIRST))"


def probe(code: str, tmp_path: Path) -> dict[str, str]:
    """Run `code` in a fresh interpreter; which watched packages it imported, and from where."""
    done = subprocess.run(
        [sys.executable, "-c", f"WATCHED = {WATCHED!r}\n{WATCH}{code}\n{REPORT}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_viz_modules_and_the_dashboard_page_import_neither(tmp_path: Path) -> None:
    code = f"""
import fedadamw.viz.commands, fedadamw.viz.export, fedadamw.viz.figures, fedadamw.viz.html_report
import fedadamw.viz.labels, fedadamw.viz.serve, fedadamw.viz.style, fedadamw.viz.views
import fedadamw.viz.stores, fedadamw.results.export
from streamlit.testing.v1 import AppTest
os.environ[{STORE_ENV!r}] = {str(tmp_path / "no-store-yet")!r}
at = AppTest.from_file({str(DASHBOARD_SCRIPT)!r}, default_timeout=120)
at.run()  # every import of the page, then its "no results store" message
assert not at.exception, [e.value for e in at.exception]
assert any("no results store" in str(e.value) for e in at.info), [e.value for e in at.info]
"""
    assert probe(code, tmp_path) == {}


@pytest.fixture(scope="module")
def report_imports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What `report_command` imports on a synthetic store, label histograms included."""
    tmp_path = tmp_path_factory.mktemp("report")
    syn = write_synthetic_store(tmp_path / "run", seeds=(0,), num_rounds=2, num_clients=4)
    html = tmp_path / "report.html"
    code = f"""
from pathlib import Path
from fedadamw.viz.commands import report_command
assert report_command(Path({str(syn.path.parent)!r}), Path({str(html)!r})) == 0
"""
    found = probe(code, tmp_path)
    assert "Label distribution" in html.read_text(encoding="utf-8")  # from the stored counts
    return found


def test_report_does_not_import_flower(report_imports: dict[str, str]) -> None:
    assert "flwr" not in report_imports, report_imports


def test_report_does_not_import_torch(report_imports: dict[str, str]) -> None:
    assert "torch" not in report_imports, report_imports
