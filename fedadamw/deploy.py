"""`python -m fedadamw.deploy connect`: the `flwr` connection to a deployed SuperLink.

`flwr run . <connection>` needs `[superlink.<connection>]` in Flower's config.toml; this writes
it as TOML, keeping every other connection and a backup of the file. How the deployment itself
starts is said once, in docker-compose.yml (the loopback tests read it with tests/compose.py).
No flwr import here: this module only reads and writes text.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from fedadamw.errors import ConfigError, print_error

ROOT = Path(__file__).resolve().parent.parent
CONNECTION_NAME = "fedadamw-docker"
DEFAULT_ADDRESS = "127.0.0.1:8000"
DEFAULT_CA = ROOT / "docker" / "certs" / "ca.crt"

_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d+)$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def check_address(address: str) -> None:
    """ConfigError unless `address` is HOST:PORT (or [IPv6]:PORT) with a port in 1-65535."""
    match = _ADDRESS.match(address)
    if not match:
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ConfigError(f"--address {address!r}: port {port} is not allowed; expected 1-65535")


def flower_config_path() -> Path:
    """Flower's config.toml, where `flwr` keeps its SuperLink connections."""
    home = os.environ.get("FLWR_HOME")
    return (Path(home) if home else Path.home() / ".flwr") / "config.toml"


def backup_path(config: Path) -> Path:
    """Where `write_connection` keeps the file as it was before its last change."""
    return config.with_name(config.name + ".bak")


