"""Every local update split exactly into its data part and its decay part (issue 3).

A tracked optimizer IS the torch optimizer of its decay mode (the same class, whose own `step`
moves the weights), so its trajectory is torch's, bit for bit. Around each step it accumulates,
per parameter tensor, the two parts of the move, with Δ_data + Δ_decay = w_final − w_initial up
to float32 rounding:

- ``decoupled`` (AdamW): Δ_decay += −ηₜλwₜ (wₜ before the step, as torch applies it) and
  Δ_data += −ηₜ·m̂/(√v̂+ε).
- ``coupled`` (Adam + L2): Adam's first moment is linear in its input, so m = m_data + m_decay,
  m_decay being the moving average of λwₜ alone; both share the denominator √v̂+ε, whose v comes
  from the full g + λw. Δ_decay += −ηₜ·m̂_decay/(√v̂+ε), Δ_data += −ηₜ·(m̂ − m̂_decay)/(√v̂+ε).
- ``none``: Δ_decay = 0.
- ``sgd-coupled``, ``sgd-decoupled``: Δ_decay += −ηₜλwₜ, Δ_data += −ηₜgₜ.

The effective shrink of a weight is Σₜ|decay stepₜ| / Σₜ ηₜλ|wₜ|: the mean over the steps of
|decay step| / (ηλ|w|), weighted by ηₜλ|wₜ|. It is exactly 1 for the decoupled modes and spreads
for coupled Adam. The numerator sums |decay step| rather than taking |Δ_decay| so that a weight
whose sign flips during local training still reads 1 under decoupled decay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedadamw.core.optim import SGDW, ParamsT
from fedadamw.errors import ConfigError
from fedadamw.schema import DECAY_MODES

ADAM_OPTIONS = ("betas", "eps")
# Group settings that change the update rule beyond what the split handles.
_UNSUPPORTED = {"amsgrad": False, "maximize": False, "momentum": 0, "nesterov": False}


@dataclass
class _Track:
    """The running sums of one parameter tensor (float32, on the parameter's device)."""

    data: Tensor
    decay: Tensor
    shrink_num: Tensor  # Σₜ |decay stepₜ|
    shrink_den: Tensor  # Σₜ ηₜλ|wₜ|
    m_decay: Tensor | None  # coupled Adam: the first moment of λw alone


class TrackedOptimizer(torch.optim.Optimizer):
    """A torch optimizer that also splits every step into a data part and a decay part.

    Use the concrete classes through `make_tracked_optimizer`. The parts are kept outside
    `state` (so `state_dict` is torch's) and start at zero for every new optimizer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # the torch optimizer that follows in the MRO
        self._tracks: dict[Tensor, _Track] = {}
        self._stepping: list[list[Tensor]] = []
        for group in self.param_groups:
            _check_group(group)
        # Hooks rather than an overridden `step`: torch's own step moves the weights, and the
        # hooks that torch wraps around it run exactly once.
        self.register_step_pre_hook(_before_step)
        self.register_step_post_hook(_after_step)

    def data_part(self, p: Tensor) -> Tensor:
        """Σₜ of the data part of the steps of parameter `p` so far (a copy)."""
        return self._get(p).data.clone()

    def decay_part(self, p: Tensor) -> Tensor:
        """Σₜ of the decay part of the steps of parameter `p` so far (a copy)."""
        return self._get(p).decay.clone()

    def shrink_sums(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """(Σₜ |decay stepₜ|, Σₜ ηₜλ|wₜ|) per weight of `p` (copies)."""
        track = self._get(p)
        return track.shrink_num.clone(), track.shrink_den.clone()

    def decayed_parameters(self) -> list[Tensor]:
        """The parameters in groups with weight_decay ≠ 0, in the optimizer's order."""
        return [p for g in self.param_groups if g["weight_decay"] != 0.0 for p in g["params"]]

    # -- the split -------------------------------------------------------------------------

    def _before(self, group: dict[str, Any]) -> list[Tensor]:
        """Sum what needs wₜ before torch moves it; return the parameters that step."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return params
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        adam = isinstance(self, torch.optim.Adam)
        coupled_adam = adam and wd != 0.0 and not group["decoupled_weight_decay"]
        tracks = [self._track(p, coupled_adam) for p in params]
        if not adam:  # SGD: the data part −ηg is known before the step
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_add_([t.data for t in tracks], grads, alpha=-lr)
        if wd == 0.0:
            return params
        scaled = torch._foreach_abs(params)
        torch._foreach_mul_(scaled, lr * wd)
        torch._foreach_add_([t.shrink_den for t in tracks], scaled)
        if coupled_adam:
            lam_w = torch._foreach_mul(params, wd)  # λwₜ: the L2 gradient that torch adds to g
            beta1 = float(group["betas"][0])
            m_decay = [t.m_decay for t in tracks if t.m_decay is not None]
            torch._foreach_lerp_(m_decay, lam_w, 1.0 - beta1)  # as torch updates exp_avg
        else:  # decoupled Adam and both SGD modes: the decay step is −ηλwₜ
            step = torch._foreach_mul(params, -lr * wd)
            torch._foreach_add_([t.decay for t in tracks], step)
            torch._foreach_abs_(step)
            torch._foreach_add_([t.shrink_num for t in tracks], step)
        return params

    def _after(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Adam: split −ηₜ·m̂/(√v̂+ε) with the moments torch has just updated."""
        if not params or not isinstance(self, torch.optim.Adam):
            return
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        tracks = [self._tracks[p] for p in params]
        states = [self.state[p] for p in params]
        steps = [float(s["step"]) for s in states]
        # Each tensor has its own step count (a tensor without a gradient skips a step).
        neg_step_size = [-lr / (1.0 - beta1**t) for t in steps]
        bc2_sqrt = [(1.0 - beta2**t) ** 0.5 for t in steps]
        denom = torch._foreach_sqrt([s["exp_avg_sq"] for s in states])
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        exp_avg = [s["exp_avg"] for s in states]
        m_decay = [t.m_decay for t in tracks if t.m_decay is not None]
        if wd != 0.0 and not group["decoupled_weight_decay"]:
            decay = torch._foreach_div(m_decay, denom)
            torch._foreach_mul_(decay, neg_step_size)
            torch._foreach_add_([t.decay for t in tracks], decay)
            torch._foreach_abs_(decay)
            torch._foreach_add_([t.shrink_num for t in tracks], decay)
            exp_avg = list(torch._foreach_sub(exp_avg, m_decay))  # m_data = m − m_decay
        data = torch._foreach_div(exp_avg, denom)
        torch._foreach_mul_(data, neg_step_size)
        torch._foreach_add_([t.data for t in tracks], data)

    def _track(self, p: Tensor, coupled_adam: bool) -> _Track:
        track = self._tracks.get(p)
        if track is None:
            data, decay, num, den = (
                torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(4)
            )
            track = self._tracks[p] = _Track(data, decay, num, den, m_decay=None)
        if coupled_adam and track.m_decay is None:
            # m_decay starts at 0 with the first decayed step, as exp_avg starts at 0.
            track.m_decay = torch.zeros_like(p, memory_format=torch.preserve_format)
        return track

    def _get(self, p: Tensor) -> _Track:
        track = self._tracks.get(p)
        if track is not None:
            return track
        if not any(p is q for g in self.param_groups for q in g["params"]):
            raise ValueError("this tensor is not a parameter of the tracked optimizer")
        zero = torch.zeros_like(p)
        return _Track(zero, zero, zero, zero, None)  # not stepped yet: nothing moved


def _before_step(opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Step pre-hook: sum what needs the weights wₜ before torch moves them."""
    if not isinstance(opt, TrackedOptimizer):
        raise TypeError(f"expected a TrackedOptimizer, got {type(opt).__name__}")
    if kwargs.get("closure") is not None or any(a is not None for a in args[1:]):
        # The gradients would only exist after this hook: the split could not see them.
        raise ConfigError("closure: not supported by the tracked optimizers; call step()")
    with torch.no_grad():
        for group in opt.param_groups:
            _check_group(group)
        opt._stepping = [opt._before(group) for group in opt.param_groups]


def _after_step(opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Step post-hook: split the Adam step with the moments torch has just updated."""
    if not isinstance(opt, TrackedOptimizer):
        raise TypeError(f"expected a TrackedOptimizer, got {type(opt).__name__}")
    with torch.no_grad():
        for group, params in zip(opt.param_groups, opt._stepping, strict=True):
            opt._after(group, params)
    opt._stepping = []


class _TrackedAdamW(TrackedOptimizer, torch.optim.AdamW):
    """torch.optim.AdamW, tracked."""


class _TrackedAdam(TrackedOptimizer, torch.optim.Adam):
    """torch.optim.Adam (L2 decay added to the gradient), tracked."""


class _TrackedSGD(TrackedOptimizer, torch.optim.SGD):
    """torch.optim.SGD without momentum, tracked."""


class _TrackedSGDW(TrackedOptimizer, SGDW):
    """fedadamw.core.optim.SGDW, tracked."""


def _check_group(group: dict[str, Any]) -> None:
    for key, plain in _UNSUPPORTED.items():
        if group.get(key, plain) != plain:
            raise ConfigError(
                f"{key}: {group[key]!r} is not supported by the tracked optimizers; "
                f"expected {plain!r}"
            )


def make_tracked_optimizer(
    params: ParamsT,
    mode: str,
    lr: float,
    weight_decay: float,
    **options: Any,
) -> TrackedOptimizer:
    """The tracked twin of `fedadamw.core.optim.make_optimizer(params, mode, lr, weight_decay)`.

    Same modes, groups (a group's own ``weight_decay`` wins) and trajectory; `options` are
    ``betas`` and ``eps`` for the Adam modes and nothing for the SGD modes.
    """
    record = DECAY_MODES[mode]
    if not record.adam:
        if options:
            raise ConfigError(f"mode {mode!r} takes no options, got {sorted(options)}")
        sgd = _TrackedSGD if record.coupled else _TrackedSGDW
        return sgd(params, lr=lr, weight_decay=weight_decay)
    unknown = sorted(set(options) - set(ADAM_OPTIONS))
    if unknown:
        raise ConfigError(
            f"options {unknown} are not supported by the tracked optimizers; "
            f"allowed: {', '.join(ADAM_OPTIONS)}"
        )
    if record.client_decays:
        adam = _TrackedAdam if record.coupled else _TrackedAdamW
        return adam(params, lr=lr, weight_decay=weight_decay, **options)
    items = list(params)  # none, server-decay: every group's λ is ignored
    groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    no_decay = [{**g, "weight_decay": 0.0} for g in groups]  # type: ignore[dict-item]
    return _TrackedAdam(no_decay, lr=lr, weight_decay=0.0, **options)


def shrink_ratio_quantiles(
    tracked: TrackedOptimizer,
    qs: Sequence[float] = (0.05, 0.5, 0.95),
    params: Iterable[Tensor] | None = None,
) -> dict[str, float]:
    """Quantiles ("p5", "p50", …) of the per-weight shrink ratio Σ|decay step| / Σηλ|w|.

    Over every weight of `params` (default: all decayed parameters) whose denominator is not 0;
    numpy's linear interpolation. Empty when there is no such weight (λ = 0, mode ``none``).
    """
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} is not allowed; expected a number in [0, 1]")
    chosen = tracked.decayed_parameters() if params is None else list(params)
    ratios = []
    for p in chosen:
        num, den = tracked.shrink_sums(p)
        keep = den > 0
        ratios.append((num[keep] / den[keep]).flatten())
    if not ratios or sum(r.numel() for r in ratios) == 0:
        return {}
    ordered = torch.sort(torch.cat(ratios)).values
    n = ordered.numel()
    pos = [q * (n - 1) for q in qs]
    lo = [math.floor(x) for x in pos]
    hi = [min(i + 1, n - 1) for i in lo]
    picked = ordered[torch.tensor(lo + hi, device=ordered.device)].double().cpu().tolist()
    k = len(qs)
    out = {}
    for j, q in enumerate(qs):
        a, b = picked[j], picked[k + j]
        out[f"p{q * 100:g}"] = a + (b - a) * (pos[j] - lo[j])
    return out
