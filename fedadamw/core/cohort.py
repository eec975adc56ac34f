"""Train every sampled client of a round at once: one batched computation over stacked weights.

`train_cohort` gives, per client, what `fedadamw.core.training.train_local` gives on a fresh copy of
the model loaded with the global weights: the same batches in the same order, the same step
budget (stragglers included), the same decay mode and parameter groups, each step's learning
rate and decay from the same `step_settings` (the schedules), the same loss bookkeeping and
(with ``track_decay``) the same split as `fedadamw.core.tracked`. The K clients' weights are
stacked into (K, P) tensors; each step gathers every client's batch from one concatenated data
tensor, takes all K gradients in one backward pass through ``vmap(functional_call)`` (the
gradient of the sum of the clients' losses, row by row) and applies the optimizer's elementwise
formulas, written here over the stacked tensors in torch's own operation order.

Lockstep with ragged clients:

- Clients are sorted by their number of steps, most first, so the clients still training at
  step t are a prefix of the stack: a finished client is never touched again (weights and
  optimizer state unchanged by construction), and no work is spent on it.
- A client's batch may be shorter than the step's widest batch (its own batch size, or the last
  partial batch of an epoch): its rows are padded and masked out of the loss, which is the mean
  over its real rows, as `F.cross_entropy` computes it.
- Every client still training at step t has taken exactly t steps, so Adam's per-client step
  count, and hence its bias correction, is t + 1 for all of them.

What is exact and what only close: given the same gradients, the optimizer arithmetic is torch's
bit for bit (same operations in the same order; Python-float coefficients where clients share
them), and so are the batches, step counts and example counts. The gradients are not: batched
convolutions and matrix products sum in another order than one client's own, so they differ in
the last float32 bits. SGD keeps that at ~1e-6 of the update. Adam divides each gradient by
√v̂ + ε, which turns the rounding noise of a near-zero gradient (|g| ~ ε = 1e-8, where a float32
sum is only accurate relative to its largest terms) into a sizeable step: a few weights then
differ by 1e-5 to 1e-3 of the update, and now and then (one client of twenty in
benchmarks/bench_cohort.py) the difference spreads to ~6e-2. That is float32's accuracy, not the
engine's: float32 `train_local` with 1 vs 2 threads differs from itself as much (resnet20), and
against float64 `train_local` it is as often the farther of the two. Coupled Adam's decay split
divides by the same √v̂ + ε and is as sensitive. The batched backward pass may also round a
client's gradient differently at another position of the stack; the order is fixed (steps, then
the given order), so a run is reproducible bit for bit.

BatchNorm is not supported: its batch statistics would see the padded rows and its running
statistics are updated in place; `train_cohort` raises ValueError for such models.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fedadamw.core.optim import decay_param_groups
from fedadamw.core.stacked import stacked_forward
from fedadamw.core.training import (
    TrainResult,
    TrainSpec,
    batch_plan,
    client_decay,
    pick_device,
    step_settings,
)
from fedadamw.data.split import ArrayDataset
from fedadamw.schema import DECAY_MODES

# torch's Adam/AdamW defaults, which `fedadamw.core.optim.make_optimizer` uses: read from torch.
_ADAM_DEFAULTS = inspect.signature(torch.optim.Adam.__init__).parameters
BETA1, BETA2 = (float(b) for b in _ADAM_DEFAULTS["betas"].default)
EPS = float(_ADAM_DEFAULTS["eps"].default)
# The default quantiles of `fedadamw.core.tracked.shrink_ratio_quantiles`.
SHRINK_QUANTILES = (0.05, 0.5, 0.95)
# Batch rows (clients × batch size) per forward/backward chunk, by device type.
CHUNK_EXAMPLES = {"cpu": 2048, "cuda": 1 << 17}

# A coefficient shared by the clients of a step (a Python float: torch's scalar kernels, as the
# torch optimizers use) or one per client (a (k, 1) column that broadcasts over the weights).
Coef = float | Tensor
# One client's loss: (weights, batch x, batch y, real-row mask, real-row count) -> mean loss.
LossFn = Callable[[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class CohortClient:
    """One sampled client of a round: its partition and what it is asked to do."""

    data: ArrayDataset
    spec: TrainSpec


def train_cohort(
    model: nn.Module,
    global_state: dict[str, Tensor] | Sequence[dict[str, Tensor]],
    clients: Sequence[CohortClient],
    device: torch.device | None = None,
    *,
    chunk_examples: int | None = None,
) -> list[TrainResult]:
    """Train every client in lockstep; one TrainResult per client, in order.

    `global_state` is the model every client starts from, or one per client (the grid engine
    stacks the clients of many runs, each run with its own global model). Each step's forward
    and backward pass goes over at most `chunk_examples` batch rows at a time (default
    `CHUNK_EXAMPLES` for the device): it bounds the memory of the saved activations whatever
    the number of clients, and small chunks stay in cache (on 2 CPU cores 64 cnn1d models of
    batch 32 per chunk ran ~2× faster than 600 at once).
    """
    if not clients:
        return []
    device = device or pick_device()
    states = [global_state] * len(clients) if isinstance(global_state, dict) else global_state
    if len(states) != len(clients):
        raise ValueError(f"global_state: {len(states)} states for {len(clients)} clients")
    mode = _check_cohort(model, states[0], clients)
    for other in states[1:]:
        _check_state(model, other)
    plans = [batch_plan(len(c.data), c.spec) for c in clients]
    # Most steps first: the clients still training at any step are then a prefix of the stack.
    order = sorted(range(len(clients)), key=lambda k: -len(plans[k]))
    ranked = [clients[k] for k in order]
    schedule = _Schedule.build([plans[k] for k in order], [len(c.data) for c in ranked], device)
    # All clients' examples in one tensor, on the device once; batches are gathered from it.
    arrays = [c.data.tensors("cpu") for c in ranked]
    x = torch.cat([a[0] for a in arrays]).to(device)
    y = torch.cat([a[1] for a in arrays]).to(device)

    layout = _Layout.of(model, clients[0].spec.decay_params)
    ranked_states = [states[k] for k in order]
    stacked = [group.stack(ranked_states, device) for group in layout.groups]
    fixed = {
        name: _as_model_tensor(model, name, states[0].get(name), device) for name in layout.fixed
    }
    for other in states[1:]:  # buffers and frozen weights go in once: they must agree
        for name in layout.fixed:
            if name in other and not torch.equal(other[name].to(fixed[name]), fixed[name]):
                raise ValueError(f"global_state: clients differ in untrained tensor {name!r}")
    opt = _CohortOptimizer(mode, ranked, layout, stacked, device, [len(plans[k]) for k in order])
    # Each client's loss depends on its own row of the stack only, so the gradient of their
    # sum with respect to the stack is every client's own gradient, row by row: one backward
    # pass per chunk of rows (torch.func.grad would also import torch._dynamo, ~1.5 s).
    step_loss = _stacked_loss(model, fixed)
    budget = chunk_examples or CHUNK_EXAMPLES.get(device.type, CHUNK_EXAMPLES["cpu"])
    # FedProx: every client starts from the global weights, so its anchor is its first row.
    mu = _coef([c.spec.proximal_mu for c in ranked], device)
    proximal = any(c.spec.proximal_mu != 0.0 for c in ranked)
    anchor = [flat.detach().clone() for flat in stacked] if proximal else []
    losses = torch.zeros(schedule.steps, len(clients), device=device)

    modes = {m: m.training for m in model.modules()}
    model.train()  # as train_local; restored below, the caller's module is otherwise untouched
    try:
        for t in range(schedule.steps):
            k = schedule.active[t]
            full = [torch.zeros_like(flat[:k]) for flat in stacked]
            # Clients of one batch size at a time, each batch exactly its own rows: no padded
            # row enters a reduction, so a client's numbers do not depend on the widest batch
            # of whoever shares the stack (the pairing of identical settings rests on it).
            for width, positions in schedule.by_width[t]:
                for a in range(0, len(positions), max(1, budget // width)):
                    sel = positions[a : a + max(1, budget // width)]
                    leaves = [flat.index_select(0, sel).requires_grad_() for flat in stacked]
                    params: dict[str, Tensor] = {}
                    for group, leaf in zip(layout.groups, leaves, strict=True):
                        params.update(group.views(leaf))
                    rows = schedule.index[t].index_select(0, sel)[:, :width]
                    mask = schedule.mask[t].index_select(0, sel)[:, :width]
                    count = schedule.count[t].index_select(0, sel)
                    loss = step_loss(params, x[rows], y[rows], mask, count)
                    grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
                    losses[t].index_copy_(0, sel, loss.detach())
                    for f, g in zip(full, grads, strict=True):
                        if g is not None:
                            f.index_copy_(0, sel, g)
            leaves = [flat[:k] for flat in stacked]
            if anchor:
                full = _add_proximal(full, leaves, anchor, mu, k)
            opt.step(t, k, full)
    finally:
        for m, training in modes.items():
            m.train(training)

    weights = [flat.cpu() for flat in stacked]  # one transfer each, then per-client copies
    decay = opt.decay_parts()
    quantiles = opt.shrink_quantiles()
    step_sums, weight_sums = opt.effective_shrink_sums()
    losses_cpu = losses.cpu().tolist()  # float32 values, exactly as float(loss) reads them
    names = list(model.state_dict())
    results: list[TrainResult | None] = [None] * len(clients)
    for rank, k in enumerate(order):
        spec = clients[k].spec
        state: dict[str, Tensor] = {}
        for name in names:
            if name in fixed:
                state[name] = fixed[name].to("cpu", copy=True)
            else:
                group_i, group = layout.where(name)
                state[name] = group.take(weights[group_i], rank, name)
        # As train_local: a Python-float sum of each step's mean loss times its batch size.
        loss_sum, seen = 0.0, 0
        for t, size in enumerate(schedule.sizes[rank]):
            loss_sum += losses_cpu[t][rank] * size
            seen += size
        decay_part = None
        if spec.track_decay:
            decay_part = {}
            for name in layout.trained:
                group_i, group = layout.where(name)
                decay_part[name] = group.take(decay[group_i], rank, name)
        results[k] = TrainResult(
            state=state,
            num_examples=len(clients[k].data),
            train_loss=loss_sum / seen,
            local_steps=len(schedule.sizes[rank]),
            decay_part=decay_part,
            shrink_quantiles=quantiles[rank] if spec.track_decay else {},
            decay_step_sum=step_sums[rank] if spec.track_decay else None,
            weight_sum=weight_sums[rank] if spec.track_decay else None,
            client_decay=client_decay(len(clients[k].data), spec),
        )
    return [r for r in results if r is not None]


def _check_cohort(
    model: nn.Module, global_state: dict[str, Tensor], clients: Sequence[CohortClient]
) -> str:
    """The cohort's one decay mode; raise on what the engine cannot reproduce."""
    modes = sorted({c.spec.mode for c in clients})
    if len(modes) != 1:
        raise ValueError(f"clients: one cohort trains one decay mode, got {', '.join(modes)}")
    mode = modes[0]
    decay_params = sorted({c.spec.decay_params for c in clients})
    if len(decay_params) != 1:
        raise ValueError(f"clients: one cohort decays one set of tensors, got {decay_params}")
    batch_norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    norms = [n for n, m in model.named_modules() if isinstance(m, batch_norms)]
    if norms:
        raise ValueError(
            f"model: BatchNorm layers ({norms[0]}, …) are not supported by train_cohort: padded "
            "rows would enter their batch statistics and their running statistics are updated "
            "in place; use GroupNorm (resnet-norm = group) or train_local"
        )
    _check_state(model, global_state)
    return mode


