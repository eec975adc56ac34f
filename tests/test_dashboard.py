"""The Streamlit dashboard through Streamlit's AppTest harness (no browser, no server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fedadamw.config import Config
from fedadamw.data.split import DataSpec, label_histogram
from fedadamw.results.lock import WriterLock
from fedadamw.results.writer import ResultStore
from fedadamw.viz.commands import dashboard_command
from fedadamw.viz.serve import DASHBOARD_SCRIPT, STORE_ENV, free_port, port_is_free
from fedadamw.viz.stores import is_live, store_state
from tests.test_figures import Synthetic, decode, numpy_cosines, write_synthetic_store

TIMEOUT = 60  # seconds for one script run; the first one imports torch and plotly


def open_app(store: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The dashboard run once against `store`, as `fedadamw dashboard` would start it."""
    monkeypatch.setenv(STORE_ENV, str(store))
    at = AppTest.from_file(str(DASHBOARD_SCRIPT), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict[str, Any]]:
    """The page's Plotly figures by their key, as the browser receives them."""
    out = {}
    for el in at.get("plotly_chart"):
        key = str(el.proto.id).rsplit("-", 1)[-1]
        out[key] = json.loads(el.proto.spec)
    return out


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    # Real label histograms, so the clients' updates have the structure the ordering reveals.
    return write_synthetic_store(
        tmp_path_factory.mktemp("dash"), seeds=(0, 1), num_rounds=4, real_labels=True
    )


