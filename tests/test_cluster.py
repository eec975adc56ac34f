"""A sweep on an existing Ray cluster: `ray start --head`, a 2-cell grid (both engines), stop.

The cluster is started here on 127.0.0.1 with a temporary folder and an auth token of its own,
and stopped by the pid of its `ray start --block` process (whose group holds every process of
the cluster). The grid sweeps the engine itself, so its two cells are the same experiment run
by Flower's engine (clients as Ray actors of the cluster) and by the vmap engine: their stored
rounds must agree, as in tests/test_cohort_grid.py, but here through Ray and the real apps.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedadamw.viz.serve import free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
ROUNDS = 5


def _processes_under(folder: str) -> list[int]:
    """Live processes whose command line names `folder` (the cluster's temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if folder.encode() in cmd and state != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster of 2 CPUs: its address and the environment that may use it."""
    temp = tempfile.mkdtemp(prefix="fr-")  # short: Ray's socket paths are limited to 107 bytes
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the cluster's processes form the group of this pid
    )
    try:
        assert head.stdout is not None
        deadline = time.monotonic() + 180
        seen = []
        for line in head.stdout:
            seen.append(line)
            if "Ray runtime started" in line:
                break
            assert time.monotonic() < deadline, "".join(seen[-20:])
        else:
            pytest.fail("ray start ended: " + "".join(seen[-20:]))
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _processes_under(temp) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _processes_under(temp)
        for pid in left:  # not ours to leave behind; the assertion below reports them
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"cluster processes outlived the stop: {left}"


def test_a_sweep_runs_each_grid_point_as_a_ray_task_with_its_engine(
    cluster: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, env = cluster
    experiment = tmp_path / "grid.toml"
    experiment.write_text(
        'experiment = "cluster"\n'
        "num-clients = 4\n"
        f"num-server-rounds = {ROUNDS}\n"
        "local-epochs = 1\n"
        # At lr 1e-3 the engines agree to ~1e-6 over rounds; at 1e-2 Adam amplifies rounding
        # noise to ~1e-3 (docs/methods.md, Engines), enough to flip a test example's prediction.
        "learning-rate = 0.001\n"
        'arms = "decoupled"\n'
        "track-decay = true\n"
        "[sweep]\n"
        'engine = ["flower", "vmap"]\n'
    )
    out = tmp_path / "out"
    # A private temporary folder: other jobs on a shared machine make and remove their own.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedadamw.cli",
            "run",
            "--config",
            str(experiment),
            "--out",
            str(out),
            "--ray-address",
            address,
        ],
        cwd=tmp_path,
        env={**env, "TMPDIR": str(private_tmp)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Each cell said where it ran; this run made no Ray of its own.
    assert proc.stdout.count("finished on node") == 2, proc.stdout[-3000:]
    assert not list(private_tmp.glob("fedadamw-ray-*"))
    conn = sqlite3.connect(out / "results.db")
    conn.row_factory = sqlite3.Row
    runs = conn.execute("SELECT run_id, status, config_json FROM runs").fetchall()
    assert [r["status"] for r in runs] == ["finished", "finished"]
    engine = {r["run_id"]: ('"engine": "vmap"' in r["config_json"]) for r in runs}
    rows: dict[bool, list[sqlite3.Row]] = {True: [], False: []}
    for row in conn.execute("SELECT * FROM rounds ORDER BY run_id, round"):
        rows[engine[row["run_id"]]].append(row)
    counts = {
        table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("clients", "pairs", "layers", "checkpoints", "labels")
    }
    conn.close()
    assert counts["clients"] == 2 * ROUNDS * 4 and counts["pairs"] == 2 * ROUNDS * 6
    assert counts["checkpoints"] == 2 and counts["labels"] > 0
    vmap, flower = rows[True], rows[False]
    assert len(vmap) == len(flower) == ROUNDS + 1
    for a, b in zip(vmap, flower, strict=True):
        for key in ("test_loss", "test_accuracy", "mean_pairwise_cosine", "dispersion"):
            if b[key] is None:  # round 0 (the initial model) has no update to measure
                assert a[key] is None and a["round"] == 0
                continue
            if a["round"] > 1:
                # Later rounds carry Adam's amplified rounding noise (~1e-2 in a cosine
                # by round 5 with 4 clients; docs/methods.md, Engines): tests/test_cohort_grid.py
                # bounds the engines' stored rounds in-process, where noise is controlled.
                continue
            # Round 1: the same job on both engines (a flipped test example is 1/1000).
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=2e-3), (a["round"], key)
