"""Every name the layers share: decay modes, vocabularies, statistics, columns, reply keys.

One place for each: the trainer, the server, the store and the views import these names
instead of spelling them, and this module imports nothing heavier than the standard library,
so the read side (`fedadamw compare`, `report`, the dashboard) starts without torch or Flower.
See docs/design.md for what each statistic and column means.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedadamw.errors import ConfigError


# -- decay modes (the optimizer axis; fedadamw.core.optim builds them) -----------------------
@dataclass(frozen=True)
class DecayMode:
    """One decay mode: which optimizer clients run and who applies λ, and how.

    Code asks the record (`mode.adam`, `mode.coupled`, ...) instead of comparing names; the
    name is data (store values, labels, experiment files).
    """

    name: str
    adam: bool  # clients run Adam (else plain SGD without momentum)
    coupled: bool  # λw joins the gradient (L2), else the weights shrink by ηλ (decoupled)
    client_decays: bool  # clients apply λ (`none`, `server-decay`: their optimizer ignores it)
    server_decays: bool = False  # the server shrinks the aggregate (fedadamw.core.server_decay)

    @property
    def decays(self) -> bool:
        """Whether λ means anything to this mode (`none`: it does not)."""
        return self.client_decays or self.server_decays

    @property
    def decoupled(self) -> bool:
        """Clients shrink their weights by ηλ per step (the shrink `decay-scaling` defines)."""
        return self.client_decays and not self.coupled


# `server-decay`: clients train with Adam and no decay; the server shrinks the aggregate by the
# decoupled factor the clients would have applied (fedadamw.core.server_decay).
DECAY_MODES: dict[str, DecayMode] = {
    m.name: m
    for m in (
        DecayMode("decoupled", adam=True, coupled=False, client_decays=True),
        DecayMode("coupled", adam=True, coupled=True, client_decays=True),
        DecayMode("none", adam=True, coupled=False, client_decays=False),
        DecayMode("sgd-coupled", adam=False, coupled=True, client_decays=True),
        DecayMode("sgd-decoupled", adam=False, coupled=False, client_decays=True),
        DecayMode(
            "server-decay", adam=True, coupled=False, client_decays=False, server_decays=True
        ),
    )
}


def decay_mode(name: str, key: str = "mode") -> DecayMode:
    """The record of decay mode `name`, or ConfigError naming `key` and what is allowed."""
    if name not in DECAY_MODES:
        raise ConfigError(
            f"{key}: {name!r} is not allowed; expected one of {', '.join(DECAY_MODES)}"
        )
    return DECAY_MODES[name]


# -- vocabularies of the config (fedadamw.config checks them) --------------------------------
PARTITIONERS = (
    "iid",
    "dirichlet",
    "pathological",
    "shards",
    "exponential",
    "linear",
    "natural-id",
)
# What each model takes (the kinds of fedadamw.data.registry.example_kind): mlp and logreg
# flatten any float example (vector or image, not token ids); the convolutions need their shape;
# the transformer takes token windows. fedadamw.core.models builds them.
MODEL_INPUTS = {
    "cnn1d": "vector",
    "mlp": "any",
    "cnn": "image",
    "resnet20": "image",
    "logreg": "any",
    "transformer": "tokens",
}
MODELS = tuple(MODEL_INPUTS)
NORMS = ("batch", "group")
# How a round's clients train: Flower's simulation engine (Ray actors), the vectorized cohort
# engine (every sampled client in lockstep in one process, `fedadamw.core.cohort`), or the grid
# engine (the clients of many runs of a sweep in lockstep, `server.run_batch`).
ENGINES = ("flower", "vmap", "grid")
# The engines that train stacked clients with `fedadamw.core.cohort.train_cohort`.
BATCHED_ENGINES = ("vmap", "grid")

# -- server optimizers and Adam's state across rounds ----------------------------
# Flower's own strategies (server/strategy.py); `fedprox` adds (μ/2)‖w − w_global‖² locally.
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox")
FEDPROX = "fedprox"
# Adam's moments between rounds: fresh every round, kept by each client (Flower's Context.state),
# or second moments averaged by the server (FedAdamW, Liu et al. 2025).
RESET_STATE = "reset"  # fresh Adam moments every round
LOCAL_STATE = "local"  # each client keeps its own moments between rounds
SERVER_AVERAGED = "server-averaged"  # FedAdamW: the server averages the second moments
OPTIMIZER_STATES = (RESET_STATE, LOCAL_STATE, SERVER_AVERAGED)
ADAM_V = "adam-v"  # the ArrayRecord of second moments (reply and, averaged, train message)
OPTIMIZER_STEPS = "optimizer-steps"  # reply metric: the Adam step count a client started from
OPTIMIZER_STEPS_COLUMN = "optimizer_steps"  # its clients column (0: fresh moments)

# -- divergence statistics (fedadamw.core.divergence computes them) --------------------------
STAT_NAMES: tuple[str, ...] = (
    "mean_pairwise_cosine",
    "min_pairwise_cosine",
    "resultant_length",
    "dispersion",
    "mean_cosine_to_aggregate",
    "relative_drift",
    "gradient_diversity",
    "mean_update_norm",
)
# The whole update and, with track-decay, its decay and data parts (prefixes of columns).
PARTS = {"": "whole update", "data_": "data part", "decay_": "decay part"}
STAT_COLUMNS = tuple(f"{prefix}{name}" for prefix in ("", "decay_", "data_") for name in STAT_NAMES)
SHRINK_QUANTILES = ("p5", "p50", "p95")
SHRINK_COLUMNS = tuple(f"shrink_{q}" for q in SHRINK_QUANTILES)
# Σ|decay step| / Σ|w| over decayed weights and local steps (rounds and clients, track-decay):
# the mean shrink per step that the decay actually applied, ηλ for decoupled decay.
EFFECTIVE_SHRINK = "effective_shrink"
# The global model on the union of the clients' held-out validation rows (rounds).
VAL_LOSS, VAL_ACCURACY = "val_loss", "val_accuracy"

# -- a train reply's MetricRecord (numbers only: FedAvg averages every key) ------------------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
LOCAL_STEPS = "local-steps"
PARTITION_ID = "partition-id"
REPLY_METRICS = (NUM_EXAMPLES, TRAIN_LOSS, LOCAL_STEPS, PARTITION_ID)  # required in every reply
BATCH_SIZE = "batch-size"  # the batch size this client used (client-batch-sizes)
WORK_FRACTION = "work-fraction"  # share of its local steps it did (stragglers < 1)
TRAIN_SECONDS = "train-seconds"  # wall time of local training on the client
DECAY_PART = "decay-part"  # the reply's second ArrayRecord with track-decay: Δ_decay
# With track-decay, over decayed weights and local steps: Σₜ|decay stepₜ| and Σₜ|wₜ| (their
# ratio is the client's effective shrink; the server sums both over clients, so it is exact).
DECAY_STEP_SUM = "decay-step-sum"
WEIGHT_SUM = "weight-sum"


def shrink_key(quantile: str) -> str:
    """The MetricRecord key of one shrink-ratio quantile ("p5" → "shrink-p5")."""
    return f"shrink-{quantile}"


# -- run statuses in the store ---------------------------------------------------------------
PENDING, RUNNING, FINISHED, INTERRUPTED = "pending", "running", "finished", "interrupted"
FAILED_PREFIX = "failed: "

# -- what makes a setting ---------------------------------------------------------------------
# Config keys that never define an experimental condition: where and what ran (`arms`,
# `out-dir`, `experiment`) and the replicate (`seed`). A *setting* is the rest of a run's
# config; a *condition* is a setting run in one mode.
BOOKKEEPING_KEYS = frozenset({"arms", "out-dir", "experiment"})
REPLICATE_KEYS = frozenset({"seed"})
NON_SETTING_KEYS = BOOKKEEPING_KEYS | REPLICATE_KEYS
# The optimizer's own keys: each mode has its own best values, so `fedadamw compare` tunes every
# mode over these (on validation) instead of pairing modes at one shared value. A key that
# another optimizer axis adds (a schedule, a server optimizer) joins by being listed here.
OPTIMIZER_KEYS: tuple[str, ...] = ("learning-rate", "weight-decay")
DECAY_KEY = "weight-decay"  # λ = 0 is no decay: never a decay mode's tuned value

# Keys that mean something only while another key has one of some values (an IID split has no
# α): labels of settings and conditions leave them out elsewhere, so a label never names a
# value the run did not use.
_ONLY_UNDER: dict[str, tuple[tuple[str, tuple[Any, ...]], ...]] = {
    "dirichlet-alpha": (("partitioner", ("dirichlet",)),),
    "classes-per-client": (("partitioner", ("pathological",)),),
    "shards-per-client": (("partitioner", ("shards",)),),
    "synthetic-alpha": (("dataset", ("synthetic",)),),
    "synthetic-beta": (("dataset", ("synthetic",)),),
    "synthetic-iid": (("dataset", ("synthetic",)),),
    "warmup-rounds": (("lr-schedule", ("warmup-cosine",)), ("decay-schedule", ("after-warmup",))),
    "step-rounds": (("lr-schedule", ("step",)),),
    "step-gamma": (("lr-schedule", ("step",)),),
    "restart-rounds": (("lr-schedule", ("cosine-restarts",)),),
    "restart-mult": (("lr-schedule", ("cosine-restarts",)),),
    "server-momentum": (("server-optimizer", ("fedavgm",)),),
    "server-tau": (("server-optimizer", ("fedadam", "fedyogi", "fedadagrad")),),
    "server-beta1": (("server-optimizer", ("fedadam", "fedyogi")),),
    "server-beta2": (("server-optimizer", ("fedadam", "fedyogi")),),
    "proximal-mu": (("server-optimizer", ("fedprox",)),),
}


def key_applies(key: str, config: Mapping[str, Any]) -> bool:
    """Whether `key` means something in `config` (a key its condition's keys predate applies)."""
    conditions = _ONLY_UNDER.get(key, ())
    if not conditions or any(k not in config for k, _ in conditions):
        return True
    return any(config[k] in values for k, values in conditions)


def setting_of(config: Mapping[str, Any], also_without: Iterable[str] = ()) -> str:
    """A run's setting as a stable string: its config without the non-setting keys.

    `also_without` leaves further keys out, e.g. the optimizer keys that `compare` tunes over.
    """
    drop = NON_SETTING_KEYS | set(also_without)
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in drop})