def test_page_draws_every_view_from_the_store(
    synthetic: Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(synthetic.path.parent, monkeypatch)
    assert texts(at, "error") == [] and texts(at, "warning") == []
    figs = charts(at)
    assert set(figs) == {
        "divergence",
        "accuracy",
        "heatmap",
        "scatter",
        "labels",
        "trajectories",
        "layers",
    }
    for mode in ("coupled", "decoupled"):
        (line,) = [t for t in figs["divergence"]["data"] if t.get("name") == f"{mode} (2 seeds)"]
        ref = np.mean(
            [
                [
                    synthetic.rounds[synthetic.run_ids[(mode, s, "0")]][k]["mean_pairwise_cosine"]
                    for k in range(1, 5)
                ]
                for s in (0, 1)
            ],
            axis=0,
        )
        np.testing.assert_allclose(decode(line["y"]), ref, rtol=1e-12)
    # every run finished: nothing to re-read, but a run that starts will be noticed
    assert any("auto-refresh when a run starts" in c for c in texts(at, "caption"))


def test_round_slider_chooses_the_heatmap_round(
    synthetic: Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(synthetic.path.parent, monkeypatch)
    at.selectbox(key="seed").set_value(1).run()
    at.toggle(key="follow").set_value(False).run()
    at.slider(key="round").set_value(2).run()
    assert not at.exception
    run = synthetic.run_ids[("decoupled", 1, "0")]
    hist = label_histogram(DataSpec.from_config(Config.from_mapping(synthetic.configs[run])))
    share = hist.max(axis=1) / hist.sum(axis=1)
    order = sorted(range(len(hist)), key=lambda p: (hist[p].argmax(), -share[p], p))
    ref = numpy_cosines(synthetic.updates[(run, 2)])[np.ix_(order, order)]
    heat = [t for t in charts(at)["heatmap"]["data"] if t["type"] == "heatmap"]
    np.testing.assert_allclose(decode(heat[1]["z"]), ref, atol=1e-12)  # panel 2: decoupled


def test_layer_scope_and_statistic_drive_the_divergence_view(
    synthetic: Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(synthetic.path.parent, monkeypatch)
    at.selectbox(key="scope").set_value("linear.weight").run()
    at.selectbox(key="stat").set_value("relative_drift").run()
    assert not at.exception and texts(at, "error") == []
    (line,) = [t for t in charts(at)["divergence"]["data"] if t.get("name") == "coupled (2 seeds)"]
    ref = np.mean(
        [
            [
                synthetic.layers[synthetic.run_ids[("coupled", s, "0")]][k]["linear.weight"][
                    "relative_drift"
                ]
                for k in range(1, 5)
            ]
            for s in (0, 1)
        ],
        axis=0,
    )
    np.testing.assert_allclose(decode(line["y"]), ref, rtol=1e-12)


def test_sweep_view_and_setting_selector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = [{"learning-rate": lr, "weight-decay": wd} for lr in (0.001, 0.01) for wd in (0.0, 0.1)]
    syn = write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, experiment="sweep", grid=grid)
    at = open_app(tmp_path, monkeypatch)
    assert texts(at, "error") == []
    assert at.selectbox(key="sweep_x").value == "learning-rate"
    assert at.selectbox(key="sweep_y").value == "weight-decay"
    figs = charts(at)
    z = decode([t for t in figs["sweep"]["data"] if t["type"] == "heatmap"][1]["z"])  # decoupled
    ref = syn.rounds[syn.run_ids[("decoupled", 0, "3")]][2]["test_accuracy"]  # lr .01, wd .1
    assert z[1, 1] == pytest.approx(100 * ref, rel=1e-12)
    # every other view compares the two modes at one setting
    lines = [t for t in figs["divergence"]["data"] if t.get("mode") == "lines+markers"]
    assert [t["name"] for t in lines] == ["coupled", "decoupled"]
    setting = at.selectbox(key="setting")
    assert len(setting.options) == len(grid) + 1
    setting.select_index(len(grid)).run()  # the last choice: all settings
    lines = [t for t in charts(at)["divergence"]["data"] if t.get("mode") == "lines+markers"]
    assert len(lines) == 2 * len(grid)


def test_decay_and_data_parts_are_shown_when_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, parts=True)
    at = open_app(tmp_path, monkeypatch)
    stat = at.selectbox(key="stat")
    assert "decay part: dispersion 1 − R" in stat.options and "shrink ratio p50" in stat.options
    assert "shrink" in charts(at)  # the decay shrink ratios get their own figure
    assert "decay part: cosine to −w" in at.selectbox(key="color_by").options
    stat.set_value("dispersion").run()
    titles = [a["text"] for a in charts(at)["divergence"]["layout"]["annotations"]]
    assert titles == [
        "dispersion 1 − R",
        "data part: dispersion 1 − R",
        "decay part: dispersion 1 − R",
    ]


def _older_schema(path: Path) -> None:
    conn = sqlite3.connect(path / "results.db")
    conn.execute("CREATE TABLE runs (run_id TEXT, experiment TEXT, arm TEXT, status TEXT)")
    conn.execute("CREATE TABLE rounds (run_id TEXT, round INTEGER)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("make", "kind", "message"),
    [
        (lambda p: None, "info", "no results store at"),
        (lambda p: (p / "results.db").write_bytes(b""), "info", "has no tables yet"),
        (
            lambda p: (p / "results.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 40),
            "error",
            "half-written or damaged",
        ),
        (lambda p: ResultStore(p / "results.db").close(), "info", "holds no run yet"),
        (_older_schema, "error", "written by an older fedadamw"),
    ],
    ids=["missing", "zero-bytes", "torn", "no-runs", "older-schema"],
)
def test_unusable_stores_give_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any, kind: str, message: str
) -> None:
    make(tmp_path)
    at = open_app(tmp_path, monkeypatch)
    shown = texts(at, kind)
    assert len(shown) == 1 and message in shown[0], shown
    assert charts(at) == {}


def test_half_written_run_shows_what_exists_and_refreshes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=0, finish=False)
    with WriterLock(tmp_path):  # a live process writes the folder: its run is running
        at = open_app(tmp_path, monkeypatch)
    assert texts(at, "error") == []
    # a run is writing: follow it
    assert any("auto-refresh every 5 s while a run is live" in c for c in texts(at, "caption"))
    info = " ".join(texts(at, "info"))
    assert "No trained round" in info and "No evaluated round" not in info
    assert set(charts(at)) == {"accuracy"}  # round 0's evaluation is all there is


