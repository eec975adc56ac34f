"""Local training and evaluation: the one training loop every client and baseline uses.

Which rows each local step sees is decided in one place, `batch_plan`: `train_local` iterates
it, and so does the vectorized cohort engine, so the two can never disagree on local work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's convention

from fedadamw.core.optim import decay_param_groups, make_optimizer
from fedadamw.core.sampling import local_steps
from fedadamw.core.schedules import (
    CONSTANT,
    Schedule,
    decay_at,
    global_step,
    lr_multiplier,
    normalized_decay,
    torch_decay,
)
from fedadamw.core.tracked import TrackedOptimizer, make_tracked_optimizer, shrink_ratio_quantiles
from fedadamw.data.split import ArrayDataset
from fedadamw.schema import DECAY_MODES, RESET_STATE


def pick_device() -> torch.device:
    """CUDA when there is a GPU, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_seed(seed: int, partition_id: int, server_round: int) -> int:
    """The seed of a client's batch order: (run seed, partition id, round) and nothing else."""
    return int(np.random.SeedSequence([seed, partition_id, server_round]).generate_state(1)[0])


@dataclass(frozen=True)
class ClientSettings:
    """How every client of an arm trains: one field per client hyperparameter.

    Each field is the `fedadamw.config.Config` field of the same name (`mode` is the arm).
    The train message (`fedadamw.core.wire.TrainRequest`) and one client's round (`TrainSpec`)
    both extend this class, so a client hyperparameter is declared once, here (docs/design.md,
    "Adding a client hyperparameter").
    """

    mode: str  # a name of fedadamw.schema.DECAY_MODES
    learning_rate: float
    weight_decay: float
    local_epochs: int
    batch_size: int  # in a TrainSpec: this client's own draw (client-batch-sizes)
    _: KW_ONLY
    track_decay: bool = False  # split the update into data and decay parts (fedadamw.core.tracked)
    local_steps: int = 0  # > 0: exactly this many steps (equal local work); 0: local_epochs
    # the decay schedule (fedadamw.core.schedules) and which tensors decay
    decay_schedule: str = "constant"
    decay_scaling: str = "torch"
    decay_params: str = "matrices"
    proximal_mu: float = 0.0  # FedProx: μ(w − w_global) joins every step's data gradient
    optimizer_state: str = RESET_STATE  # not reset: Adam's moments come in and go out (`moments`)


@dataclass(frozen=True)
class TrainSpec(ClientSettings):
    """What a client is asked to do in one round: the settings and what it draws for itself."""

    seed: int
    partition_id: int
    server_round: int
    _: KW_ONLY
    work_fraction: float = 1.0  # < 1 for a straggler (fedadamw.core.sampling.work_fraction)
    schedule: Schedule = CONSTANT  # the run's learning-rate schedule (fedadamw.core.schedules)


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
    # With track_decay, over the decayed tensors and every step: Σₜ|decay stepₜ| and Σₜ|wₜ|
    # (wₜ before the step). Their ratio is the effective shrink per step (ηλ for decoupled).
    decay_step_sum: float | None = None
    weight_sum: float | None = None
    client_decay: float | None = None  # the base λ it decayed with (`client_decay`)
    # optimizer-state local / server-averaged: Adam's state after training ("exp_avg/name",
    # "exp_avg_sq/name", "step") and the step count it started from.
    moments: dict[str, torch.Tensor] | None = None
    start_step: int = 0


def step_budget(num_examples: int, spec: TrainSpec) -> int:
    """Steps a client takes this round: `local_steps`, or its epochs' worth; a straggler's share.

    With `local_steps` > 0 every client takes exactly that many steps whatever its size (a
    straggler ⌈work_fraction · local_steps⌉); else ⌈work_fraction · epochs · batches⌉.
    """
    if spec.local_steps > 0:
        return max(1, math.ceil(spec.work_fraction * spec.local_steps))
    return local_steps(num_examples, spec.batch_size, spec.local_epochs, spec.work_fraction)


