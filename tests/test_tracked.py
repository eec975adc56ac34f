"""The tracked optimizers against torch's own optimizers and a float64 numpy Adam."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedadamw.core.optim import SGDW
from fedadamw.core.tracked import TrackedOptimizer, make_tracked_optimizer, shrink_ratio_quantiles
from fedadamw.errors import ConfigError
from fedadamw.schema import DECAY_MODES

EPS32 = float(np.finfo(np.float32).eps)
ADAM_MODES = ("decoupled", "coupled", "none")
CLIENT_UNDECAYED = ("none", "server-decay")  # clients of these modes never decay

# The plain optimizers the tracked ones must reproduce, built straight from torch.
REFERENCE: dict[str, Callable[[list[dict[str, Any]], float, float], torch.optim.Optimizer]] = {
    "decoupled": lambda g, lr, wd: torch.optim.AdamW(g, lr=lr, weight_decay=wd),
    "coupled": lambda g, lr, wd: torch.optim.Adam(g, lr=lr, weight_decay=wd),
    "none": lambda g, lr, wd: torch.optim.Adam(g, lr=lr),
    "server-decay": lambda g, lr, wd: torch.optim.Adam(g, lr=lr),  # the server decays instead
    "sgd-coupled": lambda g, lr, wd: torch.optim.SGD(g, lr=lr, weight_decay=wd),
    "sgd-decoupled": lambda g, lr, wd: SGDW(g, lr=lr, weight_decay=wd),
}


# Tiny tensors: one torch thread is faster, and spares the cores other test runs share.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp() -> nn.Module:
    """A small two-hidden-layer ReLU network: 8 inputs, 3 classes."""
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def _groups(model: nn.Module, mode: str) -> list[dict[str, Any]]:
    """Matrices decayed (Adam modes: with their own betas and eps), biases not."""
    mats = [p for p in model.parameters() if p.ndim >= 2]
    biases = [p for p in model.parameters() if p.ndim < 2]
    first: dict[str, Any] = {"params": mats}
    if mode in ADAM_MODES:
        first.update(betas=(0.8, 0.99), eps=1e-6)
    return [first, {"params": biases, "weight_decay": 0.0}]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("mode", DECAY_MODES)
@pytest.mark.parametrize(("seed", "lr", "wd"), [(0, 1e-3, 0.0), (1, 1e-2, 0.05), (2, 5e-3, 1.0)])
def test_tracked_follows_torch_and_splits_every_update(
    mode: str, seed: int, lr: float, wd: float
) -> None:
    steps = 300
    torch.manual_seed(seed)
    model = _mlp()
    x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
    ref_model = copy.deepcopy(model)
    tracked = make_tracked_optimizer(_groups(model, mode), mode, lr, wd)
    ref = REFERENCE[mode](_groups(ref_model, mode), lr, wd)
    params, ref_params = list(model.parameters()), list(ref_model.parameters())
    w0 = [p.detach().clone() for p in params]
    decay_ref = [torch.zeros_like(p, dtype=torch.float64) for p in params]  # −Σ ηₜλwₜ
    grad_ref = [torch.zeros_like(p, dtype=torch.float64) for p in params]  # −Σ ηₜgₜ
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        eta = lr * (1.0 - 0.5 * t / steps)  # a decaying schedule: the sums use ηₜ
        idx = torch.randperm(128, generator=gen)[:32]
        for m, opt in ((model, tracked), (ref_model, ref)):
            for group in opt.param_groups:
                group["lr"] = eta
            opt.zero_grad()
            torch.autograd.backward(nn.functional.cross_entropy(m(x[idx]), y[idx]))
        for i, p in enumerate(ref_params):
            lam = wd if p.ndim >= 2 and mode not in CLIENT_UNDECAYED else 0.0
            decay_ref[i] -= eta * lam * p.detach().double()
            assert p.grad is not None
            grad_ref[i] -= eta * p.grad.double()
        tracked.step()
        ref.step()

    for i, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        assert _rel_err(p.detach(), q.detach()) <= 1e-6
        data, decay = tracked.data_part(p), tracked.decay_part(p)
        moved = p.detach() - w0[i]
        # Each step rounds the weight and each sum once; bound that by 4 ulps of the
        # largest quantity involved, per step.
        scale = max(float(t.abs().max()) for t in (w0[i], p.detach(), data, decay))
        tol = 4 * steps * EPS32 * scale
        assert float((data + decay - moved).abs().max()) <= tol
        if p.ndim < 2 or wd == 0.0 or mode in CLIENT_UNDECAYED:
            assert not decay.any()
        if mode not in ("coupled", *CLIENT_UNDECAYED):  # the decay step is −ηₜλwₜ
            ref_tol = 2 * steps * EPS32 * float(decay_ref[i].abs().max())
            assert float((decay.double() - decay_ref[i]).abs().max()) <= ref_tol + 1e-30
        if mode.startswith("sgd"):  # the data step is −ηₜgₜ
            ref_tol = 2 * steps * EPS32 * float(grad_ref[i].abs().max())
            assert float((data.double() - grad_ref[i]).abs().max()) <= ref_tol
    quantiles = shrink_ratio_quantiles(tracked)
    if wd == 0.0 or mode in CLIENT_UNDECAYED:
        assert quantiles == {}
    elif mode == "coupled":  # the shrink depends on each weight's √v̂: it spreads
        assert quantiles["p95"] > 2.0 * quantiles["p5"]
    else:  # decoupled decay shrinks every weight by exactly ηλ|w| per step
        for w in tracked.decayed_parameters():
            num, den = tracked.shrink_sums(w)
            assert bool((den > 0).all())
            np.testing.assert_allclose(num.numpy(), den.numpy(), rtol=1e-5, atol=0)


def _zero_grad_step(w: torch.Tensor, mode: str, lr: float, wd: float) -> TrackedOptimizer:
    p = nn.Parameter(w.clone())
    opt = make_tracked_optimizer([p], mode, lr, wd)
    torch.autograd.backward((0.0 * p).sum())  # a data gradient that is exactly zero (not None)
    opt.step()
    return opt


def test_coupled_first_step_with_zero_gradient_is_all_decay_and_sign_like() -> None:
    lr, wd, eps = 1e-3, 0.01, 1e-8
    mags = np.logspace(-2, 2, 41)
    w = torch.tensor(mags * np.where(np.arange(41) % 2 == 0, 1.0, -1.0), dtype=torch.float32)
    opt = _zero_grad_step(w, "coupled", lr, wd)
    p = opt.param_groups[0]["params"][0]
    decay = opt.decay_part(p).double().numpy()
    assert not opt.data_part(p).any()
    w64 = w.double().numpy()
    # Fresh Adam: m̂ = λw, v̂ = (λw)², so the step is −η·λw / (λ|w| + ε) ≈ −η·sign(w).
    np.testing.assert_allclose(decay, -lr * wd * w64 / (wd * np.abs(w64) + eps), rtol=1e-6)
    np.testing.assert_allclose(decay, -lr * np.sign(w64), rtol=1e-3)
    num, den = opt.shrink_sums(p)
    # |step| / (ηλ|w|) ≈ 1 / (λ|w|): a weight 10⁴× smaller is shrunk 10⁴× harder, relatively.
    np.testing.assert_allclose((num / den).double().numpy(), 1.0 / (wd * np.abs(w64)), rtol=1e-3)


def test_decoupled_step_with_zero_gradient_is_all_decay() -> None:
    w = torch.from_numpy(np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32))
    opt = _zero_grad_step(w, "decoupled", 0.1, 0.5)
    p = opt.param_groups[0]["params"][0]
    assert not opt.data_part(p).any()
    np.testing.assert_allclose(opt.decay_part(p).numpy(), -0.05 * w.double().numpy(), rtol=1e-6)
    assert shrink_ratio_quantiles(opt, qs=(0.0, 1.0)) == pytest.approx(
        {"p0": 1.0, "p100": 1.0}, rel=1e-6
    )


def _numpy_split_adam(
    w0: list[np.ndarray], grads: list[list[np.ndarray]], groups: list[dict[str, Any]], lr: float
) -> dict[str, list[np.ndarray]]:
    """Adam + L2 in float64 with m_data and m_decay kept apart (docs/design.md's formulas)."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("w", "data", "decay", "num", "den")}
    for i, group in enumerate(groups):
        b1, b2 = group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        w = w0[i].astype(np.float64)
        m_data, m_decay, v = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
        data, decay, num, den = (
            np.zeros_like(w),
            np.zeros_like(w),
            np.zeros_like(w),
            np.zeros_like(w),
        )
        for t, g in enumerate(grads[i], start=1):
            lam_w = wd * w
            m_data = b1 * m_data + (1 - b1) * g
            m_decay = b1 * m_decay + (1 - b1) * lam_w
            v = b2 * v + (1 - b2) * (g + lam_w) ** 2
            denom = np.sqrt(v / (1 - b2**t)) + eps
            d = -lr * m_data / (1 - b1**t) / denom
            c = -lr * m_decay / (1 - b1**t) / denom
            den += lr * wd * np.abs(w)
            num += np.abs(c)
            data, decay, w = data + d, decay + c, w + d + c
        for key, value in zip(out, (w, data, decay, num, den), strict=True):
            out[key].append(value)
    return out


def test_coupled_split_matches_float64_numpy_adam_with_split_moments() -> None:
    rng = np.random.default_rng(7)
    lr, steps = 1e-2, 8
    shapes = [(12, 6), (5, 4), (7,)]
    w0 = [rng.normal(size=s).astype(np.float32) for s in shapes]
    # Gradient scales spread over three decades, so √v̂ and hence the shrink differ per weight.
    scales = [np.exp(rng.uniform(np.log(1e-3), 0.0, size=s)) for s in shapes]
    grads = [
        [(rng.normal(size=s) * sc).astype(np.float32) for _ in range(steps)]
        for s, sc in zip(shapes, scales, strict=True)
    ]
    params = [nn.Parameter(torch.from_numpy(w.copy())) for w in w0]
    groups: list[dict[str, Any]] = [
        {"params": [params[0]], "weight_decay": 0.3, "betas": (0.8, 0.99), "eps": 1e-6},
        {"params": [params[1]]},  # inherits λ = 0.05 and the default betas and eps
        {"params": [params[2]], "weight_decay": 0.0},
    ]
    opt = make_tracked_optimizer(groups, "coupled", lr, 0.05)
    for t in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g[t].copy())
        opt.step()
    want = _numpy_split_adam(w0, grads, opt.param_groups, lr)
    for i, p in enumerate(params):
        got = {
            "w": p.detach(),
            "data": opt.data_part(p),
            "decay": opt.decay_part(p),
            "num": opt.shrink_sums(p)[0],
            "den": opt.shrink_sums(p)[1],
        }
        for key, value in got.items():
            ref = want[key][i]
            # float32 against float64 over a few steps: a few ulps of the step size η.
            np.testing.assert_allclose(value.double().numpy(), ref, rtol=1e-5, atol=10 * lr * EPS32)
    ratios = np.concatenate(
        [(want["num"][i] / want["den"][i]).ravel() for i in (0, 1)]  # the decayed tensors
    )
    qs = (0.05, 0.5, 0.95)
    got_q = shrink_ratio_quantiles(opt, qs)
    want_q = np.quantile(ratios, qs)
    assert list(got_q) == ["p5", "p50", "p95"]
    np.testing.assert_allclose(list(got_q.values()), want_q, rtol=1e-5)