def test_unknown_config_falls_back_to_partition_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2)
    conn = sqlite3.connect(tmp_path / "results.db")
    # a store without label counts (older than schema 4) from a fedadamw whose config has a
    # key this version does not know: the split cannot be rebuilt either
    conn.execute("DELETE FROM labels")
    conn.execute("UPDATE runs SET config_json = json_set(config_json, '$.future-key', 1)")
    conn.commit()
    conn.close()
    at = open_app(tmp_path, monkeypatch)
    assert texts(at, "error") == []
    assert any("partition order" in c for c in texts(at, "caption"))
    heat = [t for t in charts(at)["heatmap"]["data"] if t["type"] == "heatmap"]
    assert list(heat[0]["x"]) == [str(p) for p in range(8)]


def test_dashboard_command_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    assert dashboard_command(tmp_path / "a-file" / "out", 8501) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert dashboard_command(tmp_path, 70000) == 2
    assert "--port: 70000 is not allowed" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert dashboard_command(tmp_path, port) == 2
    err = capsys.readouterr().err
    assert f"--port: {port} is in use" in err and err.count("\n") == 1


def test_dashboard_command_serves_until_interrupted(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=1, num_clients=3)
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; "
        "from fedadamw.viz.commands import dashboard_command; "
        f"sys.exit(dashboard_command(Path({str(tmp_path)!r}), {port}))",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert f"http://127.0.0.1:{port}" in (proc.stdout.readline() if proc.stdout else "")
        deadline = time.monotonic() + 40
        while not _answers(port):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.25)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(30) == 0
        assert not _answers(port)  # the Streamlit server went with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
            return True
    except OSError:
        return False


def test_client_trajectories_follow_each_clients_update(
    synthetic: Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app(synthetic.path.parent, monkeypatch)
    (picker,) = [m for m in at.multiselect if m.label == "Clients"]
    picker.set_value([3, 7]).run()
    fig = charts(at)["trajectories"]
    run = synthetic.run_ids[("decoupled", 0, "0")]
    for pid in (3, 7):
        (norms,) = [
            t
            for t in fig["data"]
            if t["name"] == f"client {pid}" and t["xaxis"] == "x4"  # row 2: decoupled, norms
        ]
        ref = [np.linalg.norm(synthetic.updates[(run, k)][pid]) for k in range(1, 5)]
        np.testing.assert_allclose(decode(norms["y"]), ref, rtol=1e-12)
    assert {t["name"] for t in fig["data"]} == {"client 3", "client 7"}


def test_rejections_are_listed_with_their_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syn = write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, num_clients=3)
    conn = sqlite3.connect(syn.path)
    run = syn.run_ids[("decoupled", 0, "0")]
    conn.execute("INSERT INTO rejections VALUES (?, 1, 2, NULL, 'non-finite update (NaN)')", (run,))
    conn.commit()
    conn.close()
    at = open_app(tmp_path, monkeypatch)
    (table,) = [d.value for d in at.dataframe if "reason" in d.value.columns]
    assert table.to_dict("records") == [
        {
            "run": "decoupled · seed 0",
            "round": 1,
            "client": 2,
            "node": None,
            "reason": "non-finite update (NaN)",
        }
    ]


