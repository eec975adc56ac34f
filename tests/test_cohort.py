"""The cohort engine against torch's own optimizers, through `train_local` and step by step."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fedadamw.core.cohort import CohortClient, _CohortOptimizer, _Layout, train_cohort
from fedadamw.core.models import build_model
from fedadamw.core.optim import decay_param_groups
from fedadamw.core.schedules import Schedule
from fedadamw.core.tracked import make_tracked_optimizer, shrink_ratio_quantiles
from fedadamw.core.training import TrainResult, TrainSpec, batch_plan, step_settings, train_local
from fedadamw.data.split import ArrayDataset
from fedadamw.schema import DECAY_MODES

# Every mode, server-decay included (its clients train as `none`; the server decays).
COHORT_MODES = DECAY_MODES
UNDECAYED = ("none", "server-decay")

CPU = torch.device("cpu")
ADAM_MODES = ("decoupled", "coupled", "none")
# Five clients: different sizes and batch sizes (a last partial batch, one client smaller than
# its batch), client 2 a straggler that stops after 40% of its steps.
SIZES = (60, 24, 96, 45, 9)
BATCH_SIZES = (16, 32, 10, 16, 4)
WORK = (1.0, 1.0, 0.4, 1.0, 1.0)


# Tiny tensors: one torch thread is faster, and spares the cores other test runs share.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int, shape: tuple[int, ...], seed: int) -> ArrayDataset:
    """`n` random examples of `shape` with labels in 0..9 (MNIST-1D's shapes by default)."""
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 10, n))


def _clients(
    mode: str, lr: float, shape: tuple[int, ...] = (40,), epochs: int = 2
) -> list[CohortClient]:
    """The five clients; clients 1 and 3 do not track the decay split (train_local's plain path)."""
    return [
        CohortClient(
            _data(n, shape, seed=i),
            TrainSpec(mode, lr, 0.05, epochs, b, 7, i, 3, work_fraction=w, track_decay=i % 2 == 0),
        )
        for i, (n, b, w) in enumerate(zip(SIZES, BATCH_SIZES, WORK, strict=True))
    ]


def _reference(
    model: nn.Module, global_state: dict[str, Tensor], clients: list[CohortClient]
) -> list[TrainResult]:
    """train_local on a fresh copy of the model loaded with the global weights, client by client."""
    results = []
    for c in clients:
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(global_state)
        results.append(train_local(fresh, c.data, c.spec, CPU))
    return results


