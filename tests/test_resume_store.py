"""Resume, restart and liveness in the results store: checkpoints, statuses, the writer lock."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedadamw.results.lock import FolderInUseError, WriterLock, writer_alive
from fedadamw.results.reader import connect_readonly
from fedadamw.results.summaries import arm_summary
from fedadamw.results.writer import (
    SCHEMA,
    ResultStore,
    RoundRecord,
    RunInfo,
    StoreError,
    pack_state,
    unpack_state,
)

RUN = "e:decoupled:1"


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((4, 1, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "bn.num_batches_tracked": np.asarray(7, dtype=np.int64),
    }


def _write(store: ResultStore, rnd: int, checkpoint: bool = True) -> None:
    store.write_round(
        RoundRecord(
            RUN,
            rnd,
            {"test_accuracy": rnd / 10},
            clients=[{"partition_id": 0, "num_examples": 5}],
            pairs=[(0, 1, 0.5)],
            checkpoint=_state(rnd) if checkpoint and rnd >= 1 else None,
        )
    )


def _rounds(path: Path) -> list[int]:
    conn = connect_readonly(path)
    try:
        return [r[0] for r in conn.execute("SELECT round FROM rounds ORDER BY round")]
    finally:
        conn.close()


def test_checkpoint_round_trip_is_bit_exact() -> None:
    state = _state(3) | {"x": np.array([np.nextafter(np.float32(1), np.float32(2))])}
    back = unpack_state(pack_state(state))
    assert list(back) == list(state)  # order kept: ArrayRecords are built in this order
    for key, value in state.items():
        assert back[key].dtype == value.dtype
        assert back[key].tobytes() == value.tobytes()


def test_resume_continues_after_the_last_checkpoint_and_drops_later_rows(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        assert store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}").round == 0
        for rnd in range(4):
            _write(store, rnd)
        _write(store, 4, checkpoint=False)  # a round written by a version without checkpoints
        resume = store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}")
    assert resume.round == 3
    assert resume.state is not None
    for key, value in _state(3).items():
        assert resume.state[key].tobytes() == value.tobytes()
    assert _rounds(path) == [0, 1, 2, 3]  # round 4 (after the checkpoint) is gone
    conn = connect_readonly(path)
    assert conn.execute("SELECT COUNT(*) FROM pairs WHERE round > 3").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 1  # only the last
    conn.close()


def test_restart_deletes_every_row_of_the_run(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}")
        for rnd in range(3):
            _write(store, rnd)
        resume = store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}", restart=True)
    assert resume.round == 0 and resume.state is None
    assert _rounds(path) == []


def test_a_run_without_checkpoint_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}")
        _write(store, 0)  # the initial evaluation only: nothing to resume from
        assert store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}").round == 0
    assert _rounds(path) == []


def test_statuses_pending_running_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    infos = [RunInfo(f"e:{m}:1", "e", m, m, 0.01, "{}") for m in ("coupled", "decoupled")]
    with ResultStore(path) as store:
        store.register(infos)
        store.register(infos)  # idempotent
        assert store.status("e:coupled:1") == "pending"
        store.start_run("e:coupled:1", "e", "coupled", "coupled", 0.01, "{}")
        assert store.status("e:coupled:1") == "running"
        assert store.mark_interrupted() == 1
        assert store.status("e:coupled:1") == "interrupted"
        assert store.status("e:decoupled:1") == "pending"  # never started: stays pending


def test_a_running_run_without_a_live_writer_reads_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with WriterLock(tmp_path) as lock, ResultStore(path) as store:
        store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}")
        assert writer_alive(tmp_path)
        assert [r["status"] for r in arm_summary(path)] == ["running"]
        assert lock.fd >= 0
    assert not writer_alive(tmp_path)  # released: the stored 'running' is a dead run
    assert [r["status"] for r in arm_summary(path)] == ["interrupted"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fedadamw.results.lock import WriterLock; "
            f"l = WriterLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}") as info:
            WriterLock(tmp_path, wait_s=0.2)
        assert "\n" not in str(info.value)
        assert writer_alive(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not writer_alive(tmp_path)  # the kernel dropped the dead holder's lock
    WriterLock(tmp_path).release()


def test_a_file_that_is_not_sqlite_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(os.urandom(4096))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="is not a fedadamw results store") as info:
        ResultStore(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before  # left untouched


def test_a_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"holds schema 99.*upgrade fedadamw"):
        ResultStore(path)


@pytest.mark.parametrize("name", ["a#b", "q?mode=rw", "100%", "with space", "x#y?z%20"])
def test_read_only_uri_survives_odd_characters(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    with ResultStore(folder / "results.db") as store:
        store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}")
    conn = connect_readonly(folder / "results.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM runs")  # mode=ro survived the escaping
    finally:
        conn.close()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("results.db")) == []


# The reader, in a process that imports everything first and only then gives up its rights,
# so whether `nobody` could reach the checkout or its venv (a 0700 home above it) never
# matters: only the store's own folder must be reachable, and `_open_to_all` makes one.
_READ_AS_NOBODY = """
import os, sys
from fedadamw.results.summaries import arm_summary
arm_summary(sys.argv[1])  # a writable copy: every lazy import happens now
if os.geteuid() == 0:  # root ignores file modes: become nobody, as a reader without rights
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
assert not os.access(sys.argv[2], os.W_OK), "the folder must be read-only to this process"
print([(r["status"], r["rounds"]) for r in arm_summary(os.path.join(sys.argv[2], "results.db"))])
"""


@pytest.fixture
def open_to_all() -> Iterator[Path]:
    """A folder of ours that every user can enter: under the first temp root whose every
    ancestor lets others through (pytest's tmp_path, TMPDIR, a home may be private)."""
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        chain = [Path(base).resolve(), *Path(base).resolve().parents]
        if all(p.is_dir() and p.stat().st_mode & stat.S_IXOTH for p in chain):
            break
    else:
        pytest.fail("no temp folder that other users can enter (/tmp, /var/tmp, /dev/shm)")
    path = Path(tempfile.mkdtemp(prefix="fedadamw-ro-", dir=base))
    path.chmod(0o755)
    yield path
    for sub in [path, *path.rglob("*")]:
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def test_a_store_in_a_read_only_folder_is_readable(open_to_all: Path, tmp_path: Path) -> None:
    folder = open_to_all / "run"
    with ResultStore(folder / "results.db") as store:
        store.start_run(RUN, "e", "decoupled", "decoupled", 0.01, "{}")
        _write(store, 1)
        store.finish_run(RUN)
    warm = tmp_path / "warm"
    shutil.copytree(folder, warm)
    for p in folder.iterdir():
        p.chmod(0o644)
    folder.chmod(0o555)
    proc = subprocess.run(
        [sys.executable, "-c", _READ_AS_NOBODY, str(warm / "results.db"), str(folder)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[('finished', 1)]"
    assert sorted(p.name for p in folder.iterdir()) == ["results.db"]  # nothing written


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("create table runs(a,b); insert into runs values(1,2);", "no meta table"),
        ("create table foo(x);", "no meta table"),
        (
            "create table meta(key text primary key, value text not null);"
            "insert into meta values('schema_version','6'); create table foo(x);",
            "table 'foo'",
        ),
        (
            "create table meta(key text primary key, value text not null);"
            "insert into meta values('schema_version','6'); create table runs(a, b);",
            "table 'runs': no arm",
        ),
        (
            "create table meta(key text primary key, value text not null);"
            "insert into meta values('schema_version','six');",
            "schema version 'six'",
        ),
        ("create table meta(k, v);", "a meta table of other columns"),
    ],
)
def test_a_store_fedadamw_did_not_create_is_refused_and_left_byte_identical(
    tmp_path: Path, sql: str, needle: str
) -> None:
    path = tmp_path / "results.db"
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="is not a fedadamw results store") as info:
        ResultStore(path)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]  # no -wal, no -shm


def test_a_store_of_an_older_schema_without_the_added_columns_is_still_ours(
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '5')")
    conn.execute("ALTER TABLE checkpoints DROP COLUMN server_state")  # added in schema 6
    conn.commit()
    conn.close()
    ResultStore(path).close()  # upgraded in place
    conn = sqlite3.connect(path)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(checkpoints)")}
    conn.close()
    assert "server_state" in columns
