"""One factory for every decay mode: the optimizer is an explicit experimental axis.

For step size η, decay λ and data gradient g (see docs/design.md):

- ``decoupled`` — ``torch.optim.AdamW``: w ← w − ηλw − η·m̂/(√v̂+ε); moments see g only.
- ``coupled`` — ``torch.optim.Adam(weight_decay=λ)``: g' = g + λw; moments see g'.
- ``none`` — Adam with λ ignored.
- ``sgd-coupled`` — ``torch.optim.SGD(weight_decay=λ)``: w ← w − η(g + λw).
- ``sgd-decoupled`` — SGDW: w ← (1 − ηλ)w − ηg. Without momentum it is the same update as
  ``sgd-coupled``; a correct framework shows the same trajectory for both (a control).
- ``server-decay`` — on the client, Adam with λ ignored (as ``none``); the server shrinks the
  aggregate instead (`fedadamw.core.server_decay`).

Decay strength: like torch's AdamW (and unlike the paper, which multiplies λ by the schedule
multiplier only) the decoupled shrink per step is ηλ, with η the learning rate. With a constant
learning rate the two conventions differ only by the constant factor η in λ; `decay-scaling =
paper` (fedadamw.core.schedules.torch_decay) hands these optimizers λ/η to get the paper's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from fedadamw.errors import ConfigError
from fedadamw.schema import DECAY_MODES

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class SGDW(torch.optim.Optimizer):
    """Plain SGD with decoupled weight decay: w ← (1 − ηλ)w − ηg (no momentum)."""

    def __init__(self, params: ParamsT, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.add_(p.grad, alpha=-lr)
        return loss


def make_optimizer(
    params: ParamsT,
    mode: str,
    lr: float,
    weight_decay: float,
    **options: Any,
) -> torch.optim.Optimizer:
    """The optimizer of decay `mode` (a name of DECAY_MODES) with step size `lr` and decay λ.

    `params` are tensors or torch parameter groups; a group's own ``weight_decay`` (e.g. 0.0
    for biases, see `decay_param_groups`) wins over `weight_decay`. `options` go to the torch
    optimizer (``betas``, ``eps`` for the Adam modes). The values were checked where they were
    read (fedadamw.config.Config, or the train request a client received).
    """
    record = DECAY_MODES[mode]
    if not record.client_decays:  # none, server-decay: the server decays, not the client
        groups = _without_decay(params)
        return torch.optim.Adam(groups, lr=lr, weight_decay=0.0, **options)
    if record.adam:
        adam = torch.optim.Adam if record.coupled else torch.optim.AdamW
        return adam(params, lr=lr, weight_decay=weight_decay, **options)
    if options:
        raise ConfigError(f"mode {mode!r} takes no options, got {sorted(options)}")
    sgd = torch.optim.SGD if record.coupled else SGDW
    return sgd(params, lr=lr, weight_decay=weight_decay)


def _without_decay(params: ParamsT) -> list[dict[str, Any]]:
    items = list(params)
    if items and isinstance(items[0], dict):
        return [{**g, "weight_decay": 0.0} for g in items]  # type: ignore[dict-item]
    return [{"params": items, "weight_decay": 0.0}]


def decayed_names(model: nn.Module, decay_params: str = "matrices") -> frozenset[str]:
    """Names of the parameters `decay_param_groups` decays.

    ``matrices``: every trained tensor with ndim ≥ 2 (matrices and kernels); ``all``: every
    trained tensor; ``no-embeddings``: ``matrices`` less the weights of `nn.Embedding` modules
    (minGPT's convention for transformers: decay on Linear matrices, none on LayerNorm weights,
    biases and embedding tables).
    """
    tables = {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, m in model.named_modules()
        if isinstance(m, nn.Embedding)
    }
    return frozenset(
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and (
            decay_params == "all"
            or (p.ndim >= 2 and not (decay_params == "no-embeddings" and n in tables))
        )
    )


def decay_param_groups(model: nn.Module, decay_params: str = "matrices") -> list[dict[str, Any]]:
    """Two groups, decayed then kept, as `decayed_names` picks them (in parameter order).

    ``matrices`` (the usual choice, nanoGPT's `configure_optimizers`) decays matrices and
    kernels (ndim ≥ 2), not biases or normalization weights; ``all`` decays every tensor and
    leaves the second group empty; ``no-embeddings`` keeps embedding tables undecayed too. Both
    arms of a comparison decay exactly the same tensors, so the mode is the only difference
    between them.
    """
    names = decayed_names(model, decay_params)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if n in names]
    keep = [p for n, p in trained if n not in names]
    return [{"params": decay}, {"params": keep, "weight_decay": 0.0}]


def param_counts(model: nn.Module, decay_params: str) -> tuple[int, int, int, int]:
    """(decayed tensors, decayed weights, undecayed tensors, undecayed weights) of `model`."""
    decay, keep = (g["params"] for g in decay_param_groups(model, decay_params))
    return len(decay), sum(p.numel() for p in decay), len(keep), sum(p.numel() for p in keep)