def _check_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Raise unless `state` holds exactly the model's tensors."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"global_state does not fit the model: missing {missing}, unexpected {unexpected}"
        )


def _as_model_tensor(
    model: nn.Module, name: str, value: Tensor | None, device: torch.device
) -> Tensor:
    """`value` (or the model's own tensor) with the model tensor's dtype, on `device`."""
    own = (dict(model.named_parameters()) | dict(model.named_buffers()))[name]
    source = own.detach() if value is None else value.detach()
    return source.to(device=device, dtype=own.dtype, copy=True)


@dataclass(frozen=True)
class _Schedule:
    """Every step's batches, built once on the host and moved to the device once.

    `index[t, k, :]` are rows of the concatenated data (padded with the client's first row),
    `mask` 1 on real rows, `count` the real rows; `active[t]` clients train at step t (a
    prefix), `width[t]` is their widest batch; `sizes[k]` each of client k's batch sizes.
    """

    index: Tensor
    mask: Tensor
    count: Tensor
    active: list[int]
    width: list[int]
    sizes: list[list[int]]
    # Per step, (batch size, stack positions of the clients with that batch), widest first.
    by_width: list[list[tuple[int, Tensor]]]

    @property
    def steps(self) -> int:
        """Steps of the busiest client: the length of the lockstep loop."""
        return len(self.active)

    @classmethod
    def build(
        cls, plans: list[list[Tensor]], lengths: list[int], device: torch.device
    ) -> _Schedule:
        """The schedule of `plans` (sorted by length, longest first) over concatenated data."""
        steps, k = len(plans[0]), len(plans)
        widest = max(len(b) for plan in plans for b in plan)
        offsets = [0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]]
        index = torch.zeros(steps, k, widest, dtype=torch.int64)
        mask = torch.zeros(steps, k, widest)
        count = torch.ones(steps, k)
        for c, (plan, offset) in enumerate(zip(plans, offsets, strict=True)):
            index[:, c, :] = offset
            for t, batch in enumerate(plan):
                index[t, c, : len(batch)] = batch + offset
                mask[t, c, : len(batch)] = 1.0
                count[t, c] = len(batch)
        active = [sum(len(plan) > t for plan in plans) for t in range(steps)]
        width = [max(len(plans[c][t]) for c in range(active[t])) for t in range(steps)]
        sizes = [[len(b) for b in plan] for plan in plans]
        by_width = []
        for t in range(steps):
            groups: dict[int, list[int]] = {}
            for c in range(active[t]):
                groups.setdefault(sizes[c][t], []).append(c)
            by_width.append(
                [
                    (w, torch.tensor(groups[w], dtype=torch.int64, device=device))
                    for w in sorted(groups, reverse=True)
                ]
            )
        return cls(
            index.to(device), mask.to(device), count.to(device), active, width, sizes, by_width
        )


