"""The run configuration: flat kebab-case keys, validated once into a frozen dataclass.

Defaults live in exactly one place, `[tool.flwr.app.config]` of the project's pyproject.toml,
which `flwr run .` also reads. Every value that enters the framework (pyproject, an experiment
TOML file, `--set KEY=VALUE`, Flower's run config) goes through `Config.from_mapping`, which
raises `ConfigError` naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from fedadamw.data.registry import REGISTRY
from fedadamw.errors import ConfigError
from fedadamw.schema import (
    BATCHED_ENGINES,
    DECAY_MODES,
    DECAY_PARAMS,
    DECAY_SCALINGS,
    DECAY_SCHEDULES,
    ENGINES,
    LOCAL_STATE,
    LR_SCHEDULES,
    MODEL_INPUTS,
    MODELS,
    NORMS,
    OPTIMIZER_STATES,
    PARTITIONERS,
    RESET_STATE,
    SERVER_OPTIMIZERS,
    DecayMode,
)

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Clients train in float32: a learning rate or decay beyond this overflows on the first step.
FLOAT32_MAX = 3.4028234663852886e38
# An experiment name becomes a folder name (runs/<experiment>) and part of every run id.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


Scalar = bool | int | float | str


@dataclass(frozen=True)
class Config:
    """A validated run configuration; field names are the kebab-case keys with underscores."""

    experiment: str
    dataset: str
    model: str
    num_clients: int
    fraction_train: float
    num_server_rounds: int
    local_epochs: int
    local_steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    arms: str
    partitioner: str
    dirichlet_alpha: float
    classes_per_client: int
    shards_per_client: int
    min_partition_size: int
    val_fraction: float
    synthetic_alpha: float
    synthetic_beta: float
    synthetic_iid: bool
    shakespeare_min_chars: int
    resnet_norm: str
    transformer_layers: int
    transformer_dim: int
    transformer_heads: int
    seed: int
    out_dir: str
    track_decay: bool
    dropout_rate: float
    straggler_rate: float
    client_batch_sizes: str
    engine: str
    pairs_limit: int
    checkpoint_every: int  # keep the global model every k rounds (0: only the last)
    # schedules (fedadamw.core.schedules) and which tensors decay
    lr_schedule: str
    warmup_rounds: int
    step_rounds: int
    step_gamma: float
    restart_rounds: int
    restart_mult: float
    decay_schedule: str
    decay_scaling: str
    decay_params: str
    # server optimizers and FedProx
    server_optimizer: str
    server_learning_rate: float
    server_momentum: float
    server_tau: float
    server_beta1: float
    server_beta2: float
    proximal_mu: float
    # Adam's state across rounds
    optimizer_state: str

    def __post_init__(self) -> None:
        check_limits(self)
        _check(
            self,
            "experiment",
            bool(_PLAIN_NAME.match(self.experiment)),
            "a plain name of letters, digits, '.', '_' and '-' (at most 64; it names a folder)",
        )
        _check_choice(self, "dataset", tuple(REGISTRY))
        _check_choice(self, "model", MODELS)
        _check(self, "num-clients", self.num_clients >= 1, "an integer >= 1")
        _check(self, "fraction-train", 0.0 < self.fraction_train <= 1.0, "a number in (0, 1]")
        _check(self, "num-server-rounds", self.num_server_rounds >= 1, "an integer >= 1")
        _check(self, "local-epochs", self.local_epochs >= 1, "an integer >= 1")
        _check(
            self,
            "local-steps",
            self.local_steps >= 0,
            "an integer >= 0 (0: local-epochs decides the steps)",
        )
        _check(self, "batch-size", self.batch_size >= 1, "an integer >= 1")
        _check(
            self,
            "learning-rate",
            0.0 < self.learning_rate <= FLOAT32_MAX,
            "a finite number > 0 that float32 can hold (<= 3.4e38)",
        )
        _check(
            self,
            "weight-decay",
            0.0 <= self.weight_decay <= FLOAT32_MAX,
            "a finite number >= 0 that float32 can hold (<= 3.4e38)",
        )
        for arm in self.arm_list:
            if arm not in DECAY_MODES:
                raise ConfigError(
                    f"arms: unknown mode {arm!r} in {self.arms!r}; "
                    f"allowed: comma-separated {', '.join(DECAY_MODES)}"
                )
        if len(set(self.arm_list)) != len(self.arm_list):
            raise ConfigError(f"arms: {self.arms!r} names a mode twice; each arm runs once")
        _check_choice(self, "partitioner", PARTITIONERS)
        _check(self, "dirichlet-alpha", self.dirichlet_alpha > 0.0, "a finite number > 0")
        _check(self, "classes-per-client", self.classes_per_client >= 1, "an integer >= 1")
        _check(self, "shards-per-client", self.shards_per_client >= 1, "an integer >= 1")
        _check(self, "min-partition-size", self.min_partition_size >= 0, "an integer >= 0")
        _check(self, "val-fraction", 0.0 <= self.val_fraction < 1.0, "a number in [0, 1)")
        _check(self, "synthetic-alpha", self.synthetic_alpha >= 0.0, "a finite number >= 0")
        _check(self, "synthetic-beta", self.synthetic_beta >= 0.0, "a finite number >= 0")
        _check(
            self,
            "shakespeare-min-chars",
            self.shakespeare_min_chars >= 1,
            "an integer >= 1 (characters a role needs to be a client)",
        )
        _check_choice(self, "resnet-norm", NORMS)
        _check(self, "transformer-layers", self.transformer_layers >= 1, "an integer >= 1")
        _check(self, "transformer-heads", self.transformer_heads >= 1, "an integer >= 1")
        _check(
            self,
            "transformer-dim",
            self.transformer_dim >= 1 and self.transformer_dim % self.transformer_heads == 0,
            f"an integer >= 1 divisible by transformer-heads = {self.transformer_heads}",
        )
        _check(self, "seed", self.seed >= 0, "an integer >= 0")
        _check(self, "dropout-rate", 0.0 <= self.dropout_rate < 1.0, "a number in [0, 1)")
        _check(self, "straggler-rate", 0.0 <= self.straggler_rate <= 1.0, "a number in [0, 1]")
        sizes = self.client_batch_size_list
        _check(
            self, "client-batch-sizes", all(b >= 1 for b in sizes), "comma-separated integers >= 1"
        )
        _check_choice(self, "engine", ENGINES)
        _check(self, "pairs-limit", self.pairs_limit >= 2, "an integer >= 2")
        _check(
            self,
            "checkpoint-every",
            self.checkpoint_every >= 0,
            "an integer >= 0 (0: keep only the last round's checkpoint)",
        )
        _check_schedules(self)
        # server optimizers and FedProx
        _check_choice(self, "server-optimizer", SERVER_OPTIMIZERS)
        _check(
            self,
            "server-learning-rate",
            0.0 < self.server_learning_rate <= FLOAT32_MAX,
            "a finite number > 0 that float32 can hold (<= 3.4e38)",
        )
        _check(self, "server-momentum", 0.0 <= self.server_momentum < 1.0, "a number in [0, 1)")
        _check(self, "server-tau", self.server_tau > 0.0, "a finite number > 0")
        _check(self, "server-beta1", 0.0 <= self.server_beta1 < 1.0, "a number in [0, 1)")
        _check(self, "server-beta2", 0.0 <= self.server_beta2 < 1.0, "a number in [0, 1)")
        _check(self, "proximal-mu", self.proximal_mu >= 0.0, "a finite number >= 0")
        _check_choice(self, "optimizer-state", OPTIMIZER_STATES)
        check_compatible(self)

    @property
    def arm_list(self) -> list[str]:
        """The decay modes to run, in order."""
        return [a.strip() for a in self.arms.split(",") if a.strip()] or [""]

    @property
    def modes(self) -> list[DecayMode]:
        """The records of the decay modes to run, in order (`arm_list` once it is checked)."""
        return [DECAY_MODES[a] for a in self.arm_list]

    @property
    def client_batch_size_list(self) -> list[int]:
        """Batch sizes clients draw from (by partition id); empty: every client uses batch-size."""
        return batch_size_list(self.client_batch_sizes)

    @property
    def clients_per_round(self) -> int:
        """How many clients train in each round (at least one)."""
        return max(1, int(self.num_clients * self.fraction_train))

    def to_dict(self) -> dict[str, Scalar]:
        """The kebab-case mapping of this config (what config.json and the store hold)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> str:
        """Stable JSON of the kebab-case mapping."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: Config | None = None, *, strings: bool = False
    ) -> Config:
        """Build a Config from kebab-case keys over `base` (default: the pyproject defaults).

        Values must have their key's type (a TOML file, Flower's run config, JSON); with
        `strings` they may also be text to parse (`--set KEY=VALUE`).
        """
        types = _field_types()
        merged: dict[str, Any] = dict(base.to_dict()) if base is not None else {}
        if base is None and not set(types) <= set(values):
            merged.update(defaults())  # Flower's run config already carries every default
        for key, raw in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown config key {key!r}; allowed keys: {', '.join(sorted(types))}"
                )
            merged[key] = _coerce(key, raw, types[key], strings)
        missing = sorted(set(types) - set(merged))
        if missing:
            raise ConfigError(f"config keys without a value: {', '.join(missing)}")
        return cls(**{k.replace("-", "_"): v for k, v in merged.items() if k in types})


# Every integer key is stored in SQLite (INTEGER: 64-bit) and reaches numpy and torch: it must
# fit in a signed 64-bit integer. The seed seeds torch.manual_seed and numpy's generators.
INT64_LIMIT = 2**63
# Keys that size what is allocated or looped over get a bound a machine can reach (a value
# above it would run out of memory or time instead of failing in one line).
INT_BOUNDS = {
    "num-clients": 1_000_000,
    "num-server-rounds": 1_000_000,
    "local-epochs": 100_000,
    "local-steps": 100_000_000,
    "batch-size": 1_000_000,
    "pairs-limit": 100_000,
    "checkpoint-every": 1_000_000,
}


def check_limits(cfg: Config) -> None:
    """ConfigError for a number outside what its type can carry through the run.

    Integers: a bool is not one, and each is below 2**63 (or its `INT_BOUNDS` bound); floats:
    finite and within float32's range, which clients train in.
    """
    for f in fields(cfg):
        key, value = f.name.replace("_", "-"), getattr(cfg, f.name)
        if f.type == "int":
            bound = INT_BOUNDS.get(key, INT64_LIMIT - 1)
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok or not -bound <= value <= bound:
                raise ConfigError(
                    f"{key}: {value!r} is not allowed; expected an integer of at most "
                    f"{bound:,} (and at least {-bound:,})"
                    if ok
                    else f"{key}: {value!r} is not allowed; expected an integer"
                )
        elif f.type == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                raise ConfigError(
                    f"{key}: {value!r} is not allowed; expected a finite number that float32 "
                    "can hold (|x| <= 3.4e38)"
                )


def batch_size_list(text: str) -> list[int]:
    """The integers of a `client-batch-sizes` value ('16,32,64'), or ConfigError."""
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(
            f"client-batch-sizes: {text!r} is not allowed; "
            "expected comma-separated integers >= 1, e.g. '16,32,64'"
        ) from None


def _field_types() -> dict[str, type]:
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name.replace("_", "-"): hints[str(f.type)] for f in fields(Config)}


def _coerce(key: str, raw: Any, kind: type, strings: bool = False) -> Scalar:
    """Turn a TOML value or a `--set` string into the field's type, or raise ConfigError."""
    if isinstance(raw, str) and kind is not str and not strings:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise ConfigError(
            f"{key}: {raw!r} is not allowed; expected {expected}, not a string "
            "(write it without quotes)"
        )
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{key}: {raw!r} is not allowed; expected a string")
        return raw
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(f"{key}: {raw!r} is not allowed; expected true or false")
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: {raw!r} is not allowed; expected a number")
    if kind is int:
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: {raw!r} is not allowed; expected an integer")
    value: float
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{key}: {raw!r} is not allowed; expected a number") from None
    else:
        raise ConfigError(f"{key}: {raw!r} is not allowed; expected a number")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: {raw!r} is not allowed; expected a finite number")
    return value