def test_two_stores_are_overlaid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synthetic_store(tmp_path / "a", seeds=(0,), num_rounds=2, num_clients=3)
    write_synthetic_store(tmp_path / "b", seeds=(1,), num_rounds=2, num_clients=3)
    monkeypatch.setenv(STORE_ENV, f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    at = AppTest.from_file(str(DASHBOARD_SCRIPT), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and texts(at, "error") == []
    (runs,) = [d.value for d in at.dataframe if "run id" in d.value.columns]
    assert sorted(runs["store"]) == ["a", "a", "b", "b"]
    names = {t.get("name") for t in charts(at)["divergence"]["data"]}
    assert {"coupled (2 seeds)", "decoupled (2 seeds)"} <= names  # one condition per mode


def test_the_page_recovers_when_the_store_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "later"
    out.mkdir()
    at = open_app(out, monkeypatch)
    assert any("no results store at" in t for t in texts(at, "info")) and charts(at) == {}
    write_synthetic_store(out, seeds=(0,), num_rounds=2, num_clients=3)
    at.run()  # what the watcher's rerun does in the browser
    assert "divergence" in charts(at)


def test_store_state_sees_a_store_appear_and_a_run_start_and_end(tmp_path: Path) -> None:
    paths = [str(tmp_path)]
    assert store_state(paths) == ((False, False, False),)
    ResultStore(tmp_path / "results.db").close()
    assert store_state(paths) == ((False, False, True),)  # a store, no run yet
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=1, num_clients=3)
    finished = store_state(paths)
    assert finished == ((True, False, True),) and not is_live(finished)
    with WriterLock(tmp_path):  # a new run starts in the finished store
        assert is_live(store_state(paths))
    assert store_state(paths) == finished  # and ends


def test_dashboard_command_stops_its_server_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; "
        "from fedadamw.viz.commands import dashboard_command; "
        f"sys.exit(dashboard_command([Path({str(tmp_path)!r})], {port}))",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}" in line and "waiting for the run" in line
        deadline = time.monotonic() + 40
        while not _answers(port):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.25)
        proc.send_signal(signal.SIGTERM)  # what `kill`, systemd and docker stop send
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while _answers(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _answers(port)  # the Streamlit child went with it
        assert port_is_free(port)  # and the next start on this port is not refused
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_broken_store_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torn = b"SQLite format 3\x00" + b"\x00" * 40
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.db").write_bytes(torn)
    (tmp_path / "three").mkdir()
    _older_schema(tmp_path / "three")
    outs = [tmp_path / n for n in ("one", "two", "three")]
    monkeypatch.setenv(STORE_ENV, os.pathsep.join(str(p) for p in outs))
    at = AppTest.from_file(str(DASHBOARD_SCRIPT), default_timeout=TIMEOUT)
    at.run()
    (shown,) = texts(at, "error")
    assert "none of the 3 stores can be shown" in shown
    for out in outs:
        assert str(out / "results.db") in shown
    assert shown.count("half-written or damaged") == 2 and "written by an older fedadamw" in shown


def test_dashboard_command_waits_for_a_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "later"
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; "
        "from fedadamw.viz.commands import dashboard_command; "
        f"sys.exit(dashboard_command(Path({str(out)!r}), {port}))",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}" in line and "waiting for the run to create it" in line
        assert proc.poll() is None and not out.exists()  # serving, and it made nothing
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_page_opens_on_a_setting_with_decay_and_says_why_lambda_zero_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = [{"weight-decay": wd} for wd in (0.0, 0.01, 0.1)]
    write_synthetic_store(
        tmp_path, seeds=(0, 1), num_rounds=2, experiment="align", grid=grid, parts=True
    )
    at = open_app(tmp_path, monkeypatch)
    setting = at.selectbox(key="setting")
    # not λ = 0, where coupled and decoupled are the same optimizer: the largest λ (equal rounds)
    assert "weight-decay=0.1" in setting.format_func(setting.value)
    assert not any("λ = 0" in t for t in [*texts(at, "info"), *texts(at, "caption")])
    zero = list(setting.options).index("weight-decay=0")  # the options as the page shows them
    setting.select_index(zero).run()
    assert any("λ = 0 in this setting" in t for t in texts(at, "info"))
    assert any("decay-part panel stays empty" in t for t in texts(at, "caption"))
