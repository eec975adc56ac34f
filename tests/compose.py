"""docker-compose.yml's commands, turned into loopback processes for the deployment tests.

`docker-compose.yml` is the one place that says how the SuperLink, the ServerApp process and
the SuperNodes are started. This module reads it (plus override files, merged with the part
of Compose's rules those files use) and rewrites a service's entrypoint + command and its
environment so that it runs as a plain process on 127.0.0.1: compose service names become
127.0.0.1, each listening port a free port, container paths the host folders mounted there.
The deployment tests start exactly these commands, so the compose file and the tests cannot
drift apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedadamw.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
LOOPBACK = "127.0.0.1"
_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)$")
# ${VAR}, ${VAR:-default} (default when unset or empty), ${VAR-default} (when unset), $$.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


@dataclass(frozen=True)
class Service:
    """One compose service as the container runs it."""

    name: str
    argv: tuple[str, ...]  # entrypoint + command, variables substituted
    environment: dict[str, str]
    binds: dict[str, Path]  # container path -> host path (bind mounts)
    volumes: dict[str, str]  # container path -> named volume
    published: tuple[str, ...] = ()  # `ports:` entries, [HOST_IP:]HOST_PORT:CONTAINER_PORT

    def ports(self) -> list[int]:
        """The ports this service listens on (its `--port` values)."""
        return [int(v) for flag, v in _flags(self.argv) if flag == "--port" and v is not None]


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution in one string."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.groups()
        value = env.get(name)
        if (op == ":-" and not value) or (op == "-" and value is None):
            return str(default)
        return value or ""

    return _VARIABLE.sub(substitute, text)


def load_services(
    files: Sequence[Path] = (COMPOSE_FILE,), env: Mapping[str, str] | None = None
) -> dict[str, Service]:
    """The services of `files`, merged like `docker compose -f A -f B` (paths relative to A)."""
    env = dict(os.environ if env is None else env)
    merged: dict[str, dict[str, Any]] = {}
    for path in files:
        if not path.is_file():
            raise ConfigError(f"compose file {str(path)!r}: no such file")
        data = yaml.safe_load(path.read_text()) or {}
        for name, spec in (data.get("services") or {}).items():
            merged[name] = _merge_service(merged.get(name, {}), spec)
    base = files[0].resolve().parent
    return {name: _service(name, spec, base, env) for name, spec in merged.items()}


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge for the keys these files use: mappings merge, `volumes` merge by
    container path, anything else (entrypoint, command, ...) is replaced."""
    out = dict(base)
    for key, value in override.items():
        if key == "volumes":
            by_target = {_mount_target(v): v for v in base.get("volumes", [])}
            by_target.update({_mount_target(v): v for v in value})
            out[key] = list(by_target.values())
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def _mount_target(spec: str | dict[str, Any]) -> str:
    if isinstance(spec, dict):
        return str(spec["target"])
    parts = spec.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _service(name: str, spec: dict[str, Any], base: Path, env: Mapping[str, str]) -> Service:
    argv: list[str] = []
    for key in ("entrypoint", "command"):
        value = spec.get(key, [])
        if not isinstance(value, list):
            # A shell-form string would need a shell to split: the loopback runner has none.
            raise ConfigError(f"service {name!r}: {key} must be a list (exec form)")
        argv += [interpolate(str(v), env) for v in value]
    if not argv:
        raise ConfigError(f"service {name!r} has neither entrypoint nor command")
    raw_env = spec.get("environment", {})
    if isinstance(raw_env, list):
        raw_env = dict(item.split("=", 1) for item in raw_env)
    environment = {k: interpolate(str(v), env) for k, v in raw_env.items()}
    binds: dict[str, Path] = {}
    volumes: dict[str, str] = {}
    for mount in spec.get("volumes", []):
        if isinstance(mount, dict):
            source, target = str(mount.get("source", "")), str(mount["target"])
        else:
            parts = mount.split(":")  # SOURCE:TARGET[:MODE], or TARGET (anonymous volume)
            source, target = ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        source = interpolate(source, env)
        if source.startswith((".", "/", "~")):
            binds[target] = (base / Path(source).expanduser()).resolve()
        else:
            volumes[target] = source
    published = tuple(interpolate(str(p), env) for p in spec.get("ports", []))
    return Service(name, tuple(argv), environment, binds, volumes, published)


def _flags(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """(flag, value) of each `--flag=value` or `--flag value` item; (item, None) otherwise."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--") and "=" in item:
            flag, value = item.split("=", 1)
            out.append((flag, value))
        elif item.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((item, argv[i + 1]))
            i += 1
        else:
            out.append((item, None))
        i += 1
    return out


def _container_paths(
    service: Service,
    volumes: Mapping[str, Path] | None,
    relocate: Mapping[Path, Path] | None,
) -> Callable[[str], str]:
    """A function mapping a container path of `service` to the host path mounted there."""
    mounts: dict[str, Path] = {}
    for target, source in service.binds.items():
        for old, new in (relocate or {}).items():
            if source == old.resolve() or old.resolve() in source.parents:
                source = new / source.relative_to(old.resolve())
        mounts[target] = source
    unmapped: dict[str, str] = {}
    for target, volume in service.volumes.items():
        if volumes is not None and volume in volumes:
            mounts[target] = volumes[volume]
        else:
            unmapped[target] = volume

    def under(text: str, target: str) -> bool:
        return text == target or text.startswith(target.rstrip("/") + "/")

    def host_path(text: str) -> str:
        for target in sorted(mounts, key=len, reverse=True):
            if under(text, target):
                return str(mounts[target]) + text[len(target) :]
        for target, volume in unmapped.items():
            if under(text, target):
                raise ConfigError(
                    f"service {service.name!r} uses {text} on volume {volume!r}: "
                    "give that volume a host folder"
                )
        return text

    return host_path


def loopback_argv(
    service: Service,
    ports: Mapping[tuple[str, int], int],
    services: Sequence[str] = (),
    volumes: Mapping[str, Path] | None = None,
    relocate: Mapping[Path, Path] | None = None,
) -> list[str]:
    """`service`'s argv for a process on 127.0.0.1.

    `ports` maps (service, container port) to the loopback port; `services` are the compose
    service names that addresses may name; `volumes` maps a named volume to a host folder;
    `relocate` maps a bind mount's host folder to another one (e.g. freshly made certificates).
    """
    host_path = _container_paths(service, volumes, relocate)

    def port(owner: str, number: str) -> str:
        key = (owner, int(number))
        if key not in ports:
            raise ConfigError(f"no loopback port for {owner}:{number}; pass it in `ports`")
        return str(ports[key])

    def value(flag: str, text: str) -> str:
        if flag == "--host":  # listen on loopback only, whatever the container binds to
            return LOOPBACK
        if flag == "--port":
            return port(service.name, text)
        address = _ADDRESS.match(text)
        if address and address["host"] in services:
            return f"{LOOPBACK}:{port(address['host'], address['port'])}"
        return host_path(text)

    return [
        flag if val is None else f"{flag}={value(flag, val)}" for flag, val in _flags(service.argv)
    ]


def loopback_environment(
    service: Service,
    volumes: Mapping[str, Path] | None = None,
    relocate: Mapping[Path, Path] | None = None,
) -> dict[str, str]:
    """`service`'s environment for a process on 127.0.0.1: container paths become host paths."""
    host_path = _container_paths(service, volumes, relocate)
    return {
        key: host_path(value) if value.startswith("/") else value
        for key, value in service.environment.items()
    }