def model_fits(takes: str, kind: str) -> bool:
    """Whether a model that takes `takes` (MODEL_INPUTS) fits examples of `kind`."""
    return takes == kind or (takes == "any" and kind in ("vector", "image"))


def check_compatible(cfg: Config) -> None:
    """Raise ConfigError when the model, data set and partitioner do not fit together."""
    data = REGISTRY[cfg.dataset]
    takes, has = MODEL_INPUTS[cfg.model], data.kind
    if not model_fits(takes, has):
        fits = [m for m in MODELS if model_fits(MODEL_INPUTS[m], has)]
        raise ConfigError(
            f"model: {cfg.model!r} does not fit dataset {cfg.dataset!r} ({has} examples); "
            f"expected one of {', '.join(fits)}"
        )
    if cfg.partitioner == "natural-id" and not data.natural_clients:
        natural = [name for name, d in REGISTRY.items() if d.natural_clients]
        raise ConfigError(
            f"partitioner: 'natural-id' is not allowed with dataset {cfg.dataset!r}, which has no "
            f"client column; natural-id needs one of {', '.join(natural)}"
        )
    if data.generated_per_client and cfg.partitioner != "natural-id":
        # Synthetic(α, β) is generated client by client: its split is the generator's clients.
        raise ConfigError(
            f"partitioner: {cfg.partitioner!r} is not allowed with dataset {cfg.dataset!r}; "
            "expected natural-id (one partition per generated client)"
        )
    if cfg.engine in BATCHED_ENGINES and cfg.model == "resnet20" and cfg.resnet_norm == "batch":
        # Lockstep batches are padded to the widest client: padded rows would enter BatchNorm's
        # batch statistics, and its running statistics are updated in place, per module.
        raise ConfigError(
            f"engine: {cfg.engine!r} is not allowed with model 'resnet20' and resnet-norm 'batch' "
            "(BatchNorm); set resnet-norm=group or engine=flower"
        )

    # the server-decay arm shrinks FedAvg's aggregate; a server optimizer that
    # steps from the aggregate (momentum, adaptive) would step from the undecayed one.
    server = [m.name for m in cfg.modes if m.server_decays]
    if server and cfg.server_optimizer not in ("fedavg", "fedprox"):
        raise ConfigError(
            f"server-optimizer: {cfg.server_optimizer!r} is not allowed with the "
            f"{server[0]!r} arm; expected fedavg or fedprox, or drop that arm"
        )
    _check_optimizer_state(cfg)