def write_connection(
    config: Path, name: str, address: str, root_certificates: Path | None
) -> Path | None:
    """Add (or replace) the connection `[superlink.<name>]` in Flower's config.toml.

    The file is parsed and written as TOML (with tomli-w, as `flwr` writes it), so every other
    key and connection stays as it was; the old file is first copied to `backup_path(config)`,
    which is returned (None when there was no file). A file that is not valid TOML is left
    alone and reported in one line. Comments do not survive a rewrite: they stay in the backup.
    """
    if not _BARE_KEY.match(name):
        raise ConfigError(f"connection name {name!r}: use letters, digits, '-' and '_' only")
    check_address(address)
    entry: dict[str, Any] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        ca = root_certificates.expanduser().resolve()
        if not ca.is_file():
            raise ConfigError(
                f"--ca {str(ca)!r}: no such file; create it with docker/certs/generate.sh"
            )
        entry["root-certificates"] = str(ca)  # Flower requires an absolute path here.

    old: bytes | None = config.read_bytes() if config.is_file() else None
    try:
        data = tomllib.loads(old.decode()) if old is not None else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config}: not valid TOML ({exc}); fix or move it, then retry") from None
    tables = data.setdefault("superlink", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{config}: `superlink` is not a table; fix or move the file")
    tables[name] = entry  # a previous entry of that name goes, with its sub-tables
    text = tomli_w.dumps(data)
    if tomllib.loads(text) != data:  # what `flwr` will read must be exactly what was meant
        raise ConfigError(f"{config}: could not write [superlink.{name}]; edit it by hand")

    config.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if old is not None:
        backup = backup_path(config)
        shutil.copy2(config, backup)  # the bytes and the mode, comments included
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text(text)
    if old is not None:
        tmp.chmod(config.stat().st_mode & 0o777)
    tmp.replace(config)  # readers see the old file or the new one, never half of one
    return backup


def _let_flower_create(config: Path) -> None:
    """Have `flwr` write its default config.toml first, so its `local` connection stays."""
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    flwr = shutil.which("flwr", path=search)
    if flwr is not None and config.name == "config.toml":
        env = {**os.environ, "FLWR_HOME": str(config.parent)}
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        subprocess.run(
            [flwr, "config", "list"], env=env, capture_output=True, timeout=120, check=False
        )


# How `flwr run --run-config "k=v k2='text'"` splits its pairs (flwr.common.config).
_RUN_CONFIG_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def parse_run_config(text: str) -> dict[str, Any]:
    """The overrides of a `--run-config` string, read as `flwr run` reads them (TOML values)."""
    toml = "\n".join(f"{k} = {v}" for k, v in _RUN_CONFIG_PAIR.findall(text))
    try:
        return tomllib.loads(toml)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--run-config {text!r}: not key=value pairs of TOML ({exc})") from None


def summary_command(run_config: str) -> int:
    """After `flwr run`: the run's closing table and results path; 1 unless every arm finished.

    `flwr run --stream` exits 0 whatever happened to the run: this reads the store the
    ServerApp wrote (under the results root, fedadamw.run.outdir) to say how it ended.
    """
    from fedadamw.config import Config
    from fedadamw.results.summaries import arm_summary
    from fedadamw.run.experiment import run_id_for
    from fedadamw.run.outdir import resolve_under_root
    from fedadamw.run.progress import print_summary

    cfg = Config.from_mapping(parse_run_config(run_config))
    out_dir = resolve_under_root(cfg.out_dir, cfg.experiment)
    store = out_dir / "results.db"
    if not store.is_file():
        print_error(f"the run wrote no results store at {store}; see the run's log above")
        return 1
    print_summary([cfg], out_dir, math.nan)
    ids = [run_id_for(cfg, arm) for arm in cfg.arm_list]
    ended = {str(r["run_id"]): str(r["status"]) for r in arm_summary(store, ids)}
    bad = [
        f"{arm} {ended.get(rid, 'not started')}"
        for arm, rid in zip(cfg.arm_list, ids, strict=True)
        if ended.get(rid) != "finished"
    ]
    if bad:
        print_error(f"the run did not finish every arm ({'; '.join(bad)}); results: {store}")
        return 1
    return 0


def superexec_command(flower_args: Sequence[str]) -> int:
    """`python -m fedadamw.deploy superexec -- ARGS`: `flower-superexec ARGS`, and its end told.

    A SuperExec serves until it is stopped. Flower 1.41's stops with status 0 and only
    "terminated gracefully" when the SuperLink refuses it (a wrong or missing secret: HTTP 401
    on AcquireTask), so a supervisor would think all is well. Here a stop nobody asked for is
    an error: one line, exit 1. SIGINT and SIGTERM are passed on, and end it with its status.
    """
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    program = shutil.which("flower-superexec", path=search)
    if program is None:
        return print_error("flower-superexec is not installed; pip install flwr")
    proc = subprocess.Popen([program, *flower_args])
    asked: list[int] = []

    def forward(signum: int, frame: object) -> None:
        asked.append(signum)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if asked:
        return code if code >= 0 else 128 - code
    if code == 0:
        print_error(
            "flower-superexec stopped by itself: the SuperLink refused it or went away "
            "(check that --superexec-auth-secret-file holds the SuperLink's secret; the "
            "SuperLink's log says 'SuperExec authentication failed' for a wrong one)"
        )
        return 1
    print_error(f"flower-superexec exited with status {code}")
    return code if code > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fedadamw.deploy connect`: write the connection for `flwr run . <name>`."""
    parser = argparse.ArgumentParser(prog="python -m fedadamw.deploy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser(
        "summary", help="after `flwr run`: how its arms ended (exit 1: not all finished)"
    )
    summary.add_argument("--run-config", default="", help="the --run-config given to flwr run")
    sub.add_parser(
        "superexec",
        help="-- ARGS: run flower-superexec ARGS; exit 1 when it stops without being asked",
    )
    connect = sub.add_parser("connect", help="add the SuperLink connection to Flower's config")
    connect.add_argument("--name", default=CONNECTION_NAME, help=f"default {CONNECTION_NAME}")
    connect.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"SuperLink HOST:PORT, default {DEFAULT_ADDRESS}"
    )
    connect.add_argument(
        "--ca", type=Path, default=DEFAULT_CA, help="CA certificate (default docker/certs/ca.crt)"
    )
    connect.add_argument("--insecure", action="store_true", help="no TLS (not recommended)")
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["superexec"]:  # everything after `--` is flower-superexec's
        rest = given[1:]
        return superexec_command(rest[1:] if rest[:1] == ["--"] else rest)
    args = parser.parse_args(argv)
    if args.command == "summary":
        try:
            return summary_command(args.run_config)
        except ConfigError as exc:
            return print_error(exc)
    config = flower_config_path()
    if not config.is_file():
        _let_flower_create(config)
    try:
        backup = write_connection(
            config, args.name, args.address, None if args.insecure else args.ca
        )
    except ConfigError as exc:
        return print_error(exc)
    except OSError as exc:
        return print_error(f"{config}: cannot write ({exc.strerror or exc})")
    kept = f" (the previous file is {backup})" if backup else ""
    print(
        f"wrote [superlink.{args.name}] ({args.address}) to {config}{kept}; "
        f"start runs with: flwr run . {args.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
