"""The CLI's bad-input contract: exit status 2, one line on stderr, no traceback, no Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedadamw.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--set", "weight-decay=-1"], "weight-decay: -1.0 is not allowed"),
        (["run", "--set", "arms=coupled,sgdw"], "arms: unknown mode 'sgdw'"),
        (["run", "--set", "dirichlet-alpha=0"], "dirichlet-alpha: 0.0 is not allowed"),
        (["run", "--set", "num-clients=0"], "num-clients: 0 is not allowed"),
        (["run", "--set", "learning-rate=fast"], "learning-rate: 'fast' is not allowed"),
        (["run", "--set", "color=blue"], "unknown config key 'color'"),
        (["run", "--set", "weight-decay"], "expected KEY=VALUE"),
        (["run", "--config", "missing.toml"], "no such file"),
        (["run", "--client-cpus", "0"], "--client-cpus: 0.0 is not allowed"),
        (["run", "--client-cpus", "nan"], "--client-cpus: nan is not allowed"),
        (["run", "--client-cpus", "inf"], "--client-cpus: inf is not allowed"),
        (["run", "--client-gpus", "nan"], "--client-gpus: nan is not allowed"),
        (["run", "--client-gpus", "-0.5"], "--client-gpus: -0.5 is not allowed"),
        (["run", "--set", "weight-decay=1e308"], "that float32 can hold"),
        (["run", "--set", "learning-rate=1e39"], "that float32 can hold"),
        (["run", "--set", "experiment=../escape"], "experiment: '../escape' is not allowed"),
        (["run", "--set", "experiment=a/b"], "experiment: 'a/b' is not allowed"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--set", "num-clients=5000"], "num-clients: 5000 is not allowed"),
        (
            ["run", "--set", "partitioner=pathological", "--set", "classes-per-client=11"],
            "classes-per-client: 11 is not allowed",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(*args, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "results.db").exists()


def test_an_impossible_split_names_the_keys_to_change(tmp_path: Path) -> None:
    proc = _run(
        "run",
        "--out",
        str(tmp_path / "out"),
        "--set",
        "num-clients=401",
        "--set",
        "min-partition-size=10",
        "--set",
        "dirichlet-alpha=0.05",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # 401 × 10 > 4,000 examples; 400 × 10 would fit (small Dirichlet shares are topped up).
    for key in ("num-clients", "min-partition-size", "at most 400"):
        assert key in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ['"10"', '"0.05"'])
def test_a_toml_string_where_a_number_belongs_is_refused(tmp_path: Path, value: str) -> None:
    exp = tmp_path / "exp.toml"
    key = "num-clients" if value == '"10"' else "weight-decay"
    exp.write_text(f"{key} = {value}\n")
    proc = _run("run", "--config", str(exp), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fedadamw: error: {key}: {value[1:-1]!r} is not allowed; expected "
        + ("an integer" if key == "num-clients" else "a number")
        + ", not a string (write it without quotes)"
    ]


def test_an_out_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    proc = _run("run", "--out", "/proc/fedadamw-cannot-exist", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot be created" in line


def test_an_out_with_foreign_files_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("{}")  # one of ours by name: fine on its own
    (out / "notes.txt").write_text("my notes")
    proc = _run("run", "--out", str(out), "--set", "num-clients=5000", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "holds files fedadamw did not write (notes.txt)" in line and "--force" in line
    assert (out / "config.json").read_text() == "{}"  # untouched
    # With --force the folder is accepted and the next check (the split) speaks instead.
    proc = _run("run", "--out", str(out), "--force", "--set", "num-clients=5000", cwd=tmp_path)
    assert "num-clients: 5000 is not allowed" in proc.stderr


def test_a_store_that_is_not_sqlite_is_one_line_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    junk = bytes(range(256)) * 16
    (out / "results.db").write_bytes(junk)
    proc = _run("run", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "is not a fedadamw results store" in line
    assert (out / "results.db").read_bytes() == junk
    proc = _run("compare", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_store_of_a_newer_schema_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    out = tmp_path / "out"
    out.mkdir()
    conn = sqlite3.connect(out / "results.db")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    conn.commit()
    conn.close()
    proc = _run("run", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "holds schema 99" in line


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    proc = _run("run", "--out", str(tmp_path / "taken"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("is a file; expected a folder for results.db")


def test_bad_experiment_file_value(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text("weight-decay = -0.5\n")
    proc = _run("run", "--config", str(exp), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "fedadamw: error: weight-decay: -0.5 is not allowed; "
        "expected a finite number >= 0 that float32 can hold (<= 3.4e38)"
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The refusal's one stderr line (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("fedadamw: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "sql", ["create table runs(a,b); insert into runs values(1,2);", "create table foo(x);"]
)
def test_a_foreign_sqlite_store_is_refused_and_left_byte_identical(
    tmp_path: Path, sql: str
) -> None:
    import sqlite3

    out = tmp_path / "foreign"
    out.mkdir()
    conn = sqlite3.connect(out / "results.db")
    conn.executescript(sql)
    conn.commit()
    conn.close()
    before = (out / "results.db").read_bytes()
    args = ("--set", "engine=vmap", "--set", "num-clients=3", "--set", "num-server-rounds=2")
    line = _one_error_line(_run("run", *args, "--out", str(out), cwd=tmp_path))
    assert "is not a fedadamw results store" in line and "left untouched" in line
    assert (out / "results.db").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["results.db"]  # no lock, no log, no WAL


def test_a_data_dependent_refusal_leaves_the_out_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "new"
    line = _one_error_line(
        _run("run", "--set", "num-clients=5000", "--out", str(out), cwd=tmp_path)
    )
    assert "num-clients: 5000 is not allowed" in line
    assert not out.exists()  # it made the folder, and removed it again
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "config.json").write_text("{}")
    _one_error_line(_run("run", "--set", "num-clients=5000", "--out", str(kept), cwd=tmp_path))
    assert sorted(p.name for p in kept.iterdir()) == ["config.json"]  # no lock, no failures.log
    assert (kept / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "seed=99999999999999999999"], "seed: 99999999999999999999 is not allowed"),
        (["--set", "num-clients=10000000000"], "num-clients: 10000000000 is not allowed"),
        (["--set", "seed=-1"], "seed: -1 is not allowed"),
        (["--set", "seed=true"], "seed: 'true' is not allowed"),
        (["--set", "local-steps=nan"], "local-steps: 'nan' is not allowed"),
        (["--set", "server-tau=inf"], "server-tau: 'inf' is not allowed"),
        (["--set", "dirichlet-alpha=1e300"], "dirichlet-alpha: 1e+300 is not allowed"),
        (["--client-cpus", "100000"], "--client-cpus: 100000 is not allowed; this machine has"),
        (["--out", "x" * 300], "a folder name of 300 bytes"),
    ],
)
def test_values_beyond_limits_are_refused_before_anything_starts(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    line = _one_error_line(_run("run", *args, *out, cwd=tmp_path))
    assert needle in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, not even --out


def test_client_gpus_without_cuda_is_refused(tmp_path: Path) -> None:
    import torch

    count = torch.cuda.device_count()  # the reference: what this machine has
    line = _one_error_line(
        _run("run", "--client-gpus", str(count + 1), "--out", str(tmp_path / "o"), cwd=tmp_path)
    )
    assert f"--client-gpus: {count + 1} is not allowed; this machine has {count} CUDA" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("data", "needle"),
    [(b'experiment = "caf\xe9"\n', "not UTF-8 text"), (bytes(range(256)) * 4, "not UTF-8 text")],
)
def test_a_config_file_of_bad_bytes_is_one_line(tmp_path: Path, data: bytes, needle: str) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_bytes(data)
    for command in ("run", "partitions"):
        line = _one_error_line(_run(command, "--config", str(exp), cwd=tmp_path))
        assert needle in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


def test_a_sweep_value_given_twice_is_refused(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text("[sweep]\nseed = [0, 0]\n")
    line = _one_error_line(_run("run", "--config", str(exp), cwd=tmp_path))
    assert "sweep 'seed' lists 0 twice" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


def test_client_resources_are_checked_against_the_ray_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from fedadamw.errors import ConfigError
    from fedadamw.launch.simulate import check_cluster_resources

    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},  # a dead node holds nothing
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    check_cluster_resources(8.0, 0.0)
    check_cluster_resources(2.0, 0.5)
    for cpus, gpus in ((9.0, 0.0), (4.0, 1.0), (1.0, 2.0)):
        with pytest.raises(ConfigError, match="no Ray node has that much") as info:
            check_cluster_resources(cpus, gpus)
        assert "the largest has 8 CPUs, 1 GPUs" in str(info.value)