def _check_optimizer_state(cfg: Config) -> None:
    """Keeping Adam's moments needs Adam, a client process that lasts, and an exact split."""
    state = cfg.optimizer_state
    if state == RESET_STATE:
        return
    if cfg.engine in BATCHED_ENGINES:
        # The cohort engine keeps no per-partition store of moments (yet).
        raise ConfigError(
            f"engine: {cfg.engine!r} is not allowed with optimizer-state {state!r}; "
            "set optimizer-state=reset or engine=flower"
        )
    sgd = [m.name for m in cfg.modes if not m.adam]
    if sgd:
        raise ConfigError(
            f"optimizer-state: {state!r} is not allowed with arms {', '.join(sgd)} (no Adam "
            "moments to keep); expected reset, or Adam arms only"
        )
    if state == LOCAL_STATE and cfg.track_decay and any(m.coupled for m in cfg.modes):
        # The decay part of a first moment carried over from an earlier round is unknown.
        raise ConfigError(
            "optimizer-state: 'local' is not allowed with track-decay and a coupled arm "
            "(the carried first moment has no decay/data split); expected reset or server-averaged"
        )


def _check_schedules(cfg: Config) -> None:
    """The schedule keys: schedules, decay schedules, decay scaling, decayed tensors."""
    _check_choice(cfg, "lr-schedule", LR_SCHEDULES)
    _check(cfg, "warmup-rounds", cfg.warmup_rounds >= 0, "an integer >= 0")
    _check(cfg, "step-rounds", cfg.step_rounds >= 1, "an integer >= 1")
    _check(cfg, "step-gamma", 0.0 < cfg.step_gamma <= 1.0, "a number in (0, 1]")
    _check(cfg, "restart-rounds", cfg.restart_rounds >= 1, "an integer >= 1")
    _check(cfg, "restart-mult", cfg.restart_mult >= 1.0, "a number >= 1")
    _check_choice(cfg, "decay-schedule", DECAY_SCHEDULES)
    _check_choice(cfg, "decay-scaling", DECAY_SCALINGS)
    _check_choice(cfg, "decay-params", DECAY_PARAMS)
    warmup = cfg.lr_schedule == "warmup-cosine" or cfg.decay_schedule == "after-warmup"
    if warmup and not 1 <= cfg.warmup_rounds < cfg.num_server_rounds:
        # The warmup needs a step, and a cosine (or λ_post) after it needs one too.
        raise ConfigError(
            f"warmup-rounds: {cfg.warmup_rounds!r} is not allowed with lr-schedule "
            f"{cfg.lr_schedule!r} and decay-schedule {cfg.decay_schedule!r}; expected an "
            f"integer in [1, num-server-rounds = {cfg.num_server_rounds})"
        )
    plain = (
        cfg.lr_schedule == "constant"
        and cfg.decay_schedule == "constant"
        and cfg.decay_scaling == "torch"
        and cfg.decay_params == "matrices"
    )
    server = [m.name for m in cfg.modes if m.server_decays]
    if server and not plain:
        # The server's factor f = Σ pᵢ(1 − ηλ)^τᵢ assumes one constant ηλ on matrices.
        raise ConfigError(
            f"arms: {server[0]!r} is not allowed with lr-schedule {cfg.lr_schedule!r}, "
            f"decay-schedule {cfg.decay_schedule!r}, decay-scaling {cfg.decay_scaling!r}, "
            f"decay-params {cfg.decay_params!r}; expected constant, constant, torch, matrices"
        )


def _check(cfg: Config, key: str, ok: bool, allowed: str) -> None:
    if not ok:
        value = getattr(cfg, key.replace("-", "_"))
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {allowed}")


def _check_choice(cfg: Config, key: str, choices: tuple[str, ...]) -> None:
    _check(cfg, key, getattr(cfg, key.replace("-", "_")) in choices, "one of " + ", ".join(choices))


@cache
def defaults() -> dict[str, Scalar]:
    """The defaults of `[tool.flwr.app.config]` in the project's pyproject.toml (read once)."""
    if not PYPROJECT.is_file():
        raise ConfigError(
            f"cannot find {PYPROJECT}, which holds the defaults; "
            "install the project from its checkout with `pip install -e .`"
        )
    with PYPROJECT.open("rb") as fh:
        table = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    return dict(table)


def default_config() -> Config:
    """The validated defaults."""
    return Config.from_mapping({})


def parse_assignment(text: str) -> tuple[str, str]:
    """Split a `KEY=VALUE` command-line override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set weight-decay=0.05")
    return key.strip(), value.strip()