@dataclass(frozen=True)
class _Group:
    """Parameter tensors that share a decay setting, stored as one (K, P) flat tensor."""

    names: list[str]
    shapes: list[torch.Size]
    offsets: list[int]
    size: int
    decayed: bool

    @classmethod
    def of(cls, named: list[tuple[str, Tensor]], decayed: bool) -> _Group:
        """The group of these (name, parameter) pairs."""
        sizes = [p.numel() for _, p in named]
        offsets = [0, *[sum(sizes[: i + 1]) for i in range(len(sizes))]][:-1] if sizes else []
        return cls([n for n, _ in named], [p.shape for _, p in named], offsets, sum(sizes), decayed)

    def stack(self, states: Sequence[dict[str, Tensor]], device: torch.device) -> Tensor:
        """(k, P): client k starts from `states[k]` (often one state object for all)."""
        if not self.names:
            return torch.zeros(len(states), 0, device=device)
        rows: dict[int, Tensor] = {}
        for state in states:
            if id(state) not in rows:
                # As load_state_dict: the arrays take the model's dtype (float32, see _Layout).
                rows[id(state)] = torch.cat(
                    [state[n].detach().reshape(-1).to(torch.float32) for n in self.names]
                ).to(device)
        if len(rows) == 1:
            return next(iter(rows.values())).unsqueeze(0).repeat(len(states), 1)
        return torch.stack([rows[id(state)] for state in states])

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Per-name (k, *shape) views of a (k, P) flat tensor (no copies)."""
        k = flat.shape[0]
        return {
            n: flat[:, o : o + s.numel()].view(k, *s)
            for n, s, o in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def flatten(self, tensors: dict[str, Tensor], k: int) -> Tensor:
        """The (k, P) flat tensor of per-name (k, *shape) tensors."""
        if not self.names:
            return torch.zeros(k, 0, device=next(iter(tensors.values())).device)
        return torch.cat([tensors[n].reshape(k, -1) for n in self.names], dim=1)

    def take(self, flat: Tensor, row: int, name: str) -> Tensor:
        """One client's tensor `name` out of a (K, P) flat tensor, as its own contiguous copy."""
        i = self.names.index(name)
        o, s = self.offsets[i], self.shapes[i]
        return flat[row, o : o + s.numel()].reshape(s).clone()