def round_length(num_examples: int, spec: TrainSpec) -> int:
    """s: a round's length in steps on the schedule's clock (`fedadamw.core.schedules`).

    `local_steps` when > 0, else the full budget of `local_epochs` epochs: a straggler's
    round is as long, it only stops early.
    """
    if spec.local_steps > 0:
        return spec.local_steps
    return local_steps(num_examples, spec.batch_size, spec.local_epochs, 1.0)


def client_decay(num_examples: int, spec: TrainSpec) -> float:
    """The base λ this client decays with: `weight_decay`, or its normalized λ."""
    if spec.decay_schedule == "normalized":
        return normalized_decay(
            spec.weight_decay, spec.batch_size, num_examples, spec.local_epochs, spec.local_steps
        )
    return spec.weight_decay


def step_settings(num_examples: int, spec: TrainSpec, steps: int) -> list[tuple[float, float]]:
    """(lr, weight_decay of the decayed group) of each of the client's `steps` local steps.

    The one place that turns the schedules into torch's per-step hyperparameters: `train_local`
    and the cohort engine both apply exactly these. Undecayed modes get weight_decay 0.
    """
    s = round_length(num_examples, spec)
    base = client_decay(num_examples, spec)
    out = []
    for j in range(steps):
        t = global_step(spec.server_round, j, s)
        lr = spec.learning_rate * lr_multiplier(spec.schedule, t, s)
        decay = decay_at(spec.decay_schedule, base, spec.schedule, t, s)
        wd = torch_decay(spec.mode, spec.decay_scaling, decay, spec.learning_rate)
        out.append((lr, wd if DECAY_MODES[spec.mode].client_decays else 0.0))
    return out


def batch_plan(num_examples: int, spec: TrainSpec) -> list[torch.Tensor]:
    """The row indices of each local step, in order: the one place that decides local work.

    Epochs are seeded permutations (by seed, partition id and round) cut into batches of
    `batch_size` (the last one of an epoch smaller); steps run through them in order until the
    budget (`step_budget`) is spent. With `local_epochs` that is at most `local_epochs` epochs;
    with `local_steps` as many epochs as the steps need, so a small client sees its rows more
    often (with replacement across epochs, never within one).
    """
    if num_examples == 0:
        raise ValueError(f"partition {spec.partition_id} has no training examples")
    gen = torch.Generator().manual_seed(batch_seed(spec.seed, spec.partition_id, spec.server_round))
    budget = step_budget(num_examples, spec)
    per_epoch = math.ceil(num_examples / spec.batch_size)
    epochs = spec.local_epochs if spec.local_steps == 0 else math.ceil(budget / per_epoch)
    plan: list[torch.Tensor] = []
    for _ in range(epochs):
        # Every epoch is drawn, also once a straggler's budget is spent: each epoch's order
        # then depends on the seed alone, not on how much work the client does.
        order = torch.randperm(num_examples, generator=gen)
        for start in range(0, num_examples, spec.batch_size):
            if len(plan) < budget:
                plan.append(order[start : start + spec.batch_size])
    return plan