def test_sgd_controls_split_identically() -> None:
    """Without momentum, SGD + L2 and SGDW are one update: their parts must agree too."""
    parts = {}
    for mode in ("sgd-coupled", "sgd-decoupled"):
        torch.manual_seed(4)
        model = _mlp()
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        opt = make_tracked_optimizer(_groups(model, mode), mode, 0.05, 0.2)
        for _ in range(100):
            opt.zero_grad()
            torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
            opt.step()
        parts[mode] = [(opt.data_part(p), opt.decay_part(p)) for p in model.parameters()]
    for (d1, c1), (d2, c2) in zip(parts["sgd-coupled"], parts["sgd-decoupled"], strict=True):
        torch.testing.assert_close(d1, d2, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(c1, c2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_tensor_without_gradient_skips_the_step_like_torch(mode: str) -> None:
    """A tensor unused in a step keeps its own step count (and so its bias corrections)."""
    torch.manual_seed(5)
    a = nn.Parameter(torch.randn(6, 3))
    b = nn.Parameter(torch.randn(3, 2))
    a_ref, b_ref = nn.Parameter(a.detach().clone()), nn.Parameter(b.detach().clone())
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = make_tracked_optimizer([a, b], mode, 0.01, 0.1)
    ref = REFERENCE[mode]([{"params": [a_ref, b_ref]}], 0.01, 0.1)
    x = torch.randn(16, 6)
    for t in range(60):
        for pa, pb, o in ((a, b, opt), (a_ref, b_ref, ref)):
            o.zero_grad(set_to_none=True)
            h = x @ pa
            loss = (h @ pb).square().mean() if t % 3 == 0 else h.square().mean()
            torch.autograd.backward(loss)  # b has no gradient two steps in three
            o.step()
    assert _rel_err(a.detach(), a_ref.detach()) <= 1e-6
    assert _rel_err(b.detach(), b_ref.detach()) <= 1e-6
    for p, p0 in ((a, a0), (b, b0)):
        moved = p.detach() - p0
        total = opt.data_part(p) + opt.decay_part(p)
        assert float((total - moved).abs().max()) <= 4 * 60 * EPS32 * float(p0.abs().max())


def test_step_hooks_run_once_and_closures_are_refused() -> None:
    w = nn.Parameter(torch.randn(4, 4))
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # torch has now wrapped Adam.step too
    opt = make_tracked_optimizer([w], "coupled", 0.01, 0.1)
    calls: list[int] = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    for _ in range(3):
        w.grad = torch.ones_like(w)
        opt.step()
    assert len(calls) == 3
    with pytest.raises(ConfigError, match="closure"):
        opt.step(lambda: 0.0)


def test_quantiles_ignore_weights_that_were_never_decayed() -> None:
    w = nn.Parameter(torch.tensor([[0.0, 0.5], [-2.0, 1.0], [0.25, -0.125]]))
    opt = make_tracked_optimizer([w], "coupled", 0.01, 0.1)
    rng = np.random.default_rng(8)
    for _ in range(5):
        g = rng.normal(size=(3, 2)).astype(np.float32) * np.array([[0, 1], [1, 1], [1, 1]])
        w.grad = torch.from_numpy(g.astype(np.float32))  # w[0, 0] stays exactly 0
        opt.step()
    num, den = (t.double().numpy() for t in opt.shrink_sums(w))
    assert den[0, 0] == 0.0 and (den.ravel()[1:] > 0).all()
    qs = (0.1, 0.5, 0.9)
    want = np.quantile((num / np.where(den > 0, den, 1.0)).ravel()[1:], qs)
    np.testing.assert_allclose(list(shrink_ratio_quantiles(opt, qs).values()), want, rtol=1e-6)
    assert shrink_ratio_quantiles(opt, qs, params=[]) == {}
    with pytest.raises(ValueError, match="quantile"):
        shrink_ratio_quantiles(opt, (1.5,))


def test_parts_before_a_step_are_zero_and_strangers_are_refused() -> None:
    w = nn.Parameter(torch.randn(3, 3))
    opt = make_tracked_optimizer([w], "decoupled", 0.01, 0.1)
    assert not opt.decay_part(w).any() and not opt.data_part(w).any()
    with pytest.raises(ValueError, match="not a parameter"):
        opt.decay_part(torch.zeros(3, 3))


@pytest.mark.parametrize(
    ("mode", "kwargs", "match"),
    [
        ("coupled", {"amsgrad": True}, "amsgrad"),
        ("decoupled", {"fused": True}, "fused"),
        ("sgd-coupled", {"momentum": 0.9}, "momentum"),
    ],
)
def test_unsupported_options_are_refused_in_one_line(
    mode: str, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        make_tracked_optimizer([nn.Parameter(torch.zeros(2, 2))], mode, 0.01, 0.1, **kwargs)
    assert "\n" not in str(err.value)


def test_unsupported_group_settings_are_refused() -> None:
    p, q = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="amsgrad"):
        make_tracked_optimizer([{"params": [p], "amsgrad": True}], "coupled", 0.01, 0.1)
    opt = make_tracked_optimizer([p], "decoupled", 0.01, 0.1)
    opt.add_param_group({"params": [q], "maximize": True})
    torch.autograd.backward(p.sum() + q.sum())
    with pytest.raises(ConfigError, match="maximize"):
        opt.step()
