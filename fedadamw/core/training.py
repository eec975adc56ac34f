"""Local training and evaluation: the one training loop every client and baseline uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's convention

from fedadamw.core.optim import decay_param_groups, make_optimizer
from fedadamw.core.sampling import local_steps
from fedadamw.core.tracked import TrackedOptimizer, make_tracked_optimizer, shrink_ratio_quantiles
from fedadamw.data.split import ArrayDataset


def pick_device() -> torch.device:
    """CUDA when there is a GPU, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_seed(seed: int, partition_id: int, server_round: int) -> int:
    """The seed of a client's batch order: (run seed, partition id, round) and nothing else."""
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])


@dataclass(frozen=True)
class TrainSpec:
    """What a client is asked to do in one round."""

    mode: str
    learning_rate: float
    weight_decay: float
    local_epochs: int
    batch_size: int
    seed: int
    partition_id: int
    server_round: int
    work_fraction: float = 1.0  # < 1 for a straggler (fedadamw.core.sampling.work_fraction)
    track_decay: bool = False  # split the update into data and decay parts (fedadamw.core.tracked)


def batch_plan(num_examples: int, spec: TrainSpec) -> list[torch.Tensor]:
    """The row indices of each of a client's batches, in order, within its step budget.

    The one batch planner: `train_local` and the cohort engine (`fedadamw.core.cohort`) both
    train exactly these batches. Every epoch draws a fresh permutation from a generator seeded
    by (seed, partition id, round), also once the budget is spent, so a straggler's batches are
    a prefix of the full client's.
    """
    if num_examples == 0:
        raise ValueError(f"partition {spec.partition_id} has no training examples")
    gen = torch.Generator().manual_seed(batch_seed(spec.seed, spec.partition_id, spec.server_round))
    budget = local_steps(num_examples, spec.batch_size, spec.local_epochs, spec.work_fraction)
    plan: list[torch.Tensor] = []
    for _ in range(spec.local_epochs):
        order = torch.randperm(num_examples, generator=gen)
        for start in range(0, num_examples, spec.batch_size):
            if len(plan) < budget:
                plan.append(order[start : start + spec.batch_size])
    return plan


@dataclass(frozen=True)
class TrainResult:
    """What local training returns: the new weights (on the CPU) and how the work went."""

    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    local_steps: int
    # With track_decay: Δ_decay per parameter (Δ_data = Δ − Δ_decay) and the quantiles of the
    # per-weight shrink ratio Σ|decay step| / Σ ηλ|w| (1 everywhere for decoupled decay).
    decay_part: dict[str, torch.Tensor] | None = None
    shrink_quantiles: dict[str, float] = field(default_factory=dict)


def train_local(
    model: nn.Module, data: ArrayDataset, spec: TrainSpec, device: torch.device | None = None
) -> TrainResult:
    """Train `model` in place on `data` for `spec.local_epochs` epochs with the decay mode.

    A straggler (`spec.work_fraction` < 1) stops after that share of its steps.
    """
    device = device or pick_device()
    model.to(device).train()
    x, y = data.tensors(device)
    n = len(data)
    # Off, the plain torch optimizer runs: tracking costs ~6–17% (benchmarks/bench_tracked.py).
    factory = make_tracked_optimizer if spec.track_decay else make_optimizer
    optimizer = factory(decay_param_groups(model), spec.mode, spec.learning_rate, spec.weight_decay)
    plan = batch_plan(n, spec)
    # One transfer of every step's row indices, not one per batch (matters on a GPU).
    batches = torch.split(torch.cat(plan).to(device), [len(b) for b in plan])
    loss_sum, seen = 0.0, 0
    for idx in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        loss_sum += float(loss.detach()) * len(idx)
        seen += len(idx)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    decay_part, quantiles = None, {}
    if isinstance(optimizer, TrackedOptimizer):
        decay_part = {n: optimizer.decay_part(p).cpu() for n, p in model.named_parameters()}
        quantiles = shrink_ratio_quantiles(optimizer)
    return TrainResult(
        state=state,
        num_examples=n,
        train_loss=loss_sum / seen,
        local_steps=len(plan),
        decay_part=decay_part,
        shrink_quantiles=quantiles,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset, device: torch.device | None = None, batch_size: int = 1024
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `data`."""
    device = device or pick_device()
    model.to(device).eval()
    x, y = data.tensors(device)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return loss_sum / len(data), correct / len(data)
