"""The probe view end to end: a tiny run with every round kept, `fedadamw probe` on it, then
the HTML report's probe section and the dashboard's probe figure hold the stored values.

The store comes from tests/test_probe.py's `runs` fixture (two seeds, two rounds, checkpoints
every round); the reference is a numpy mean of the rows `Store.probes` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pypdf
import pytest

from fedadamw.cli import main
from fedadamw.results.reader import Store
from fedadamw.viz import views
from fedadamw.viz.commands import figures_command
from fedadamw.viz.html_report import write_report
from fedadamw.viz.stores import Stores
from tests import needs
from tests.test_dashboard import charts, open_app, texts
from tests.test_figures import decode, spec, write_synthetic_store
from tests.test_probe import GRID, _copy, runs  # noqa: F401 - `runs` is a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def probed(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = _copy(runs, tmp_path_factory.mktemp("probed-view"))
    assert main(["probe", str(out), *GRID]) == 0
    return out


def reference(out: Path, stat: str) -> dict[tuple[str, int, float], float]:
    """numpy float64 mean over the runs of each (mode, round, λ), from the stored rows."""
    rows = Store(out).probes()
    return {
        (str(m), int(r), float(w)): float(np.mean(g[stat].to_numpy(np.float64)))
        for (m, r, w), g in rows.groupby(["mode", "round", "weight_decay"])
    }


def drawn(fig: dict[str, Any]) -> dict[tuple[str, int, float], float]:
    """(mode, round, λ) → plotted mean, λ = 0 read from its own markers."""
    out = {}
    for t in fig["data"]:
        kind = (t.get("meta") or {}).get("probe")
        if kind not in ("lambda", "zero"):
            continue
        mode, rnd = str(t["name"]).split(" · round ")
        xs = [0.0] * len(decode(t["y"])) if kind == "zero" else decode(t["x"])
        for x, y in zip(xs, decode(t["y"]), strict=True):
            out[(mode, int(rnd), float(x))] = float(y)
    return out


def test_the_probe_figure_draws_the_stored_means(probed: Path) -> None:
    store = Stores([probed])
    assert views.probe_stats(store)[0] == "mean_pairwise_cosine"
    fig = views.probe_figure(store, store.runs(), "mean_pairwise_cosine")
    assert fig is not None
    ref = reference(probed, "mean_pairwise_cosine")
    got = drawn(spec(fig))
    assert set(got) == set(ref)  # every (mode, round, λ), λ = 0 included
    np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-12)


def test_the_report_has_a_probe_section_with_the_stored_values(
    probed: Path, tmp_path: Path
) -> None:
    html = write_report([probed], tmp_path / "report.html").read_text()
    assert "<h3 class='group'>Probes</h3>" in html
    assert "Probe: mean pairwise cosine against λ" in html
    assert "no probes in experiment" not in html
    sections = views.standard_sections(Stores([probed]))
    items = {i.name: i for s in sections for i in s.items}
    ref = reference(probed, "decay_share")
    fig = spec(items["probe-probe-decay_share"].figure)
    got = drawn(fig)
    finite = {k: v for k, v in ref.items() if np.isfinite(v)}
    np.testing.assert_allclose([got[k] for k in finite], list(finite.values()), rtol=1e-12)


def test_a_store_without_probes_says_how_to_get_them(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2)
    html = write_report([tmp_path], tmp_path / "report.html").read_text()
    assert "no probes in experiment default: run `fedadamw probe DIR`" in html
    assert "Probe:" not in html


def test_the_dashboard_shows_the_probe_figure_or_says_there_is_none(
    probed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(probed, monkeypatch)
    assert texts(at, "error") == []
    ref = reference(probed, "mean_pairwise_cosine")
    got = drawn(charts(at)["probe"])
    np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-12)
    at.selectbox(key="probe_stat").set_value("aggregate_loss_change").run()
    ref = reference(probed, "aggregate_loss_change")
    got = drawn(charts(at)["probe"])
    np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-12)
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2)
    at = open_app(tmp_path, monkeypatch)
    assert "probe" not in charts(at) and texts(at, "error") == []
    assert any("no probes in this store: run `fedadamw probe DIR`" in t for t in texts(at, "info"))


def test_figures_writes_the_probe_figures_as_png_and_pdf(probed: Path, tmp_path: Path) -> None:
    needs.kaleido()
    assert figures_command(probed, tmp_path / "figs") == 0
    stems = [f"probe-probe-{s}" for s in views.REPORT_PROBE_STATS]
    for stem in stems:
        assert (tmp_path / "figs" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pdf = pypdf.PdfReader(tmp_path / "figs" / f"{stem}.pdf")
        assert pdf.metadata is not None and str(pdf.metadata.title).startswith("Probe: ")