def _flat(tensors: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([tensors[n].flatten() for n in names])


def _assert_close(actual: Tensor, expected: Tensor, scale: Tensor, outliers: float = 0.0) -> None:
    """|actual − expected| ≤ 1e-5·max|scale|: everywhere, or on all but `outliers` of entries.

    Adam sends float32 rounding noise in near-zero gradients (|g| ~ ε = 1e-8) to full-size
    steps: a few weights then differ from train_local by more than 1e-5 of the update, as they
    differ between two float32 runs of train_local itself (see the module docstring of
    fedadamw.core.cohort). Those few stay within 1e-2; a wrong batch, mask or formula moves most
    weights by far more.
    """
    err = (actual - expected).abs() / scale.abs().max().clamp_min(1e-30)
    assert int((err > 1e-5).sum()) <= outliers * err.numel(), float(err.max())
    assert float(err.max()) <= (1e-2 if outliers else 1e-5)


@pytest.mark.parametrize("mode", COHORT_MODES)
def test_every_client_gets_what_train_local_gives(mode: str) -> None:
    _check_against_train_local(mode, {})


@pytest.mark.parametrize("mode", ["decoupled", "coupled", "sgd-decoupled"])
@pytest.mark.parametrize("scheduled", ["restarts", "warmup", "normalized"])
def test_with_schedules_every_client_gets_what_train_local_gives(mode: str, scheduled: str) -> None:
    """ηₜ and λₜ per step (clients of different round lengths): the same one function."""
    _check_against_train_local(mode, SCHEDULED[scheduled])


def _check_against_train_local(mode: str, extra: dict[str, object]) -> None:
    lr = 0.05 if mode.startswith("sgd") else 1e-2
    model = build_model("cnn1d", (40,), 10, seed=3)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = [
        CohortClient(c.data, dataclasses.replace(c.spec, **extra))  # type: ignore[arg-type]
        for c in _clients(mode, lr)
    ]
    results = train_cohort(model, global_state, clients, CPU)
    reference = _reference(model, global_state, clients)
    names = list(global_state)
    trained = [n for n, _ in model.named_parameters()]
    outliers = 2e-3 if mode in (*ADAM_MODES, "server-decay") else 0.0
    assert {r.local_steps for r in reference} != {reference[0].local_steps}  # ragged steps
    for client, got, ref in zip(clients, results, reference, strict=True):
        assert got.num_examples == ref.num_examples == len(client.data)
        assert got.local_steps == ref.local_steps
        assert got.train_loss == pytest.approx(ref.train_loss, rel=1e-5)
        assert list(got.state) == names and all(t.device == CPU for t in got.state.values())
        delta = _flat(ref.state, names) - _flat(global_state, names)
        _assert_close(_flat(got.state, names), _flat(ref.state, names), delta, outliers)
        if not client.spec.track_decay:
            assert got.decay_part is None and got.shrink_quantiles == {}
            assert got.decay_step_sum is None and got.weight_sum is None
            continue
        assert got.decay_part is not None and ref.decay_part is not None
        assert list(got.decay_part) == trained
        # The effective shrink's sums: Σₜ|decay stepₜ| and Σₜ|wₜ| over the decayed weights.
        assert ref.decay_step_sum is not None and ref.weight_sum is not None
        assert got.weight_sum == pytest.approx(ref.weight_sum, rel=1e-5)
        rel = 1e-3 if mode == "coupled" else 1e-5
        assert got.decay_step_sum == pytest.approx(ref.decay_step_sum, rel=rel, abs=1e-12)
        decay, ref_decay = _flat(got.decay_part, trained), _flat(ref.decay_part, trained)
        if mode in UNDECAYED:
            assert not decay.any() and got.shrink_quantiles == ref.shrink_quantiles == {}
            continue
        # Coupled Adam splits each step under √v̂ + ε: as ill-conditioned as the step itself.
        _assert_close(decay, ref_decay, ref_decay, outliers if mode == "coupled" else 0.0)
        assert got.shrink_quantiles.keys() == ref.shrink_quantiles.keys() == {"p5", "p50", "p95"}
        for q, value in ref.shrink_quantiles.items():
            assert got.shrink_quantiles[q] == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize(
    ("name", "shape", "mode"),
    [
        ("mlp", (40,), "decoupled"),
        ("logreg", (40,), "coupled"),
        ("resnet20", (1, 8, 8), "sgd-decoupled"),
    ],
)
def test_other_models_including_groupnorm_resnet(
    name: str, shape: tuple[int, ...], mode: str
) -> None:
    model = build_model(name, shape, 10, seed=1, norm="group")
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = _clients(mode, 0.01, shape, epochs=1)[:3]
    names = list(global_state)
    results = train_cohort(model, global_state, clients, CPU)
    for got, ref in zip(results, _reference(model, global_state, clients), strict=True):
        assert got.local_steps == ref.local_steps
        delta = _flat(ref.state, names) - _flat(global_state, names)
        _assert_close(_flat(got.state, names), _flat(ref.state, names), delta, outliers=2e-3)


def test_a_finished_client_stays_exactly_as_it_was() -> None:
    model = build_model("cnn1d", (40,), 10, seed=0)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = TrainSpec("decoupled", 1e-2, 0.05, 1, 32, 0, 0, 1, track_decay=True)
    short = CohortClient(_data(10, (40,), seed=0), spec)  # one batch: one step
    data = _data(200, (40,), seed=1)
    busy = dataclasses.replace(spec, partition_id=1, local_epochs=2, batch_size=20)  # 20 steps
    brief = dataclasses.replace(busy, work_fraction=0.1)  # the same first 2 batches, then stops
    with_busy = train_cohort(model, global_state, [short, CohortClient(data, busy)], CPU)
    with_brief = train_cohort(model, global_state, [short, CohortClient(data, brief)], CPU)
    assert [r.local_steps for r in with_busy] == [1, 20]
    assert [r.local_steps for r in with_brief] == [1, 2]
    # Step 0 is the same computation in both runs (the same stack order: busiest first);
    # afterwards the short client is never touched while its neighbour takes 1 or 19 more
    # steps, so it is bit for bit what it was after step 0.
    for key in global_state:
        assert torch.equal(with_busy[0].state[key], with_brief[0].state[key])
    decay_busy, decay_brief = with_busy[0].decay_part, with_brief[0].decay_part
    assert decay_busy is not None and decay_brief is not None
    for key in decay_busy:
        assert torch.equal(decay_busy[key], decay_brief[key])
    assert not torch.equal(
        with_busy[1].state["linear.weight"], with_brief[1].state["linear.weight"]
    )
    (ref,) = _reference(model, global_state, [short])
    names = list(global_state)
    delta = _flat(ref.state, names) - _flat(global_state, names)
    _assert_close(_flat(with_busy[0].state, names), _flat(ref.state, names), delta)


# Schedules that change ηₜ and λₜ every step (round 2 of 3, 7 steps a round): the cohort's
# per-step coefficients against torch's optimizers with their param groups set per step.
SCHEDULED = {
    "constant": {},
    "restarts": {
        "schedule": Schedule("cosine-restarts", 3, restart_rounds=1, restart_mult=2.0),
        "decay_schedule": "lr-compensated",
        "decay_params": "all",
    },
    "warmup": {
        "schedule": Schedule("warmup-cosine", 3, warmup_rounds=1),
        "decay_schedule": "after-warmup",
        "decay_scaling": "paper",
    },
    "normalized": {"schedule": Schedule("cosine", 3), "decay_schedule": "normalized"},
}


@pytest.mark.parametrize("mode", COHORT_MODES)
@pytest.mark.parametrize("lrs", [(1e-2, 1e-2, 1e-2), (1e-2, 3e-3, 2e-2)])
@pytest.mark.parametrize("scheduled", list(SCHEDULED))
def test_the_stacked_step_is_torchs_step_given_the_same_gradients(
    mode: str, lrs: tuple[float, ...], scheduled: str
) -> None:
    """With gradients shared, no rounding differs upstream: the optimizer arithmetic alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    steps = (7, 4, 1)  # sorted, most first, as train_cohort stacks its clients
    extra = SCHEDULED[scheduled]
    specs = [
        TrainSpec(mode, lr, 0.1, 1, 8, 0, i, 2, track_decay=True, local_steps=7, **extra)  # type: ignore[arg-type]
        for i, lr in enumerate(lrs)
    ]
    sizes = (8, 20, 50)  # normalized decay: a different λ per client
    which = str(extra.get("decay_params", "matrices"))
    layout = _Layout.of(model, which)
    stacked = [g.stack([model.state_dict()] * len(specs), CPU) for g in layout.groups]
    clients = [CohortClient(_data(n, (6,), 0), s) for n, s in zip(sizes, specs, strict=True)]
    opt = _CohortOptimizer(mode, clients, layout, stacked, CPU, steps)
    refs = [copy.deepcopy(model) for _ in specs]
    ref_opts = [
        make_tracked_optimizer(decay_param_groups(m, which), mode, s.learning_rate, s.weight_decay)
        for m, s in zip(refs, specs, strict=True)
    ]
    settings = [step_settings(n, s, k) for n, s, k in zip(sizes, specs, steps, strict=True)]
    if scheduled != "constant":
        assert len({x for per in settings for x in per}) > 3  # ηₜ (and λₜ) do change
    gen = torch.Generator().manual_seed(1)
    for t in range(max(steps)):
        k = sum(n > t for n in steps)
        # Magnitudes from 1e-9 to 1: Adam's ε regime included.
        grads = {
            n: torch.randn(k, *p.shape, generator=gen)
            * 10.0 ** -torch.randint(0, 10, (k, *p.shape), generator=gen).float()
            for n, p in model.named_parameters()
        }
        for c in range(k):
            for n, p in refs[c].named_parameters():
                p.grad = grads[n][c].clone()
            lr, wd = settings[c][t]  # as train_local sets them
            for ref_group in ref_opts[c].param_groups:
                ref_group["lr"] = lr
            ref_opts[c].param_groups[0]["weight_decay"] = wd
            ref_opts[c].step()
        opt.step(t, k, [g.flatten(grads, k) for g in layout.groups])
    decay = opt.decay_parts()
    quantiles = opt.shrink_quantiles()
    for c, (ref, ref_opt) in enumerate(zip(refs, ref_opts, strict=True)):
        for n, p in ref.named_parameters():
            i, group = layout.where(n)
            assert torch.equal(group.take(stacked[i], c, n), p.detach()), n
            assert torch.equal(group.take(decay[i], c, n), ref_opt.decay_part(p)), n
        assert quantiles[c] == shrink_ratio_quantiles(ref_opt)


def test_batches_are_train_locals_batches() -> None:
    spec = TrainSpec("decoupled", 1e-3, 0.0, 3, 16, 5, 2, 4, work_fraction=0.5)
    plan = batch_plan(45, spec)
    assert [len(b) for b in plan] == [16, 16, 13, 16, 16]  # ⌈0.5 · 3 · 3⌉ = 5 steps
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([5, 2, 4]).generate_state(1)[0]))
    first, second = torch.randperm(45, generator=gen), torch.randperm(45, generator=gen)
    assert torch.equal(torch.cat(plan[:3]), first)
    assert torch.equal(torch.cat(plan[3:]), second[:32])


def test_what_the_engine_cannot_reproduce_is_refused() -> None:
    data = _data(10, (1, 8, 8), 0)
    spec = TrainSpec("decoupled", 1e-3, 0.0, 1, 4, 0, 0, 1)
    batch_norm = build_model("resnet20", (1, 8, 8), 10, seed=0, norm="batch")
    with pytest.raises(ValueError, match="BatchNorm"):
        train_cohort(batch_norm, batch_norm.state_dict(), [CohortClient(data, spec)], CPU)
    model = build_model("logreg", (1, 8, 8), 10, seed=0)
    mixed = [CohortClient(data, spec), CohortClient(data, dataclasses.replace(spec, mode="none"))]
    with pytest.raises(ValueError, match="one decay mode"):
        train_cohort(model, model.state_dict(), mixed, CPU)
    empty = CohortClient(ArrayDataset(data.x[:0], data.y[:0]), spec)
    with pytest.raises(ValueError, match="no training examples"):
        train_cohort(model, model.state_dict(), [empty], CPU)
    with pytest.raises(ValueError, match="missing"):
        train_cohort(model, {}, [CohortClient(data, spec)], CPU)
    assert train_cohort(model, model.state_dict(), [], CPU) == []


def test_equal_local_work_every_client_takes_local_steps() -> None:
    """local-steps: every client takes exactly that many steps, as train_local does."""
    model = build_model("cnn1d", (40,), 10, seed=3)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = [
        dataclasses.replace(c, spec=dataclasses.replace(c.spec, local_steps=7))
        for c in _clients("decoupled", 1e-2)
    ]
    results = train_cohort(model, global_state, clients, CPU)
    reference = _reference(model, global_state, clients)
    names = list(global_state)
    # The straggler (work 0.4) takes ⌈0.4 · 7⌉ = 3 steps; the others 7, small clients included.
    assert [r.local_steps for r in reference] == [7, 7, 3, 7, 7]
    for got, ref in zip(results, reference, strict=True):
        assert got.local_steps == ref.local_steps
        delta = _flat(ref.state, names) - _flat(global_state, names)
        # Client 4 (9 rows, batch 4) repeats its rows over 3 epochs: its gradients near zero
        # (the Adam noise of _assert_close) are more frequent; ~0.2% of weights, max ~4e-4.
        _assert_close(_flat(got.state, names), _flat(ref.state, names), delta, 5e-3)


@pytest.mark.parametrize("mode", ["decoupled", "coupled", "sgd-decoupled"])
def test_fedprox_cohort_gives_what_train_local_gives(mode: str) -> None:
    """FedProx's μ(w − w_global) enters both engines' steps alike (and changes the result)."""
    lr = 0.05 if mode.startswith("sgd") else 1e-2
    model = build_model("cnn1d", (40,), 10, seed=3)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    clients = [
        dataclasses.replace(c, spec=dataclasses.replace(c.spec, proximal_mu=0.5))
        for c in _clients(mode, lr)
    ]
    names = list(global_state)
    results = train_cohort(model, global_state, clients, CPU)
    plain = _reference(model, global_state, _clients(mode, lr))
    outliers = 2e-3 if mode in ADAM_MODES else 0.0
    for got, ref, free in zip(
        results, _reference(model, global_state, clients), plain, strict=True
    ):
        delta = _flat(ref.state, names) - _flat(global_state, names)
        _assert_close(_flat(got.state, names), _flat(ref.state, names), delta, outliers)
        # The term acts: without it the weights differ by far more than the tolerance.
        assert float((_flat(free.state, names) - _flat(ref.state, names)).abs().max()) > 1e-4


def test_fedprox_sgd_step_is_the_closed_form() -> None:
    """Two plain SGD steps: w₂ = w₁ − η(g(w₁) + μ(w₁ − w₀)), the proximal part by hand."""
    model = build_model("logreg", (4,), 3, seed=0)
    w0 = {k: v.clone().double() for k, v in model.state_dict().items()}
    data = _data(8, (4,), seed=1)
    data = ArrayDataset(data.x, data.y % 3)
    lr, mu = 0.1, 2.0
    spec = TrainSpec("sgd-decoupled", lr, 0.0, 2, 8, 0, 0, 1, proximal_mu=mu)
    trained = copy.deepcopy(model)
    train_local(trained, data, spec, CPU)
    # Reference in float64: full-batch steps (batch 8 = every row), in the plan's row order.
    ref = copy.deepcopy(model).double()
    x = torch.from_numpy(data.x).double()
    y = torch.from_numpy(data.y).long()
    for idx in batch_plan(len(data), spec):
        ref.zero_grad()
        torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            for name, p in ref.named_parameters():
                assert p.grad is not None
                p.sub_(lr * (p.grad + mu * (p - w0[name])))
    for name, p in ref.state_dict().items():
        np.testing.assert_allclose(
            trained.state_dict()[name].double().numpy(), p.numpy(), rtol=0, atol=1e-6
        )
