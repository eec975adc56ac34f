"""The wire format between server and clients, as plain dicts (no flwr import here).

The server sends every value a client needs in the message's ConfigRecord, so simulation and
deployment behave the same: a remote client needs no file from the server's disk. Its partition
id comes from its own node config (`partition-id`), set by Flower's simulation engine or by
`flower-supernode --node-config`.

A train message's ConfigRecord is a `TrainRequest` written field by field: the key is the field's
name in kebab-case (a dataclass field, the DataSpec, is written as its own fields), the value is
checked against the field's annotation when read, and the request as a whole against the
server's own `Config` checks (the same one-line errors the CLI prints). Adding a key is adding a
field; `from_config` fills it from the Config field of the same name, and `train_spec` hands
the client hyperparameters (`fedadamw.core.training.ClientSettings`) on to the client's
`TrainSpec` by name.

Arrays travel as Flower's `Array`s: numpy's `.npy` bytes (`np.save`). `npy_bytes` and
`from_npy_bytes` write and read those bytes with each dtype and shape's header built once, where
`np.save`/`np.load` format and parse (`ast.literal_eval`) a header per array: at 100 clients a
round that was several seconds of a vmap run's ~1 s rounds.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache
from typing import Any, TypeVar, get_type_hints

import numpy as np

from fedadamw.config import Config, batch_size_list, default_config
from fedadamw.core.sampling import client_batch_size, work_fraction
from fedadamw.core.schedules import Schedule
from fedadamw.core.training import ClientSettings, TrainSpec
from fedadamw.data.split import DataSpec
from fedadamw.errors import ConfigError
from fedadamw.schema import FEDPROX, decay_mode

SERVER_ROUND = "server-round"  # added to every train config by Flower's strategy
# Fields whose key is not their kebab-case name: deployed clients read these keys.
_KEYS = {"num_clients": "num-partitions"}
_SCALARS = (str, int, float, bool)

T = TypeVar("T")
NPY = "numpy.ndarray"  # Flower's `SType.NUMPY`: an Array's data is `np.save`'s bytes


@dataclass(frozen=True, kw_only=True)
class TrainRequest(ClientSettings):
    """What every client of one arm is asked to do each round (Flower adds `server-round`).

    The client hyperparameters are `ClientSettings`' fields; these are what a client needs to
    load its data and model and to make its own draws. FedProx's μ is 0 unless
    server-optimizer = fedprox (Flower's FedProx writes it).
    """

    data: DataSpec
    model: str
    resnet_norm: str
    transformer_layers: int  # the transformer's sizes (unused by the other models)
    transformer_dim: int
    transformer_heads: int
    straggler_rate: float
    client_batch_sizes: str  # as in the config: each client draws its batch size from these
    # the schedules need the run's length
    num_server_rounds: int
    lr_schedule: str
    warmup_rounds: int
    step_rounds: int
    step_gamma: float
    restart_rounds: int
    restart_mult: float
    # whose Adam state a client keeps: moments per run key (every arm and grid point of one
    # Flower run talks to the same client processes)
    run_key: str

    @classmethod
    def from_config(cls, cfg: Config, mode: str) -> TrainRequest:
        """The request of one arm (`mode`) of a run config."""
        own = ("data", "mode", "proximal_mu", "run_key")
        rest = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name not in own}
        # The proximal term belongs to FedProx alone: every other server optimizer sends 0.
        mu = cfg.proximal_mu if cfg.server_optimizer == FEDPROX else 0.0
        key = run_key(cfg, mode)
        return cls(data=DataSpec.from_config(cfg), mode=mode, proximal_mu=mu, run_key=key, **rest)

    def to_wire(self) -> dict[str, Any]:
        """The flat kebab-case ConfigRecord content."""
        return _write(self)

    @classmethod
    def from_wire(cls, config: Mapping[str, Any]) -> TrainRequest:
        """Read a received ConfigRecord, or raise ConfigError naming the missing or bad key.

        A key this client does not know is refused too: a server newer than the client would
        otherwise see its setting silently ignored.
        """
        unknown = sorted(set(config) - set(_keys(cls)) - {SERVER_ROUND})
        if unknown:
            raise ConfigError(
                f"train message has keys this client does not know: {', '.join(unknown)}; "
                "update fedadamw on this SuperNode"
            )
        request = _read(cls, config)
        _check(request)
        return request

    def config_mapping(self) -> dict[str, Any]:
        """The config keys this request carries (its arm as `arms`), as the CLI reads them."""
        names = {f.name for f in fields(Config)}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in names}
        data = {f.name: getattr(self.data, f.name) for f in fields(self.data)}
        merged = {**values, **data, "arms": self.mode}
        return {name.replace("_", "-"): value for name, value in merged.items()}

    def train_spec(self, partition_id: int, server_round: int) -> TrainSpec:
        """What this client does in this round: the settings by name, and its own draws."""
        seed = self.data.seed
        sizes = batch_size_list(self.client_batch_sizes)
        settings = {f.name: getattr(self, f.name) for f in fields(ClientSettings)}
        # What each client draws for itself, by (seed, round, partition id).
        settings["batch_size"] = client_batch_size(seed, partition_id, sizes, self.batch_size)
        share = work_fraction(seed, server_round, partition_id, self.straggler_rate)
        return TrainSpec(
            **settings,
            seed=seed,
            partition_id=partition_id,
            server_round=server_round,
            work_fraction=share,
            schedule=Schedule.of(self),
        )


@lru_cache(maxsize=64)  # every client of an arm gets the same request each round
def _check(request: TrainRequest) -> None:
    """Raise the ConfigError `fedadamw run` raises for the same values (one line).

    The request's keys over the client's defaults, read as the CLI reads a config: every
    check of a client setting (and of how they fit together) is the server's own.
    """
    Config.from_mapping(request.config_mapping(), default_config())
    decay_mode(request.mode)  # one arm: not a list of them, which `arms` would accept


def run_key(cfg: Config, mode: str) -> str:
    """A short hash of the run's config with its arm: whose Adam state a client keeps."""
    text = json.dumps({**cfg.to_dict(), "arms": mode}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def server_round(config: Mapping[str, Any]) -> int:
    """The round a train message belongs to (the key Flower adds)."""
    value: int = _value(config, SERVER_ROUND, int)
    return value


_Schema = list[tuple[str, str | None, type]]
# Read for every message: a thousand clients a round would resolve the type hints 1,000 times.
_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    """(field, key, type) per field; key None for a nested dataclass (written flat)."""
    if cls not in _SCHEMAS:
        _SCHEMAS[cls] = _build_schema(cls)
    return _SCHEMAS[cls]


def _build_schema(cls: type) -> _Schema:
    hints = get_type_hints(cls)
    schema: list[tuple[str, str | None, type]] = []
    for f in fields(cls):
        kind = hints[f.name]
        if isinstance(kind, type) and is_dataclass(kind):
            schema.append((f.name, None, kind))
        elif kind in _SCALARS:
            schema.append((f.name, _KEYS.get(f.name, f.name.replace("_", "-")), kind))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: a ConfigRecord holds str/int/float/bool")
    return schema


def _keys(cls: type) -> list[str]:
    """Every wire key of `cls`, nested dataclasses written flat."""
    return [k for name, key, kind in _schema(cls) for k in (_keys(kind) if key is None else [key])]


def _write(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key, _ in _schema(type(obj)):
        value = getattr(obj, name)
        if key is None:
            out.update(_write(value))
        else:
            out[key] = value
    return out


def _read(cls: type[T], config: Mapping[str, Any]) -> T:
    values = {
        name: _read(kind, config) if key is None else _value(config, key, kind)
        for name, key, kind in _schema(cls)
    }
    return cls(**values)


def _value(config: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in config:
        raise ConfigError(f"train message lacks config key {key!r}")
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"train message key {key!r}: {value!r} is not a {kind.__name__}")
    return value


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as `np.save` writes it (byte for byte when `array` is C-ordered)."""
    if array.dtype.hasobject:
        raise TypeError(f"cannot send an array of dtype {array.dtype} (it would need pickle)")
    return _npy_header(array.dtype.str, tuple(array.shape)) + array.tobytes(order="C")


def from_npy_bytes(dtype: str, shape: Sequence[int], data: bytes) -> np.ndarray | None:
    """The read-only array in `data` if it is exactly what `npy_bytes` writes for `dtype` and
    `shape`; None for anything else (another header, a size mismatch, a bad dtype): the caller
    then reads it with `np.load`, which parses any valid `.npy` and refuses the rest.
    """
    try:
        kind = np.dtype(dtype)
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        return None
    if kind.hasobject or any(n < 0 for n in dims):
        return None
    count = math.prod(dims)
    if count * kind.itemsize > len(data):  # also keeps a forged huge shape from allocating
        return None
    header = _npy_header(kind.str, dims)
    if len(data) != len(header) + count * kind.itemsize or not data.startswith(header):
        return None
    return np.frombuffer(data, kind, count=count, offset=len(header)).reshape(dims)


@lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """`np.save`'s header (magic, version, dict, padding) for an array of this dtype and shape."""
    kind = np.dtype(dtype)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, kind), allow_pickle=False)
    written = buffer.getvalue()
    return written[: len(written) - math.prod(shape) * kind.itemsize]
