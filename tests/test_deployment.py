"""The deployment without a Docker engine: docker-compose.yml's own commands on 127.0.0.1.

The slow tests (marker `deployment`) start the SuperLink with TLS, SuperNode authentication
and the SuperExec secret, the ServerApp process and three SuperNodes exactly as
docker-compose.yml runs them (fedadamw.deploy reads the file and maps service names, ports and
mounted paths to loopback), with fresh certificates, keys and secret; they start the experiment
with `flwr run . <connection>` and check the results store, and show that a SuperNode without a
registered key, one without the CA and a SuperExec without the secret are each refused. One
more runs `make flwr-run`, the documented local simulation. Every process is started in its own
process group and stopped by pid when the test ends, also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, RecordDict
from flwr.serverapp import Grid

from fedadamw import deploy
from fedadamw.config import Config
from fedadamw.data.split import DataSpec, holdout, partition_indices
from fedadamw.errors import ConfigError
from fedadamw.results.reader import connect_readonly
from fedadamw.results.writer import ResultStore
from fedadamw.viz.serve import free_ports
from server import strategy as strategy_module
from server.app import discover_partitions
from server.strategy import to_client_reply
from tests import compose, needs

ROOT = deploy.ROOT
BIN = Path(sys.executable).parent  # flower-superlink & co. of the environment running the tests
GPU_FILE = ROOT / "docker" / "compose.gpu.yml"
SUPERNODES = ("supernode-1", "supernode-2", "supernode-3")
CONNECTION = "fedadamw-loopback"
# What the experiment runs here: small, but both arms and more than one round.
ROUNDS, CLIENTS, EPOCHS, BATCH = 2, 3, 1, 32
SUPERLINK_NODE_ID = 1  # Flower's node id of the SuperLink itself (flwr.common.constant)


# --------------------------------------------------------------------------- processes


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), also those that left its process group."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: Sequence[int], group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Processes:
    """The processes a test started, each in its own group; `stop` ends all of them by pid."""

    def __init__(self, logs: Path, env: Mapping[str, str]) -> None:
        self.logs, self.env = logs, dict(env)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] = {}) -> None:
        """Start `argv` (its program from this environment's bin folder) with output in a log."""
        program = BIN / argv[0]
        # Appended to: a restarted process keeps the log of its first life.
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [str(program) if program.exists() else argv[0], *argv[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, **env},
                cwd=ROOT,
                start_new_session=True,  # its own process group: a kill takes its children too
            )

    def kill(self, name: str) -> None:
        """SIGKILL one process and its children at once, as `docker kill` does a container."""
        proc = self.procs.pop(name)  # reaped below: its pid must never be signalled again
        _signal(_descendants(proc.pid), proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tails(self, lines: int = 25) -> str:
        """The end of every log, for assertion messages."""
        out = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self, *names: str) -> None:
        """SIGTERM the groups and descendants of `names` (default: all), SIGKILL what is left;
        reap them."""
        started = [self.procs.pop(n) for n in reversed(names or list(self.procs))]
        pids = {p.pid: _descendants(p.pid) for p in started}
        for proc in started:
            _signal(pids[proc.pid], proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in started:
            _signal(pids[proc.pid] + _descendants(proc.pid), proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _wait_for(what: str, ok: Callable[[], bool], procs: Processes, timeout: float) -> None:
    """Poll `ok` until it is true; fail with every log's tail otherwise."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{procs.tails()}")
        time.sleep(0.5)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- deployment


class Deployment:
    """docker-compose.yml's services as loopback processes, with fresh credentials.

    The certificates, the SuperExec secret and the SuperNode keys come from the scripts the
    deployment docs have users run (docker/certs/generate.sh, docker/keys/generate.sh), into `root`.
    """

    def __init__(self, root: Path, files: Sequence[Path] = (compose.COMPOSE_FILE,)) -> None:
        self.root = root
        self.services = compose.load_services(files, env={})  # the compose defaults
        wanted = [(name, port) for name, svc in self.services.items() for port in svc.ports()]
        self.ports = dict(zip(wanted, free_ports(len(wanted)), strict=True))
        self.certs, self.keys, self.state = root / "certs", root / "keys", root / "state"
        self.state.mkdir(parents=True)
        for script, args in (("certs", []), ("keys", ["3"])):
            out = getattr(self, script)
            subprocess.run(
                ["bash", str(ROOT / "docker" / script / "generate.sh"), str(out), *args],
                check=True,
                capture_output=True,
            )
        self.results = root / "results"  # the `results` volume
        self.home = root / "flwr-home"  # Flower's config and installed apps, not the user's
        env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.procs = Processes(root / "logs", env)
        address = f"127.0.0.1:{self.ports[('superlink', 8000)]}"
        deploy.write_connection(
            self.home / "config.toml", CONNECTION, address, self.certs / "ca.crt"
        )

    def _mounts(self) -> dict[str, Any]:
        return {
            "volumes": {"superlink-state": self.state, "results": self.results},
            "relocate": {ROOT / "docker/certs": self.certs, ROOT / "docker/keys": self.keys},
        }

    def argv(self, name: str) -> list[str]:
        """The loopback command of compose service `name`."""
        return compose.loopback_argv(
            self.services[name], self.ports, services=list(self.services), **self._mounts()
        )

    def start(self, name: str, argv: Sequence[str] | None = None, service: str = "") -> None:
        """Start compose service `service` (default: `name`) as process `name`."""
        env = compose.loopback_environment(self.services[service or name], **self._mounts())
        self.procs.start(name, argv or self.argv(service or name), env)

    def register(self, *names: str) -> list[str]:
        """`flwr supernode register` the public keys of SuperNodes `names`; flwr's outputs."""
        return [
            self.flwr("supernode", "register", str(self.keys / f"{n}.pub"), CONNECTION).stdout
            for n in names
        ]

    def wait_exit(self, name: str, timeout: float = 120) -> int:
        """Wait until process `name` ends on its own; its exit status."""
        proc = self.procs.procs[name]
        _wait_for(f"{name} to exit", lambda: proc.poll() is not None, self.procs, timeout)
        return int(proc.returncode)

    def runs(self) -> dict[int, dict[str, Any]]:
        """The SuperLink's runs (`flwr ls`), by run id."""
        listing = json.loads(self.flwr("ls", CONNECTION, "--format", "json").stdout)
        return {int(r["run-id"]): r for r in listing["runs"]}

    def start_superlink(self) -> None:
        self.start("superlink")
        port = self.ports[("superlink", 8000)]
        _wait_for("the SuperLink to listen", lambda: _listening(port), self.procs, 60)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The `flwr` CLI against this deployment; fails the test on a non-zero exit."""
        proc = subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=ROOT,
            env=self.procs.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, (
            f"flwr {args}: {proc.stdout}{proc.stderr}\n{self.procs.tails()}"
        )
        return proc

    def run_args(
        self, experiment: str, out: Path | str, stream: bool = True, **extra: str
    ) -> list[str]:
        """`flwr run . <connection>` for a small experiment writing to `out-dir` `out`."""
        config = {
            "experiment": f"'{experiment}'",
            "num-server-rounds": str(ROUNDS),
            "num-clients": str(CLIENTS),
            "local-epochs": str(EPOCHS),
            "batch-size": str(BATCH),
            "out-dir": f"'{out}'",
            **extra,
        }
        run_config = " ".join(f"{k}={v}" for k, v in config.items())
        return [
            "run",
            ".",
            CONNECTION,
            "--run-config",
            run_config,
            *(["--stream"] if stream else []),
        ]


@contextlib.contextmanager
def _deployment(
    root: Path, files: Sequence[Path] = (compose.COMPOSE_FILE,)
) -> Iterator[Deployment]:
    dep = Deployment(root, files)
    try:
        yield dep
    finally:
        dep.procs.stop()


def _start_all(dep: Deployment) -> None:
    dep.start_superlink()
    dep.register(*SUPERNODES)  # before they connect, as docs/deployment.md's recipe does
    dep.start("serverapp")
    for name in SUPERNODES:
        dep.start(name)


def _query(out: Path, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
    """Rows from the run's store, or none while the ServerApp has not created it yet."""
    try:
        conn = connect_readonly(out / "results.db")
    except FileNotFoundError:
        return []
    try:
        return conn.execute(sql, tuple(args)).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


def _finished(out: Path, arms: int) -> bool:
    rows = _query(out, "SELECT status FROM runs")
    return len(rows) == arms and all(r[0] != "running" for r in rows)


def _expected_sizes(clients: int = CLIENTS) -> dict[int, int]:
    """Each client's training rows, from the split the run config asks for (pyproject defaults)."""
    spec = DataSpec.from_config(Config.from_mapping({"num-clients": clients}))
    return {p: len(holdout(spec, p)[0]) for p in range(len(partition_indices(spec)))}


# --------------------------------------------------------------------------- slow tests

KILLED = "supernode-2"  # partition 1, killed when the decoupled arm's round 1 starts


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both arms, 2 rounds, 3 SuperNodes, TLS; one SuperNode killed in the second arm.

    One deployment and one run serve two tests (CI time): the coupled arm is the healthy
    deployment, the decoupled arm loses `KILLED` in its round 1 and must finish without it.
    """
    root = tmp_path_factory.mktemp("deployed")
    # A relative out-dir, as in docs/deployment.md: the ServerApp takes it under the results volume.
    out = root / "results" / "two-arms"
    with _deployment(root) as dep:
        _start_all(dep)
        started = time.perf_counter()
        with (dep.root / "logs" / "flwr-run.log").open("wb") as log:
            run = subprocess.Popen(
                [str(BIN / "flwr"), *dep.run_args("deploy-test", out.name)],
                cwd=ROOT,
                env=dep.procs.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            # Round 0 (the initial model's evaluation) is written just before round 1 starts.
            sql = "SELECT 1 FROM rounds JOIN runs USING (run_id) WHERE arm=? AND round=0"
            _wait_for(
                "the decoupled arm to start",
                lambda: bool(_query(out, sql, ["decoupled"])),
                dep.procs,
                400,
            )
            dep.procs.kill(KILLED)
            # The SuperLink reports the dead node once its heartbeat lapses (~30-60 s).
            _wait_for("both arms to finish", lambda: _finished(out, 2), dep.procs, 300)
        finally:
            run.kill()
            run.wait()
        wall = time.perf_counter() - started
    seconds = _query(
        out,
        "SELECT u.arm, r.round, r.seconds FROM rounds r JOIN runs u USING (run_id) "
        "WHERE r.round >= 1 ORDER BY u.started_at, r.round",
    )
    # A table, not an assertion: wall time per deployed round on this machine.
    print(f"\ndeployed run: {wall:.1f} s from `flwr run` until both arms finished")
    for arm, rnd, sec in seconds:
        killed = (arm, rnd) == ("decoupled", 1)
        note = f"  ({KILLED} killed: until its heartbeat lapses)" if killed else ""
        print(f"  {arm:>10} round {rnd}: {sec:5.1f} s{note}")
    yield out


def _run_id(conn: sqlite3.Connection, arm: str) -> str:
    return str(conn.execute("SELECT run_id FROM runs WHERE arm=?", (arm,)).fetchone()[0])


@pytest.mark.deployment
def test_experiment_runs_on_the_compose_services(deployed_run: Path) -> None:
    conn = connect_readonly(deployed_run / "results.db")
    runs = conn.execute("SELECT arm, status FROM runs ORDER BY arm").fetchall()
    assert [tuple(r) for r in runs] == [("coupled", "finished"), ("decoupled", "finished")]
    rid = _run_id(conn, "coupled")  # the arm that kept all three SuperNodes
    rounds = conn.execute("SELECT * FROM rounds WHERE run_id=? ORDER BY round", (rid,)).fetchall()
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    for rnd in rounds[1:]:
        assert (rnd["num_clients"], rnd["num_rejected"]) == (CLIENTS, 0)
        # DESIGN's identity, and the stored pairs average to the stored mean.
        r, k = rnd["resultant_length"], CLIENTS
        assert rnd["mean_pairwise_cosine"] == pytest.approx((k * r * r - 1) / (k - 1))
        pairs = conn.execute(
            "SELECT partition_i, partition_j, cosine FROM pairs WHERE run_id=? AND round=?",
            (rid, rnd["round"]),
        ).fetchall()
        assert sorted((p[0], p[1]) for p in pairs) == [(0, 1), (0, 2), (1, 2)]
        mean = sum(p[2] for p in pairs) / len(pairs)
        assert rnd["mean_pairwise_cosine"] == pytest.approx(mean, abs=1e-9)
    assert conn.execute("SELECT COUNT(*) FROM clients WHERE run_id=?", (rid,)).fetchone()[0] == (
        ROUNDS * CLIENTS
    )
    # Both arms: each SuperNode trained the partition its node config names, with the epochs
    # and batch size of the run config, which reached it in the train message.
    sizes = _expected_sizes()
    clients = conn.execute("SELECT partition_id, num_examples, local_steps FROM clients").fetchall()
    assert len(clients) == ROUNDS * CLIENTS + ROUNDS * (CLIENTS - 1)
    for c in clients:
        n = sizes[c["partition_id"]]
        assert (c["num_examples"], c["local_steps"]) == (n, EPOCHS * math.ceil(n / BATCH))
    conn.close()
    config = json.loads((deployed_run / "config.json").read_text())
    assert config["out-dir"] == deployed_run.name and config["num-clients"] == CLIENTS


@pytest.mark.deployment
def test_a_killed_supernode_is_recorded_and_the_run_finishes(deployed_run: Path) -> None:
    conn = connect_readonly(deployed_run / "results.db")
    rid = _run_id(conn, "decoupled")
    assert conn.execute("SELECT status FROM runs WHERE run_id=?", (rid,)).fetchone()[0] == (
        "finished"
    )
    rounds = conn.execute(
        "SELECT round, num_clients, num_rejected FROM rounds WHERE run_id=? ORDER BY round", (rid,)
    ).fetchall()
    # No round row is lost: round 1 is recorded with the survivors, round 2 trains them alone
    # (FedAvg's min_available_nodes would have waited for the dead node forever).
    assert [tuple(r) for r in rounds] == [(0, None, None), (1, 2, 1), (2, 2, 0)]
    rejections = conn.execute(
        "SELECT run_id, round, partition_id, reason FROM rejections"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rejections] == [(rid, 1, 1)]
    assert "Node Unavailable" in rejections[0][3]
    trained = conn.execute(
        "SELECT DISTINCT partition_id FROM clients WHERE run_id=? ORDER BY 1", (rid,)
    ).fetchall()
    assert [r[0] for r in trained] == [0, 2]
    pairs = conn.execute("SELECT partition_i, partition_j FROM pairs WHERE run_id=?", (rid,))
    assert sorted(tuple(p) for p in pairs) == [(0, 2), (0, 2)]
    conn.close()


SECRET_FLAG = "--superexec-auth-secret-file"


def _without(argv: Sequence[str], flag: str) -> list[str]:
    kept = [a for a in argv if a.split("=", 1)[0] != flag]
    assert len(kept) == len(argv) - 1, f"{flag} not in {argv}"
    return kept


@pytest.mark.deployment
def test_nodes_and_processes_without_their_credentials_are_refused(tmp_path: Path) -> None:
    """The default compose file lets in only what holds its credential, each checked live:

    (a) a SuperNode whose key was never registered, (b) a SuperNode without the CA and
    (c) a SuperExec (Runtime API client) without the secret are refused; with the secret the
    same SuperExec gets the run, whose escaping out-dir the ServerApp refuses in one line.
    """
    with _deployment(tmp_path) as dep:
        superlink = dep.argv("superlink")
        assert "--enable-supernode-auth" in superlink
        assert f"{SECRET_FLAG}={dep.certs}/superexec.secret" in superlink
        dep.start_superlink()
        registered = dep.register("supernode-1", "supernode-3")  # never supernode-2's key
        dep.start("supernode-1")
        dep.start("supernode-2")  # (a) its key pair exists, but was never registered
        dep.start("supernode-3", _without(dep.argv("supernode-3"), "--root-certificates"))  # (b)

        # A run waits for a SuperExec; one without the secret (c) is turned away.
        outside = tmp_path / "outside"
        args = dep.run_args("escape", outside, stream=False)
        run_id = int(json.loads(dep.flwr(*args, "--format", "json").stdout)["run-id"])
        dep.start("no-secret", _without(dep.argv("serverapp"), SECRET_FLAG), "serverapp")
        wrong = tmp_path / "wrong.secret"
        wrong.write_text(os.urandom(32).hex())  # the form generate.sh writes, not the secret
        dep.start(
            "wrong-secret",
            [*_without(dep.argv("serverapp"), SECRET_FLAG), f"{SECRET_FLAG}={wrong}"],
            "serverapp",
        )

        # (a): the node gives up, and the SuperLink says why (HTTP 412 on activate-node).
        assert dep.wait_exit("supernode-2") != 0
        assert "Failed to activate SuperNode" in dep.procs.log("supernode-2"), dep.procs.tails()
        link_log = dep.procs.log("superlink")
        assert "Attempted to register SuperNode with public key" in link_log
        assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in link_log
        # (b): TLS fails on the node's side: it cannot verify the SuperLink's certificate.
        assert dep.wait_exit("supernode-3") != 0
        assert "CERTIFICATE_VERIFY" in dep.procs.log("supernode-3"), dep.procs.tails()
        # (c): the SuperLink answers the SuperExec's first AcquireTask with 401 and the
        # SuperExec stops (Flower 1.41 exits it with status 0; fedadamw.deploy says why, exit 1).
        assert dep.wait_exit("no-secret", 60) == 1
        assert dep.wait_exit("wrong-secret", 60) == 1
        for name in ("no-secret", "wrong-secret"):
            assert "fedadamw: error: flower-superexec stopped by itself" in dep.procs.log(name)
        link_log = dep.procs.log("superlink")
        assert "SuperExec authentication failed for /flwr.proto.Runtime/AcquireTask" in link_log
        assert '"POST /v1/runtime/acquire-task HTTP/1.1" 401' in link_log
        assert "Starting Flower SuperExec" in dep.procs.log("no-secret")
        assert dep.runs()[run_id]["status"] == "pending"  # nobody got the run's code

        def online() -> list[dict[str, str]]:
            listing = json.loads(
                dep.flwr("supernode", "list", CONNECTION, "--format", "json").stdout
            )
            return [n for n in listing["nodes"] if n["status"] == "online"]

        _wait_for("supernode-1 to be online", lambda: len(online()) == 1, dep.procs, 60)
        node_id = online()[0]["node-id"]
        assert node_id in registered[0]  # the one that is online is supernode-1
        assert dep.procs.procs["supernode-1"].poll() is None

        # With the secret, the same command gets the run; the ServerApp refuses its out-dir
        # (outside the results volume) with one line in the run's log and writes nothing.
        dep.start("serverapp")

        def finished() -> bool:
            return str(dep.runs()[run_id]["status"]).startswith("finished")

        _wait_for("the escaping run to end", finished, dep.procs, 180)
        log = dep.flwr("log", str(run_id), CONNECTION, "--show").stdout
        refusals = [line for line in log.splitlines() if "fedadamw: error:" in line]
        assert len(refusals) == 1, log
        assert f"out-dir: {str(outside)!r} resolves to" in refusals[0]
        assert "Traceback" not in log
        assert not outside.exists()
        assert not dep.results.exists() or not any(dep.results.rglob("*"))

        # The SuperLink's state is its --database (a volume in compose): a restart keeps runs.
        dep.procs.stop("serverapp", "superlink")
        dep.start_superlink()
        assert run_id in dep.runs()


# --------------------------------------------------------------------------- make flwr-run


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody has reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _local_superlinks(flwr_home: Path) -> list[int]:
    """Pids of the local SuperLinks `flwr run` started for this FLWR_HOME.

    Flower starts it detached, with its log under $FLWR_HOME/local-superlink: that log path in
    its command line tells it from any other SuperLink on the machine.
    """
    log_file = str(flwr_home / "local-superlink" / "superlink.log")
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        argv = _cmdline(int(entry.name))
        programs = {Path(a).name for a in argv[:2]}  # `flower-superlink`, or python + script
        if "flower-superlink" in programs and log_file in argv and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _stop_by_pid(pid: int) -> None:
    """SIGTERM `pid`, its process group and descendants; SIGKILL what is left after 10 s."""
    family = _descendants(pid)
    _signal(family, pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal([p for p in [pid, *family, *_descendants(pid)] if _alive(p)], pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


# Not Flower's default of 2 simulated SuperNodes: 3 shows that CLIENTS reached the federation.
FLWR_RUN_CLIENTS = 3


@pytest.mark.deployment
def test_make_flwr_run_works_without_an_activated_venv(tmp_path: Path) -> None:
    """The documented `make flwr-run`, 2 rounds: no venv on PATH, Flower's home and the results
    root in tmp_path; the detached local SuperLink it leaves behind is stopped by pid."""
    make = shutil.which("make")
    assert make is not None, "the documented commands need make"
    home, results = tmp_path / "flwr-home", tmp_path / "results"
    # As on a fresh machine: no activated venv, so this environment's bin folder is not on
    # PATH (the Makefile must put it there), and no make of ours is running around it.
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    drop = {"VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    http_port, control_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in drop} | {
        "PATH": os.pathsep.join(path),
        "FLWR_HOME": str(home),  # never the user's ~/.flwr
        "FLWR_TELEMETRY_ENABLED": "0",
        "FEDADAMW_RESULTS_ROOT": str(results),
        # Flower's local SuperLink listens on fixed ports unless told otherwise: free ones, so
        # that neither a SuperLink the user left running nor another test is reused.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
    }
    experiment = "flwr-run-test"
    command = [
        make,
        "--no-print-directory",
        # The venv running this test is set up already: do not let make rebuild it.
        "-o",
        str(BIN.parent / ".installed"),
        "flwr-run",
        f"VENV={BIN.parent}",
        f"CLIENTS={FLWR_RUN_CLIENTS}",
        f"RUN_CONFIG=num-server-rounds={ROUNDS} local-epochs={EPOCHS} experiment='{experiment}'",
    ]
    log = tmp_path / "make-flwr-run.log"
    started = time.perf_counter()
    try:
        with log.open("wb") as out:
            proc = subprocess.run(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600
            )
        wall = time.perf_counter() - started
        text = log.read_text(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        assert "Unable to launch `flower-superlink`" not in text
        assert f"({FLWR_RUN_CLIENTS} simulated SuperNodes)" in text
        # `make flwr-run` ends with the run's summary and where its results are
        assert f"results: {results / experiment / 'results.db'}" in text
        superlinks = _local_superlinks(home)
        assert len(superlinks) == 1, f"expected the one local SuperLink; found {superlinks}"
    finally:
        for pid in _local_superlinks(home):
            _stop_by_pid(pid)
    assert _local_superlinks(home) == []
    print(f"\nmake flwr-run: {wall:.1f} s for {ROUNDS} rounds, both arms")

    store = results / experiment / "results.db"
    conn = connect_readonly(store)
    runs = conn.execute("SELECT run_id, arm, status FROM runs ORDER BY arm").fetchall()
    assert [(r["arm"], r["status"]) for r in runs] == [
        ("coupled", "finished"),
        ("decoupled", "finished"),
    ]
    sizes = _expected_sizes(FLWR_RUN_CLIENTS)
    for run in runs:
        rid = run["run_id"]
        rounds = conn.execute(
            "SELECT round, num_clients, resultant_length, mean_pairwise_cosine FROM rounds "
            "WHERE run_id=? ORDER BY round",
            (rid,),
        ).fetchall()
        assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
        for rnd in rounds[1:]:
            assert rnd["num_clients"] == FLWR_RUN_CLIENTS
            # DESIGN's identity: mean pairwise cosine = (K·R² − 1)/(K − 1).
            r, k = rnd["resultant_length"], FLWR_RUN_CLIENTS
            assert rnd["mean_pairwise_cosine"] == pytest.approx((k * r * r - 1) / (k - 1))
        clients = conn.execute(
            "SELECT partition_id, num_examples FROM clients WHERE run_id=?", (rid,)
        ).fetchall()
        assert len(clients) == ROUNDS * FLWR_RUN_CLIENTS
        assert all(c["num_examples"] == sizes[c["partition_id"]] for c in clients)
    conn.close()
    config = json.loads((store.parent / "config.json").read_text())
    assert (config["num-clients"], config["num-server-rounds"]) == (FLWR_RUN_CLIENTS, ROUNDS)


# --------------------------------------------------------------------------- fast tests


COMPOSE_VARIABLES = ("SUPERLINK_ADDRESS", "SUPERLINK_BIND")


def _compose_config(files: Sequence[Path], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    args = [a for f in files for a in ("-f", str(f))]
    proc = subprocess.run(
        [needs.docker_compose(), *args, "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES} | dict(env),
    )
    assert proc.returncode == 0, proc.stderr
    import yaml

    return cast("dict[str, dict[str, Any]]", yaml.safe_load(proc.stdout)["services"])


@pytest.mark.parametrize(
    ("overrides", "env"),
    [((), {}), ((GPU_FILE,), {}), ((), {"SUPERLINK_BIND": "10.1.2.3"})],
)
def test_compose_files_pass_the_schema_and_match_what_the_test_runs(
    overrides: tuple[Path, ...], env: dict[str, str]
) -> None:
    files = (compose.COMPOSE_FILE, *overrides)
    # docker-compose validates against the Compose schema and merges the files itself: the
    # reference for fedadamw.deploy's reading of them.
    reference = _compose_config(files, env)
    ours = compose.load_services(files, env=env)
    assert set(ours) == set(reference) == {"superlink", "serverapp", *SUPERNODES}
    for name, svc in ours.items():
        ref = reference[name]
        argv = [*cast("list[str]", ref["entrypoint"]), *cast("list[str]", ref.get("command", []))]
        assert list(svc.argv) == argv
        ref_env = cast("dict[str, str]", ref.get("environment", {}))
        assert svc.environment == {k: str(v) for k, v in ref_env.items()}
        mounts = [str(v).split(":")[:2] for v in cast("list[str]", ref.get("volumes", []))]
        assert {t: str(p) for t, p in svc.binds.items()} == {
            t: s for s, t in mounts if s.startswith("/")
        }
        assert svc.volumes == {t: s for s, t in mounts if not s.startswith("/")}
        published = [str(p).removesuffix("/tcp") for p in ref.get("ports", [])]
        assert list(svc.published) == published
    bind = env.get("SUPERLINK_BIND", "127.0.0.1")
    assert ours["superlink"].published == (f"{bind}:8000:8000",)


def _value(argv: Sequence[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} in {argv}"
    return values[0]


def test_the_default_compose_file_lets_no_one_in_without_credentials() -> None:
    services = compose.load_services(env={})
    link, server = services["superlink"], services["serverapp"]
    # Published on this machine's loopback only; nothing else is published at all.
    assert link.published == ("127.0.0.1:8000:8000",)
    assert all(not svc.published for name, svc in services.items() if name != "superlink")
    assert all("--insecure" not in svc.argv for svc in services.values())
    # TLS, registered SuperNode keys only, and the SuperExec secret on the Runtime API.
    assert "--enable-supernode-auth" in link.argv
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        assert _value(link.argv, flag).startswith("/app/certs/")
    secret = ROOT / "docker" / "certs" / "superexec.secret"
    for svc in (link, server):  # the same file on both sides
        assert svc.binds[_value(svc.argv, "--superexec-auth-secret-file")] == secret
    for i, name in enumerate(SUPERNODES, start=1):
        node = services[name]
        key = _value(node.argv, "--auth-supernode-private-key")
        assert node.binds[key] == ROOT / "docker" / "keys" / f"supernode-{i}"  # its own key
        assert node.binds[_value(node.argv, "--root-certificates")] == (
            ROOT / "docker" / "certs" / "ca.crt"
        )
        assert f"{ROOT}/docker/certs/superexec.secret" not in map(str, node.binds.values())
    # Submitted runs write under the results volume only (fedadamw.run.outdir).
    assert server.volumes[server.environment["FEDADAMW_RESULTS_ROOT"]] == "results"
    # The credentials the scripts make are never committed.
    if shutil.which("git") and (ROOT / ".git").exists():
        made = [secret, ROOT / "docker/certs/server.key", ROOT / "docker/keys/supernode-1"]
        for path in made:
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", str(path)], cwd=ROOT, check=False
            )
            assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_compose_services_become_loopback_processes() -> None:
    services = compose.load_services(env={})
    assert services["superlink"].environment["FLWR_TELEMETRY_ENABLED"] == "0"
    for name in ("serverapp", *SUPERNODES):
        assert services[name].environment["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    ports = {
        (n, p): 30000 + i
        for i, (n, p) in enumerate((n, p) for n, s in services.items() for p in s.ports())
    }
    # Each process listens on its own port: three SuperNodes and the SuperLink.
    assert sorted(ports) == [("superlink", 8000)] + [
        (f"supernode-{i}", 9093 + i) for i in (1, 2, 3)
    ]
    state, certs, keys, results = (Path(f"/x/{n}") for n in ("state", "certs", "keys", "results"))
    volumes = {"superlink-state": state, "results": results}
    relocate = {ROOT / "docker/certs": certs, ROOT / "docker/keys": keys}
    argvs = {
        name: compose.loopback_argv(svc, ports, list(services), volumes, relocate)
        for name, svc in services.items()
    }
    assert argvs["superlink"][:3] == ["flower-superlink", "--host=127.0.0.1", "--port=30000"]
    assert f"--ssl-keyfile={certs}/server.key" in argvs["superlink"]
    assert f"--superexec-auth-secret-file={certs}/superexec.secret" in argvs["superlink"]
    assert f"--database={state}/state.db" in argvs["superlink"]
    assert argvs["serverapp"] == [
        "python",
        "-m",
        "fedadamw.deploy",
        "superexec",
        "--",
        "--runtime-api-address=127.0.0.1:30000",
        f"--root-certificates={certs}/ca.crt",
        f"--superexec-auth-secret-file={certs}/superexec.secret",
    ]
    for i, name in enumerate(SUPERNODES):
        assert argvs[name] == [
            "flower-supernode",
            "--superlink=127.0.0.1:30000",
            f"--root-certificates={certs}/ca.crt",
            f"--auth-supernode-private-key={keys}/supernode-{i + 1}",
            f"--port={30001 + i}",
            f"--node-config=partition-id={i} num-partitions=3",
        ]
    # Environment paths are mapped too: the results root is the `results` volume's folder.
    env = compose.loopback_environment(services["serverapp"], volumes, relocate)
    assert env["FEDADAMW_RESULTS_ROOT"] == str(results)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    # Pointing SuperNodes at a remote SuperLink is the compose file's SUPERLINK_ADDRESS.
    remote = compose.load_services(env={"SUPERLINK_ADDRESS": "203.0.113.7:8000"})
    assert "--superlink=203.0.113.7:8000" in remote["supernode-1"].argv
    with pytest.raises(ConfigError, match="superlink-state"):
        compose.loopback_argv(services["superlink"], ports, list(services))
    with pytest.raises(ConfigError, match="no loopback port for supernode-1:9094"):
        compose.loopback_argv(services["supernode-1"], {("superlink", 8000): 1}, list(services))


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert compose.interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$", env) == (
        "x d d  $"
    )
    assert compose.interpolate("${UNSET-d}${UNSET}", env) == "d"


# A user's Flower config with three connections, a default, options tables and comments.
USER_FLOWER_CONFIG = """\
# my connections
[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = 10 # inline comment

[superlink.fedadamw-docker]
address = "old:1"
insecure = true
[superlink.fedadamw-docker.options]
num-supernodes = 2

[superlink."lab cluster"]
address = "10.0.0.5:9093"
root-certificates = "/home/me/lab-ca.crt"
options.num-supernodes = 4
[superlink."lab cluster".options.backend.client-resources]
num-cpus = 4
"""


def test_connect_keeps_every_other_connection_and_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here")
    config = tmp_path / "config.toml"
    config.write_text(USER_FLOWER_CONFIG)
    config.chmod(0o600)
    before = tomllib.loads(USER_FLOWER_CONFIG)
    assert len(before["superlink"]) == 4  # `default` and three connections

    assert deploy.main(["connect", "--ca", str(ca)]) == 0
    assert "the previous file is" in capsys.readouterr().out
    after = tomllib.loads(config.read_text())
    # Every other key is untouched, down to nested option tables; ours is replaced whole.
    ours = after["superlink"].pop("fedadamw-docker")
    del before["superlink"]["fedadamw-docker"]
    assert after == before
    assert ours == {"address": "127.0.0.1:8000", "root-certificates": str(ca)}
    assert deploy.backup_path(config).read_text() == USER_FLOWER_CONFIG  # comments included
    assert config.stat().st_mode & 0o777 == 0o600

    # A second connection; the backup is now the file as the first call left it.
    first = config.read_text()
    deploy.write_connection(config, "remote", "203.0.113.7:8000", ca)
    assert deploy.backup_path(config).read_text() == first
    # Flower's own reader is the reference for what the file means.
    from flwr.cli.flower_config import read_superlink_connection

    local, docker = read_superlink_connection("local"), read_superlink_connection("fedadamw-docker")
    remote = read_superlink_connection("remote")
    assert local.address == ":local:"
    assert (docker.address, docker.root_certificates, docker.insecure) == (
        "127.0.0.1:8000",
        str(ca),
        False,
    )
    assert docker.options is None  # the old entry's sub-table went with it
    assert remote.address == "203.0.113.7:8000"
    assert read_superlink_connection("lab cluster").address == "10.0.0.5:9093"
    assert tomllib.loads(config.read_text())["superlink"]["default"] == "local"


def test_connect_leaves_a_file_it_cannot_parse_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    config = tmp_path / "config.toml"
    broken = '[superlink.local]\naddress = ":local:"\n[superlink.local\n'
    config.write_text(broken)
    assert deploy.main(["connect", "--ca", str(ca)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedadamw: error: {config}: not valid TOML (") and err.count("\n") == 1
    assert config.read_text() == broken and not deploy.backup_path(config).exists()
    config.write_text('superlink = "not a table"\n')
    with pytest.raises(ConfigError, match="`superlink` is not a table"):
        deploy.write_connection(config, "x", "127.0.0.1:8000", ca)
    with pytest.raises(ConfigError, match="no such file"):
        deploy.write_connection(config, "x", "127.0.0.1:8000", tmp_path / "missing.crt")
    with pytest.raises(ConfigError, match="connection name"):
        deploy.write_connection(config, "a b", "127.0.0.1:8000", ca)
    assert config.read_text() == 'superlink = "not a table"\n'


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("127.0.0.1:99999", "port 99999 is not allowed; expected 1-65535"),
        ("127.0.0.1:0", "port 0 is not allowed; expected 1-65535"),
        ("[::1]:65536", "port 65536 is not allowed"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("[not ipv6]:8000", "expected HOST:PORT"),
    ],
)
def test_connect_range_checks_the_port(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    address: str,
    needle: str,
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    config = tmp_path / "config.toml"
    config.write_text('[superlink.local]\naddress = ":local:"\n')
    before = config.read_bytes()
    assert deploy.main(["connect", "--insecure", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert config.read_bytes() == before and not deploy.backup_path(config).exists()
    for good in ("127.0.0.1:1", "[::1]:65535"):
        deploy.check_address(good)


def test_the_flwr_run_summary_says_how_the_arms_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedadamw.run.experiment import run_id_for

    monkeypatch.setenv("FEDADAMW_RESULTS_ROOT", str(tmp_path))
    text = "num-clients=3 num-server-rounds=2 experiment='flwr-sum'"
    assert deploy.parse_run_config(text) == {
        "num-clients": 3,
        "num-server-rounds": 2,
        "experiment": "flwr-sum",
    }
    assert deploy.main(["summary", "--run-config", text]) == 1  # nothing was written
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wrote no results store" in err
    cfg = Config.from_mapping(deploy.parse_run_config(text))
    store = tmp_path / "flwr-sum" / "results.db"
    with ResultStore(store) as writer:
        for arm, status in zip(cfg.arm_list, ("finished", "failed: RuntimeError: x"), strict=True):
            rid = run_id_for(cfg, arm)
            writer.start_run(rid, cfg.experiment, arm, arm, cfg.weight_decay, cfg.to_json())
            writer.finish_run(rid, status)
    assert deploy.main(["summary", "--run-config", text]) == 1
    out, err = capsys.readouterr()
    assert f"results: {store}" in out
    assert err.count("\n") == 1
    assert f"did not finish every arm ({cfg.arm_list[1]} failed: RuntimeError: x)" in err
    with ResultStore(store) as writer:
        writer.finish_run(run_id_for(cfg, cfg.arm_list[1]))
    assert deploy.main(["summary", "--run-config", text]) == 0
    assert f"results: {store}" in capsys.readouterr().out


@pytest.mark.parametrize(("exit_code", "expected"), [(0, 1), (3, 3)])
def test_a_superexec_that_stops_by_itself_is_an_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exit_code: int,
    expected: int,
) -> None:
    fake = tmp_path / "flower-superexec"  # stands in for Flower's, refused by the SuperLink
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nexit {exit_code}\n')
    fake.chmod(0o755)
    monkeypatch.setattr("fedadamw.deploy.shutil.which", lambda name, path=None: str(fake))
    assert deploy.main(["superexec", "--", "--runtime-api-address=x:1", "--insecure"]) == expected
    assert (tmp_path / "args").read_text().split() == ["--runtime-api-address=x:1", "--insecure"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("stopped by itself" if exit_code == 0 else f"exited with status {exit_code}") in err


class _FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_waiting_for_supernodes_is_bounded_and_says_what_to_do() -> None:
    grid = cast(Grid, _FakeGrid([7]))
    with pytest.raises(
        RuntimeError,
        match=r"only 1 of 3 SuperNodes connected within 0 s.*"
        r"partition-id=N num-partitions=3",
    ):
        discover_partitions(grid, expected=3, wait_s=0.2)


def test_a_run_whose_supernodes_are_all_gone_ends_with_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(strategy_module, "NODE_WAIT_S", 0.2)
    cfg = Config.from_mapping({"num-clients": 2})
    strategy = strategy_module.MeasuredFedAvg(
        {11: 0, 12: 1},
        0,
        2,
        parameter_names=(),
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    with pytest.raises(RuntimeError, match="none of the 2 SuperNodes this run started with"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), cast(Grid, _FakeGrid([99])))


def _metadata(src: int, dst: int, message_id: str, reply_to: str) -> Metadata:
    return Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id=reply_to,
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )


def test_the_superlinks_error_reply_names_the_dead_supernode() -> None:
    partitions = {21: 0, 22: 1}
    error = Error(code=5, reason="Error: Node Unavailable - no heartbeat")
    # What the SuperLink sends for a message to node 22 that stopped sending heartbeats.
    reply = Message(error, metadata=_metadata(SUPERLINK_NODE_ID, 0, "r", "sent-to-22"))  # type: ignore[call-overload]
    got = to_client_reply(reply, partitions, {"sent-to-21": 21, "sent-to-22": 22})
    assert (got.node_id, got.partition_id) == (22, 1)
    assert got.error is not None and "Node Unavailable" in got.error
    # Without the sent messages it could only blame the SuperLink.
    assert to_client_reply(reply, partitions).partition_id is None
    # A node's own reply keeps naming that node.
    own = Message(RecordDict(), metadata=_metadata(21, 0, "r2", "sent-to-21"))  # type: ignore[call-overload]
    assert to_client_reply(own, partitions, {"sent-to-21": 21}).node_id == 21
