"""Fault injection on real `fedadamw run` processes: signals, kills, dead workers, two writers.

Every test starts the CLI as a subprocess on a small federation (3 clients, 6 rounds, one local
epoch) and compares the store it leaves with an uninterrupted run of the same command, row by
row (timings aside). Measured numbers are printed (`pytest -s`): docs/usage.md's fault table
comes from them.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedadamw.results.summaries import arm_summary

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 6
ARGS = [
    "--set",
    "num-clients=3",
    "--set",
    f"num-server-rounds={ROUNDS}",
    "--set",
    "local-epochs=1",
    "--set",
    "experiment=faults",
]
STOP_LIMIT_S = 10.0  # the bound on every stop and every cleanup
TIMING_COLUMNS = {"seconds", "train_seconds"}


@dataclass
class Cli:
    """A running `fedadamw run` and the files its output goes to."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


def _start(out: Path, *extra: str, new_session: bool = False) -> Cli:
    """Start `fedadamw run`; its output goes to files beside `out` (no pipe: a pipe would stay
    open while any Ray process that inherited it lives, hiding how long cleanup takes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(list(out.parent.glob(f"{out.name}.*.stdout")))
    paths = (out.parent / f"{out.name}.{n}.stdout", out.parent / f"{out.name}.{n}.stderr")
    with paths[0].open("wb") as stdout, paths[1].open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedadamw.cli", "run", "--out", str(out), *ARGS, *extra],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            start_new_session=new_session,
        )
    return Cli(proc, *paths)


def _finish(cli: Cli, timeout: float = 300) -> tuple[int, str, str]:
    code = cli.proc.wait(timeout=timeout)
    return code, cli.stdout.read_text(), cli.stderr.read_text()


def _wait_for_round(out: Path, arm: str, rnd: int, timeout: float = 180) -> None:
    """Block until `arm` has stored round `rnd` (read from the store, as a user would)."""
    deadline = time.monotonic() + timeout
    db = out / "results.db"
    while time.monotonic() < deadline:
        if db.exists():
            try:
                conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
                row = conn.execute(
                    "SELECT MAX(round) FROM rounds JOIN runs USING (run_id) WHERE arm=?", (arm,)
                ).fetchone()
                conn.close()
                if row[0] is not None and row[0] >= rnd:
                    return
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    pytest.fail(f"{arm} never reached round {rnd}")


def _simulation_pgid(out: Path) -> int:
    """The simulation child's process group (its pid): Ray's processes are in it."""
    spec = str(out / ".fedadamw-spec.json")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fedadamw.launch.simulate" in cmd and spec.encode() in cmd:
                return int(entry.name)
    pytest.fail("no simulation process found")


def _live_members(pgid: int) -> list[str]:
    """Processes of group `pgid` that are not zombies, as 'pid name'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name_end = stat.rindex(")")
        fields = stat[name_end + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            found.append(f"{entry.name} {stat[stat.index('(') + 1 : name_end]}")
    return found


def _gone_within(pgid: int, limit: float) -> float:
    """Seconds until group `pgid` has no live process (fails past `limit`)."""
    started = time.monotonic()
    while _live_members(pgid):
        if time.monotonic() - started > limit:
            pytest.fail(f"still alive after {limit} s: {_live_members(pgid)}")
        time.sleep(0.1)
    return time.monotonic() - started


def _rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    tables = {}
    for table in ("rounds", "clients", "layers", "pairs", "rejections"):
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        keep = [c for c in cols if c not in TIMING_COLUMNS]
        rows = conn.execute(f"SELECT {', '.join(keep)} FROM {table}").fetchall()
        tables[table] = sorted(rows, key=repr)
    conn.close()
    return tables


def _statuses(out: Path) -> dict[str, str]:
    return {r["arm"]: r["status"] for r in arm_summary(out / "results.db")}


def _ray_dirs_of(pid: int) -> list[Path]:
    """Ray session folders that the `fedadamw run` with this pid created (and must remove)."""
    found = []
    for path in Path(tempfile.gettempdir()).glob("fedadamw-ray-*"):
        try:
            if (path / "owner.pid").read_text().strip() == str(pid):
                found.append(path)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every faulty one is compared with."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    cli = _start(out)
    code, _, stderr = _finish(cli)
    assert code == 0, stderr[-3000:]
    assert _statuses(out) == {"coupled": "finished", "decoupled": "finished"}
    assert _ray_dirs_of(cli.proc.pid) == []
    return out


@pytest.mark.parametrize(
    ("sig", "code", "group"),
    [(signal.SIGINT, 130, False), (signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
    ids=["sigint", "sigint-to-group", "sigterm"],
)
def test_a_signal_stops_the_run_marks_it_and_leaves_nothing(
    tmp_path: Path,
    reference: Path,
    sig: signal.Signals,
    code: int,
    group: bool,
) -> None:
    out = tmp_path / "out"
    proc = _start(out, new_session=group)
    _wait_for_round(out, "coupled", 2)
    pgid = _simulation_pgid(out)
    sent = time.monotonic()
    if group:
        os.killpg(proc.proc.pid, sig)  # a terminal's Ctrl-C goes to the whole foreground group
    else:
        proc.proc.send_signal(sig)
    returned, _, stderr = _finish(proc, timeout=60)
    took = time.monotonic() - sent
    assert returned == code, stderr[-3000:]
    assert took < STOP_LIMIT_S
    cleanup = _gone_within(pgid, STOP_LIMIT_S) + took
    assert _ray_dirs_of(proc.proc.pid) == []  # Ray's session files went with it
    statuses = _statuses(out)
    assert statuses["coupled"] == "interrupted"
    assert statuses["decoupled"] == "pending"
    assert "Traceback" not in stderr
    print(f"\n[fault] {signal.Signals(sig).name} group={group}: exit {returned} in {took:.1f} s")
    # Every round the run stored is exactly the reference's round.
    got, want = _rows(out / "results.db"), _rows(reference / "results.db")
    for table, rows in got.items():
        assert set(rows) <= set(want[table]), table
    print(
        f"[fault]   Ray group gone {cleanup:.1f} s after the signal; rounds: {len(got['rounds'])}"
    )


def test_sigkill_then_resume_gives_the_uninterrupted_store(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    proc = _start(out)
    _wait_for_round(out, "coupled", 3)
    pgid = _simulation_pgid(out)
    proc.proc.kill()
    killed = time.monotonic()
    proc.proc.wait()
    cleanup = _gone_within(pgid, STOP_LIMIT_S) + (time.monotonic() - killed)
    # The CLI died without a word: its simulation process removed Ray's files itself.
    deadline = time.monotonic() + STOP_LIMIT_S
    while _ray_dirs_of(proc.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ray_dirs_of(proc.proc.pid) == []
    assert _statuses(out)["coupled"] == "interrupted"  # no live writer: not 'running'
    kept = len(_rows(out / "results.db")["rounds"])
    code, stdout, stderr = _finish(_start(out))  # the same command again
    assert code == 0, stderr[-3000:]
    assert "coupled: resuming after round" in stdout
    assert _rows(out / "results.db") == _rows(reference / "results.db")
    assert _statuses(out) == {"coupled": "finished", "decoupled": "finished"}
    print(f"\n[fault] SIGKILL of the CLI: Ray group gone {cleanup:.1f} s later; {kept} rounds kept")
    # A finished experiment re-run skips every arm and changes nothing.
    code, stdout, _ = _finish(_start(out))
    assert code == 0 and stdout.count("skipped") == 2
    assert _rows(out / "results.db") == _rows(reference / "results.db")


def test_restart_starts_over(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    proc = _start(out)
    _wait_for_round(out, "coupled", 2)
    proc.proc.send_signal(signal.SIGINT)
    _finish(proc, timeout=60)
    code, stdout, stderr = _finish(_start(out, "--restart"))
    assert code == 0, stderr[-3000:]
    assert "resuming" not in stdout
    assert _rows(out / "results.db") == _rows(reference / "results.db")


def test_a_killed_client_actor_is_restarted_and_the_store_is_complete(
    tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    proc = _start(out)
    _wait_for_round(out, "coupled", 2)
    pgid = _simulation_pgid(out)
    actors = [m for m in _live_members(pgid) if "ClientAppActor" in m or "ray::Client" in m]
    assert actors, _live_members(pgid)
    os.kill(int(actors[0].split()[0]), signal.SIGKILL)
    code, _, stderr = _finish(proc)
    assert code == 0, stderr[-3000:]
    assert _ray_dirs_of(proc.proc.pid) == []
    assert "a Ray worker died" in stderr and "restarting Ray" in stderr
    assert _rows(out / "results.db") == _rows(reference / "results.db")  # no client missing
    assert _statuses(out) == {"coupled": "finished", "decoupled": "finished"}
    print("\n[fault] killed ClientAppActor: Ray restarted, the store equals the reference")


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _start(out)
    try:
        _wait_for_round(out, "coupled", 1)
        second = _start(out)
        code, _, stderr = _finish(second, timeout=60)
        assert code == 2
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.proc.pid}" in lines[0], stderr
        assert first.proc.poll() is None  # the first run goes on, its statuses untouched
        assert _statuses(out)["coupled"] in ("running", "finished")
    finally:
        first.proc.send_signal(signal.SIGINT)
        _finish(first, timeout=60)


def test_a_killed_simulation_child_is_explained(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli = _start(out, "--set", "engine=vmap", "--set", "num-server-rounds=200")
    _wait_for_round(out, "coupled", 1)
    os.kill(_simulation_pgid(out), signal.SIGKILL)  # as the out-of-memory killer would
    code, _, stderr = _finish(cli)
    assert code == 1
    assert stderr.strip().splitlines()[-1] == (
        "fedadamw: error: the simulation process was killed by SIGKILL (often the kernel's "
        "out-of-memory killer); finished rounds are stored: run the same command to resume"
    )
    assert arm_summary(out / "results.db")  # the rounds it stored are there


def test_a_closed_stdout_pipe_does_not_fail_the_arms(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = " ".join(
        [
            sys.executable,
            "-m",
            "fedadamw.cli",
            "run",
            "--out",
            str(out),
            *ARGS,
            "--set",
            "engine=vmap",
        ]
    )
    # `head -n 1` reads the header line and exits: every later line meets a closed pipe.
    proc = subprocess.run(
        ["bash", "-c", f"{command} | head -n 1; exit ${{PIPESTATUS[0]}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("fedadamw faults:") and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    summary = arm_summary(out / "results.db")
    assert {r["status"] for r in summary} == {"finished"}
    assert {r["rounds"] for r in summary} == {ROUNDS}
