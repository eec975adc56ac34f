"""Learning-rate and decay schedules over the whole federated run (pure Python, no torch).

A client counts its local steps on one global clock: global step t = (round − 1)·s + j for
its j-th local step (0-based) of a round, where s is the *round length* in steps:
`local-steps` when that is > 0 (every client the same, exact), else the client's full budget
of `local-epochs` epochs, epochs · ⌈B/b⌉ (B its training examples, b its batch size). So with
`local-epochs` every client runs through the same schedule by round fraction t/(R·s) whatever
its size, and a straggler takes the first steps of its round and stops. R = num-server-rounds;
the run is T = R·s steps long.

The learning rate of step t is ηₜ = η·m(t) with the multiplier m of `lr-schedule`:

- ``constant``: 1.
- ``cosine``: ½(1 + cos(π t/T)).
- ``warmup-cosine``: (t + 1)/T_w for t < T_w = `warmup-rounds`·s (linear warmup reaching 1 at
  its last step), then ½(1 + cos(π (t − T_w)/(T − T_w))).
- ``step``: γ^⌊t/(`step-rounds`·s)⌋ with γ = `step-gamma`.
- ``cosine-restarts`` (SGDR/AdamWR): periods of P₀ = `restart-rounds`·s steps, each next one
  `restart-mult` times longer; in the period that starts at t₀ with length P,
  ½(1 + cos(π (t − t₀)/P)) — 1 again at every restart.

The decay λₜ of step t comes from the base λ and `decay-schedule`:

- ``constant``: λ.
- ``lr-compensated``: λ/m(t), so that λₜ·ηₜ = λ·η stays the step-0 product as ηₜ falls.
- ``after-warmup``: 0 for t < T_w, then λ_post = λ·Σₜ m(t) / Σ_{t ≥ T_w} m(t): the same total
  shrink Σₜ ηₜλₜ over the run as ``constant``.
- ``normalized``: the AdamW paper's λ = λ_norm·√(b/(B·T_e)) per client (b its batch size, B its
  training examples, T_e its local epochs, or with `local-steps` = k the epochs k steps amount
  to, k·b/B, which makes it λ_norm/√k), constant over the run.

`decay-scaling` says what λₜ means for the decoupled modes (``decoupled``, ``sgd-decoupled``):
``torch`` shrinks by ηₜλₜ per step (torch's AdamW), ``paper`` by m(t)·λₜ (the paper's α·λ with α
the schedule multiplier): torch's weight_decay is then λₜ/η. For the coupled modes λₜ is the L2
coefficient either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cache

from fedadamw.errors import ConfigError
from fedadamw.schema import DECAY_MODES, DECAY_SCHEDULES


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule over `rounds` rounds (the keys of `lr-schedule` and its knobs)."""

    name: str = "constant"
    rounds: int = 1
    warmup_rounds: int = 0
    step_rounds: int = 1
    step_gamma: float = 1.0
    restart_rounds: int = 1
    restart_mult: float = 1.0

    @classmethod
    def of(cls, source: object) -> Schedule:
        """The schedule of a run's keys on `source` (a Config or a train request), by name."""
        return cls(**{f.name: getattr(source, _KEYS.get(f.name, f.name)) for f in fields(cls)})


# Schedule's fields are the config fields of the same name, but for these two.
_KEYS = {"name": "lr_schedule", "rounds": "num_server_rounds"}
CONSTANT = Schedule()


def global_step(server_round: int, step: int, round_length: int) -> int:
    """The global step of local step `step` (0-based) of `server_round` (1-based)."""
    return (server_round - 1) * round_length + step


def lr_multiplier(schedule: Schedule, t: int, round_length: int) -> float:
    """m(t): the learning-rate multiplier of global step `t` for rounds of `round_length` steps."""
    name, s = schedule.name, round_length
    if name == "constant":
        return 1.0
    total = schedule.rounds * s
    if name == "cosine":
        return _half_cosine(t / total)
    if name == "warmup-cosine":
        warmup = schedule.warmup_rounds * s
        if t < warmup:
            return (t + 1) / warmup
        return _half_cosine((t - warmup) / (total - warmup))
    if name == "step":
        return float(schedule.step_gamma ** (t // (schedule.step_rounds * s)))
    # cosine-restarts: walk the periods (a run has a handful) to the one holding t.
    start, period = 0.0, float(schedule.restart_rounds * s)
    while t >= start + period:
        start += period
        period *= schedule.restart_mult
    return _half_cosine((t - start) / period)


def _half_cosine(x: float) -> float:
    """½(1 + cos(πx)): 1 at x = 0, falling to 0 at x = 1."""
    return 0.5 * (1.0 + math.cos(math.pi * x))


@cache
def after_warmup_factor(schedule: Schedule, round_length: int) -> float:
    """λ_post/λ: Σₜ m(t) over the run over Σ m(t) after warmup (same total shrink as constant)."""
    total = schedule.rounds * round_length
    warmup = schedule.warmup_rounds * round_length
    # math.fsum: the identity the tests check holds to the last bits, not only roughly.
    every = [lr_multiplier(schedule, t, round_length) for t in range(total)]
    return math.fsum(every) / math.fsum(every[warmup:])


def normalized_decay(
    lambda_norm: float, batch_size: int, num_examples: int, local_epochs: int, local_steps: int
) -> float:
    """λ_norm·√(b/(B·T_e)); with `local_steps` = k > 0, T_e = k·b/B (so λ_norm/√k)."""
    if local_steps > 0:
        return lambda_norm / math.sqrt(local_steps)
    return lambda_norm * math.sqrt(batch_size / (num_examples * local_epochs))


def decay_at(
    decay_schedule: str, base: float, schedule: Schedule, t: int, round_length: int
) -> float:
    """λₜ of global step `t` from the client's base λ (the normalized one for ``normalized``)."""
    if decay_schedule in ("constant", "normalized"):
        return base
    if decay_schedule == "lr-compensated":
        return base / lr_multiplier(schedule, t, round_length)
    if decay_schedule == "after-warmup":
        if t < schedule.warmup_rounds * round_length:
            return 0.0
        return base * after_warmup_factor(schedule, round_length)
    raise ConfigError(
        f"decay-schedule: {decay_schedule!r} is not allowed; expected one of "
        + ", ".join(DECAY_SCHEDULES)
    )


def torch_decay(mode: str, decay_scaling: str, decay: float, learning_rate: float) -> float:
    """The weight_decay a torch optimizer needs for λₜ = `decay` under `decay_scaling`.

    torch's decoupled shrink is lr·weight_decay = ηₜ·weight_decay; ``paper`` wants m(t)·λₜ =
    ηₜ·λₜ/η, so weight_decay = λₜ/η (η the base learning rate). Coupled modes: λₜ itself.
    """
    if decay_scaling == "paper" and DECAY_MODES[mode].decoupled:
        return decay / learning_rate
    return decay