@dataclass(frozen=True)
class _Layout:
    """Which model tensors train (in two groups: decayed, not decayed) and which stay fixed."""

    groups: tuple[_Group, _Group]
    fixed: list[str]
    trained: list[str]  # in the model's order, as train_local reports decay parts

    @classmethod
    def of(cls, model: nn.Module, decay_params: str = "matrices") -> _Layout:
        """The layout of `model`, with `decay_param_groups`'s choice of decayed tensors."""
        names = {id(p): n for n, p in model.named_parameters()}
        groups = decay_param_groups(model, decay_params)
        for g in groups:
            if g.get("weight_decay", None) not in (None, 0.0):
                raise ValueError(
                    "decay_param_groups: a group with its own non-zero λ is not supported"
                )
        decayed = [
            (names[id(p)], p) for g in groups if "weight_decay" not in g for p in g["params"]
        ]
        kept = [(names[id(p)], p) for g in groups if "weight_decay" in g for p in g["params"]]
        dtypes = {p.dtype for _, p in decayed + kept}
        if dtypes - {torch.float32}:
            raise ValueError(
                f"model: train_cohort trains float32 weights, got {sorted(map(str, dtypes))}"
            )
        trained = {n for n, _ in decayed + kept}
        # Frozen parameters and every buffer (non-persistent ones too) go in unbatched.
        tensors = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        fixed = [n for n in tensors if n not in trained]
        order = [n for n, _ in model.named_parameters() if n in trained]
        return cls((_Group.of(decayed, True), _Group.of(kept, False)), fixed, order)

    def where(self, name: str) -> tuple[int, _Group]:
        """The group that holds trained tensor `name`, and its position."""
        for i, g in enumerate(self.groups):
            if name in g.names:
                return i, g
        raise KeyError(name)