# -- schedules and which tensors decay (fedadamw.core.schedules) -------------------
LR_SCHEDULES = ("constant", "cosine", "warmup-cosine", "step", "cosine-restarts")
DECAY_SCHEDULES = ("constant", "lr-compensated", "after-warmup", "normalized")
DECAY_SCALINGS = ("torch", "paper")  # decoupled shrink per step: ηₜλ, or multiplierₜ·λ
# ndim ≥ 2 only (biases, norm weights kept), every tensor, or ndim ≥ 2 less the embedding tables
# (minGPT's transformer convention: decay on Linear matrices; none on LayerNorm, biases, embeddings)
DECAY_PARAMS = ("matrices", "all", "no-embeddings")
CLIENT_WEIGHT_DECAY = "client-weight-decay"  # reply metric: the base λ this client used
CLIENT_DECAY_COLUMN = "weight_decay"  # clients column of that λ (normalized: per client)
PARAM_COUNTS_TABLE = "param_counts"  # per run: decayed / undecayed tensors and weights
PARAM_COUNT_COLUMNS = (
    "decayed_tensors",
    "decayed_weights",
    "undecayed_tensors",
    "undecayed_weights",
)

# An output folder's files: the results store, and what `fedadamw run`'s parent hands its
# simulation process (fedadamw.launch.spec.Spec, as JSON; removed when the run ends).
STORE_FILE = "results.db"
SPEC_FILE = ".fedadamw-spec.json"

# -- the one-round counterfactual probe (`fedadamw probe`, fedadamw.run.probe) -----------------
# From a kept checkpoint after round r, every client sampled in round r + 1 re-trains on the
# same batches under each probe setting (mode, η, λ); one row per (run, round, setting, engine).
PROBES_TABLE = "probes"
PROBE_UPDATES_TABLE = "probe_updates"  # with --keep-updates: every client's Δ (float32, npz)
PROBE_KEY = ("run_id", "round", "mode", "learning_rate", "weight_decay", "engine")
# docs/usage.md defines each; `clients` is K, the number of re-trained clients.
PROBE_STATS = (
    "mean_pairwise_cosine",
    "dispersion",
    "mean_update_norm",
    "decay_share",
    "shrink_cosine",
    "shrink_component",
    "aggregate_loss_change",
    "client_loss_change",
    "total_shrink",
)
PROBE_COLUMNS = (*PROBE_KEY, "clients", *PROBE_STATS)
PROBE_UPDATE_COLUMNS = (*PROBE_KEY, "partition_id", "num_examples", "update")
# The run's own mode beside a probe row's `mode` (the setting it was re-trained under).
RUN_MODE_COLUMN = "run_mode"