def train_local(
    model: nn.Module,
    data: ArrayDataset,
    spec: TrainSpec,
    device: torch.device | None = None,
    moments: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` in place on `data` along `batch_plan` with the decay mode of `spec`.

    `moments` (optimizer-state local / server-averaged) is Adam's state to start from, as
    `TrainResult.moments` returns it; missing entries start fresh.
    """
    device = device or pick_device()
    model.to(device).train()
    x, y = data.tensors(device)
    n = len(data)
    plan = batch_plan(n, spec)
    # Off, the plain torch optimizer runs: tracking costs ~6–17% (benchmarks/bench_tracked.py).
    factory = make_tracked_optimizer if spec.track_decay else make_optimizer
    groups = decay_param_groups(model, spec.decay_params)
    optimizer = factory(groups, spec.mode, spec.learning_rate, spec.weight_decay)
    decayed = list(groups[0]["params"])  # what decay_param_groups decays, whatever λ and mode
    settings = step_settings(n, spec, len(plan))
    start_step = load_moments(optimizer, model, moments or {}, device)
    weight_sum = torch.zeros((), dtype=torch.float64, device=device)
    # One transfer of every step's row indices, not one per batch (matters on a GPU).
    batches = torch.split(torch.cat(plan).to(device), [len(b) for b in plan])
    loss_sum, seen = 0.0, 0
    anchor = proximal_anchor(model, spec.proximal_mu)
    for idx, (lr, wd) in zip(batches, settings, strict=True):
        # This step's ηₜ for every group and λₜ for the decayed one (the kept group stays 0).
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.param_groups[0]["weight_decay"] = wd
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        if anchor:
            add_proximal_grad(anchor, spec.proximal_mu)
        if spec.track_decay and decayed:
            # Σ|wₜ| before the step (as the decay step sees it); kept on the device, no sync.
            norms = torch._foreach_norm([p.detach() for p in decayed], 1)
            weight_sum += torch.stack(norms).sum(dtype=torch.float64)
        optimizer.step()
        loss_sum += float(loss.detach()) * len(idx)
        seen += len(idx)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    decay_part, quantiles = None, {}
    step_sum: float | None = None
    if isinstance(optimizer, TrackedOptimizer):
        decay_part = {n: optimizer.decay_part(p).cpu() for n, p in model.named_parameters()}
        quantiles = shrink_ratio_quantiles(optimizer)
        step_sum = sum(float(optimizer.shrink_sums(p)[0].double().sum()) for p in decayed)
    return TrainResult(
        state=state,
        num_examples=n,
        train_loss=loss_sum / seen,
        local_steps=len(plan),
        decay_part=decay_part,
        shrink_quantiles=quantiles,
        decay_step_sum=step_sum,
        weight_sum=float(weight_sum) if spec.track_decay else None,
        client_decay=client_decay(n, spec),
        moments=None if spec.optimizer_state == RESET_STATE else save_moments(optimizer, model),
        start_step=start_step,
    )


def load_moments(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    moments: dict[str, torch.Tensor],
    device: torch.device,
) -> int:
    """Put Adam's saved state into a fresh optimizer; the step count it starts from (0: fresh).

    torch's Adam keeps `step` as a float32 CPU scalar tensor and the moments beside each
    parameter; a missing first moment (server-averaged: m is reset) starts at zero.
    """
    if "step" not in moments:
        return 0
    step = float(moments["step"])
    for name, p in model.named_parameters():
        if f"exp_avg_sq/{name}" not in moments:
            continue
        v = moments[f"exp_avg_sq/{name}"].to(device=device, dtype=p.dtype).clone()
        m = moments.get(f"exp_avg/{name}")
        optimizer.state[p] = {
            "step": torch.tensor(step, dtype=torch.float32),
            "exp_avg": torch.zeros_like(p) if m is None else m.to(device, p.dtype).clone(),
            "exp_avg_sq": v.reshape(p.shape),
        }
    return int(step)


def save_moments(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, torch.Tensor]:
    """Adam's state after training as named CPU tensors (`load_moments` reads them back)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            continue
        out["step"] = state["step"].detach().to("cpu", torch.float32).clone()
        out[f"exp_avg/{name}"] = state["exp_avg"].detach().to("cpu", copy=True)
        out[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].detach().to("cpu", copy=True)
    return out


def proximal_anchor(model: nn.Module, mu: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """FedProx: (parameter, copy of the global weights) pairs; empty when μ = 0."""
    if mu == 0.0:
        return []
    return [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def add_proximal_grad(anchor: list[tuple[torch.Tensor, torch.Tensor]], mu: float) -> None:
    """Add ∇(μ/2)‖w − w_global‖² = μ(w − w_global) to each gradient (FedProx, Li et al. 2020).

    Added to the gradient rather than to the loss, so the reported train loss stays the data
    loss and the vectorized cohort engine adds the same term the same way.
    """
    for p, w0 in anchor:
        diff = (p - w0).mul_(mu)
        if p.grad is None:
            p.grad = diff
        else:
            p.grad.add_(diff)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset, device: torch.device | None = None, batch_size: int = 1024
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `data`, over every target.

    One target per row for classification; for token windows (targets (N, T), logits
    (N, vocab, T)) every next-token target counts once: the mean loss per character (its
    exponential is the perplexity) and next-character accuracy.
    """
    device = device or pick_device()
    model.to(device).eval()
    x, y = data.tensors(device)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    targets = int(y.numel())
    return loss_sum / targets, correct / targets


# Batch rows (models × examples) per call of `evaluate_many`'s stacked forward, by device type:
# on the CPU the forward is compute-bound and small chunks stay in cache (512-1024 rows measured
# fastest for cnn1d on 2 cores); a GPU wants all it can get in one kernel.
EVAL_CHUNK_ROWS = {"cpu": 1024, "cuda": 1 << 18}


@torch.no_grad()
def evaluate_many(
    model: nn.Module,
    states: Sequence[Mapping[str, torch.Tensor]],
    data: ArrayDataset,
    device: torch.device | None = None,
    chunk_rows: int | None = None,
) -> list[tuple[float, float]]:
    """`evaluate` of `model` with each of `states` on `data`: one (loss, accuracy) per state.

    Where the architecture has a stacked forward (`fedadamw.core.stacked`), the states hold
    exactly its parameters and the targets are one per row, every model of a chunk of at most
    `chunk_rows` (models × examples) rows is evaluated in one stacked forward; a model's numbers
    then do not depend on which others share the call (each is its own matrix product) and
    differ from `evaluate`'s only by float rounding. Otherwise each state goes through
    `evaluate` in turn, exactly as alone.
    """
    from fedadamw.core.stacked import stacked_forward

    device = device or pick_device()
    names = [n for n, _ in model.named_parameters()]
    forward = stacked_forward(model)
    plain = (
        forward is None
        or not states
        or any(set(s) != set(names) for s in states)
        or data.y.ndim != 1
        or len(data) == 0
    )
    if plain:
        out = []
        for state in states:
            model.load_state_dict(dict(state))
            out.append(evaluate(model, data, device))
        return out
    assert forward is not None
    rows = chunk_rows or EVAL_CHUNK_ROWS.get(device.type, EVAL_CHUNK_ROWS["cpu"])
    x, y = data.tensors(device)
    n = len(data)
    examples = min(n, rows)
    per_call = max(1, rows // examples)
    loss_sums, corrects = [0.0] * len(states), [0] * len(states)
    for first in range(0, len(states), per_call):
        chunk = states[first : first + per_call]
        params = {k: torch.stack([s[k].to(device, torch.float32) for s in chunk]) for k in names}
        g = len(chunk)
        for start in range(0, n, examples):
            xb, target = x[start : start + examples], y[start : start + examples]
            logits = forward(params, xb.unsqueeze(0).expand(g, *xb.shape))  # (G, B, classes)
            losses = F.cross_entropy(logits.flatten(0, 1), target.repeat(g), reduction="none").view(
                g, -1
            )
            sums = losses.sum(1).tolist()
            hits = (logits.argmax(2) == target).sum(1).tolist()
            for j in range(g):
                loss_sums[first + j] += float(sums[j])
                corrects[first + j] += int(hits[j])
    return [(loss / n, hit / n) for loss, hit in zip(loss_sums, corrects, strict=True)]


# Evaluates one global model on several data sets: (model, state, data sets, device) ->
# one (loss, accuracy) per data set. The recorder's default is `evaluate_each`; the grid
# engine's run batch answers the requests of all its runs at once (server.run_batch).
Evaluator = Callable[
    [nn.Module, Mapping[str, torch.Tensor], Sequence[ArrayDataset], torch.device],
    list[tuple[float, float]],
]


def evaluate_each(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    datasets: Sequence[ArrayDataset],
    device: torch.device,
) -> list[tuple[float, float]]:
    """`evaluate` of `model` with `state` on each of `datasets`: one run's own evaluation."""
    model.load_state_dict(dict(state))
    return [evaluate(model, data, device) for data in datasets]