def _stacked_loss(model: nn.Module, fixed: dict[str, Tensor]) -> LossFn:
    """Every stacked client's mean loss (k,): `stacked_forward` where written out, else vmap."""
    forward = stacked_forward(model) if not fixed else None
    if forward is None:
        return vmap(_loss(model, fixed))
    run = forward

    def loss(
        params: dict[str, Tensor], x: Tensor, y: Tensor, mask: Tensor, count: Tensor
    ) -> Tensor:
        logits = run(params, x)  # (k, B, classes)
        rows = -logits.log_softmax(dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (rows * mask).sum(dim=1) / count

    return loss


def _loss(model: nn.Module, fixed: dict[str, Tensor]) -> LossFn:
    """One client's mean cross-entropy over the real rows of its (padded) batch."""

    def loss(
        params: dict[str, Tensor], x: Tensor, y: Tensor, mask: Tensor, count: Tensor
    ) -> Tensor:
        logits: Tensor = functional_call(model, {**params, **fixed}, (x,))
        # F.cross_entropy(reduction="none") is −log_softmax picked at the label: the same
        # numbers, written out as batched ops with plain autograd formulas. The classes are
        # dim 1: logits (b, classes) with labels (b,), or (b, vocab, T) with targets (b, T).
        rows = -logits.log_softmax(dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        # Sum then divide, as F.cross_entropy's mean over every target of the real rows: its
        # gradient per target is then 1/(count · targets per row) too.
        per_row = rows[0].numel()
        rows = rows.reshape(rows.shape[0], per_row)
        return (rows * mask.unsqueeze(1)).sum() / (count * per_row)

    return loss


def _coef(values: Sequence[float], device: torch.device) -> Coef:
    """One coefficient per client: a Python float when all are equal, else a (K, 1) column."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def _add(x: Tensor, y: Tensor, alpha: Coef) -> Tensor:
    """x + alpha·y (torch's `add(alpha=)` when alpha is shared)."""
    return torch.add(x, y, alpha=alpha) if isinstance(alpha, float) else torch.addcmul(x, y, alpha)


def _add_(x: Tensor, y: Tensor, alpha: Coef) -> None:
    """x += alpha·y, in place."""
    if isinstance(alpha, float):
        x.add_(y, alpha=alpha)
    else:
        x.addcmul_(y, alpha)


def _addcdiv_(x: Tensor, num: Tensor, den: Tensor, value: Coef) -> None:
    """x += value·num/den, in place, with torch's order (value·num first)."""
    if isinstance(value, float):
        x.addcdiv_(num, den, value=value)
    else:
        x.addcdiv_(num * value, den)


@dataclass(frozen=True)
class _Coefs:
    """One step's coefficients for the clients still training, as torch's optimizers write them.

    Each is computed in Python floats exactly as torch computes it from a group's lr and
    weight_decay; shared by every client it stays a Python float (torch's scalar kernels), else
    it is a (k, 1) float32 column.
    """

    lr64: Coef  # Adam's step size lr/(1 − β1^t) is computed in doubles, rounded once (torch)
    neg_lr: Coef
    wd: Coef
    shrink: Coef
    lr_wd: Coef
    neg_lr_wd: Coef

    @classmethod
    def of(cls, settings: list[tuple[float, float]], device: torch.device) -> _Coefs:
        """The coefficients of these clients' (lr, weight_decay) at one step."""
        lrs = [lr for lr, _ in settings]
        lr = _coef(lrs, device)
        lr64 = (
            lr
            if isinstance(lr, float)
            else torch.tensor(lrs, dtype=torch.float64, device=device).unsqueeze(1)
        )
        return cls(
            lr64=lr64,
            neg_lr=_coef([-lr for lr, _ in settings], device),
            wd=_coef([wd for _, wd in settings], device),
            shrink=_coef([1.0 - lr * wd for lr, wd in settings], device),
            lr_wd=_coef([lr * wd for lr, wd in settings], device),
            neg_lr_wd=_coef([-lr * wd for lr, wd in settings], device),
        )

    def per_client(self, of_lr: Callable[[Coef], Coef]) -> Coef:
        """A coefficient that depends on each client's lr: float64 math, one float32 rounding."""
        value = of_lr(self.lr64)
        return value if isinstance(value, float) else value.to(torch.float32)


def _rows(c: Coef, k: int) -> Coef:
    """The coefficients of the first `k` clients."""
    return c if isinstance(c, float) else c[:k]


def _add_proximal(
    grads: list[Tensor], leaves: list[Tensor], anchor: list[Tensor], mu: Coef, k: int
) -> list[Tensor]:
    """g + μ(w − w_global) per client row: FedProx's term as `train_local` adds it."""
    mu_k = _rows(mu, k)
    return [
        g + (w.detach() - a[:k]).mul_(mu_k) for g, w, a in zip(grads, leaves, anchor, strict=True)
    ]


class _CohortOptimizer:
    """The decay modes' elementwise steps over (K, P) stacked weights, and the decay split."""

    def __init__(
        self,
        mode: str,
        clients: Sequence[CohortClient],
        layout: _Layout,
        weights: list[Tensor],
        device: torch.device,
        steps: Sequence[int],
    ) -> None:
        # The server-decay arm's clients train as `none` (step_settings gives them λ = 0): its
        # decay is the server's.
        record = DECAY_MODES[mode]
        self.adam, self.layout, self.weights, self.device = record.adam, layout, weights, device
        # Coupled Adam's decay step is a share of Adam's step; every other decay is −ηλwₜ.
        self.coupled_adam = record.adam and record.coupled
        self.coupled = record.coupled
        # Every client's (ηₜ, λₜ) per step from train_local's own function (the schedules).
        self.settings = [
            step_settings(len(c.data), c.spec, n) for c, n in zip(clients, steps, strict=True)
        ]
        self.any_decay = any(wd != 0.0 for steps in self.settings for _, wd in steps)
        self._coefs: dict[tuple[tuple[float, float], ...], _Coefs] = {}
        self.exp_avg = [torch.zeros_like(w) for w in weights] if self.adam else []
        self.exp_avg_sq = [torch.zeros_like(w) for w in weights] if self.adam else []
        self.track = any(c.spec.track_decay for c in clients) and self.any_decay
        decayed = weights[0]
        self.decay = torch.zeros_like(decayed) if self.track else decayed[:, :0]
        self.shrink_num = torch.zeros_like(decayed) if self.track else decayed[:, :0]
        self.shrink_den = torch.zeros_like(decayed) if self.track else decayed[:, :0]
        tracked_m = self.track and self.coupled_adam
        self.m_decay = torch.zeros_like(decayed) if tracked_m else decayed[:, :0]
        # Σₜ Σ|wₜ| over the decayed tensors per client, whatever λ and mode (as train_local).
        self.sum_weights = any(c.spec.track_decay for c in clients)
        self.weight_abs = torch.zeros(len(clients), dtype=torch.float64, device=device)

    def step(self, t: int, k: int, grads: list[Tensor]) -> None:
        """Step the first `k` clients (those still training) with their gradients at step t."""
        c = self._at(t, k)
        for i, (g, group) in enumerate(zip(grads, self.layout.groups, strict=True)):
            decay = group.decayed and self.any_decay
            w = self.weights[i][:k]
            if group.decayed and self.sum_weights and w.shape[1]:
                self.weight_abs[:k] += w.abs().sum(dim=1, dtype=torch.float64)
            if decay and self.track:
                self._track_before(w, k, c)
            if self.adam:
                denom = self._adam(i, t, k, w, g, decay, c)
                if decay and self.track and self.coupled:
                    self._track_coupled_after(t, k, denom, c)
            else:
                self._sgd(w, g, decay, c)

    def _at(self, t: int, k: int) -> _Coefs:
        """The coefficients of step t for the first `k` clients (cached: schedules repeat)."""
        key = tuple(self.settings[c][t] for c in range(k))
        coefs = self._coefs.get(key)
        if coefs is None:
            coefs = self._coefs[key] = _Coefs.of(list(key), self.device)
        return coefs

    def _adam(self, i: int, t: int, k: int, w: Tensor, g: Tensor, decay: bool, c: _Coefs) -> Tensor:
        """torch's `_single_tensor_adam` (amsgrad off); returns the step's denominator."""
        m, v = self.exp_avg[i][:k], self.exp_avg_sq[i][:k]
        step = t + 1  # every client still training has taken t steps before this one
        if decay and not self.coupled:
            w.mul_(c.shrink)
        elif decay:
            g = _add(g, w, c.wd)
        m.lerp_(g, 1 - BETA1)
        v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        bias_correction1 = 1 - BETA1**step
        bias_correction2_sqrt = (1 - BETA2**step) ** 0.5
        neg_step_size = c.per_client(lambda lr: -(lr / bias_correction1))
        denom = torch.div(v.sqrt(), bias_correction2_sqrt).add_(EPS)
        _addcdiv_(w, m, denom, neg_step_size)
        return denom

    def _sgd(self, w: Tensor, g: Tensor, decay: bool, c: _Coefs) -> None:
        """torch.optim.SGD without momentum (coupled) and fedadamw.core.optim.SGDW (decoupled)."""
        if decay and self.coupled:
            g = _add(g, w, c.wd)
        elif decay:
            w.mul_(c.shrink)
        _add_(w, g, c.neg_lr)

    def _track_before(self, w: Tensor, k: int, c: _Coefs) -> None:
        """fedadamw.core.tracked's pre-step sums, on the weights wₜ before the step."""
        self.shrink_den[:k].add_(w.abs().mul_(c.lr_wd))
        if self.coupled_adam:  # the first moment of λwₜ alone, as torch updates exp_avg
            self.m_decay[:k].lerp_(w * c.wd, 1.0 - BETA1)
        else:  # decoupled Adam and both SGD modes: the decay step is −ηλwₜ
            step = w * c.neg_lr_wd
            self.decay[:k].add_(step)
            self.shrink_num[:k].add_(step.abs_())

    def _track_coupled_after(self, t: int, k: int, denom: Tensor, c: _Coefs) -> None:
        """Coupled Adam: the decay share −ηₜ·m̂_decay/(√v̂+ε) of the step just taken."""
        step = t + 1
        bias_correction1 = 1.0 - BETA1**step
        neg_step_size = c.per_client(lambda lr: -lr / bias_correction1)
        part = self.m_decay[:k] / denom
        part.mul_(neg_step_size)
        self.decay[:k].add_(part)
        self.shrink_num[:k].add_(part.abs_())

    def decay_parts(self) -> list[Tensor]:
        """Per group, the (K, P) Δ_decay on the CPU (zeros where nothing decays)."""
        out = []
        for group, w in zip(self.layout.groups, self.weights, strict=True):
            if group.decayed and self.track:
                out.append(self.decay.cpu())
            else:
                out.append(torch.zeros(w.shape, dtype=w.dtype))
        return out

    def effective_shrink_sums(self) -> tuple[list[float], list[float]]:
        """Per client, (Σₜ|decay stepₜ|, Σₜ|wₜ|) over its decayed weights (train_local's sums)."""
        k = self.weights[0].shape[0]
        steps = (
            self.shrink_num.double().sum(dim=1).cpu().tolist()
            if self.track and self.shrink_num.shape[1]
            else [0.0] * k
        )
        return steps, self.weight_abs.cpu().tolist()

    def shrink_quantiles(self) -> list[dict[str, float]]:
        """Per client, `fedadamw.core.tracked.shrink_ratio_quantiles` of its decayed weights."""
        k = self.weights[0].shape[0]
        if not self.track or self.shrink_den.shape[1] == 0:
            return [{} for _ in range(k)]
        keep = self.shrink_den > 0
        # Weights without decay sort last (+inf); each row's first `n` values are its ratios.
        ratios = torch.where(keep, self.shrink_num / self.shrink_den, math.inf)
        ordered = torch.sort(ratios, dim=1).values
        # shrink_ratio_quantiles' linear interpolation, its positions in Python floats.
        counts = keep.sum(dim=1).tolist()
        pos = [[q * (max(n, 1) - 1) for q in SHRINK_QUANTILES] for n in counts]
        lo = [[math.floor(x) for x in row] for row in pos]
        hi = [[min(i + 1, max(n, 1) - 1) for i in row] for row, n in zip(lo, counts, strict=True)]
        index = torch.tensor([a + b for a, b in zip(lo, hi, strict=True)], device=ordered.device)
        picked = ordered.gather(1, index).double().cpu().tolist()
        nq = len(SHRINK_QUANTILES)
        out: list[dict[str, float]] = []
        for row, n in enumerate(counts):
            quantiles = {}
            for j, q in enumerate(SHRINK_QUANTILES):
                a, b = picked[row][j], picked[row][nq + j]
                quantiles[f"p{q * 100:g}"] = a + (b - a) * (pos[row][j] - lo[row][j])
            out.append(quantiles if n else {})  # no decayed weight: none to take quantiles of
        return out
