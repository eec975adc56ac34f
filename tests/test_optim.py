"""The decay modes against docs/design.md's seed facts and against torch's own optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedadamw.core.models import MLP
from fedadamw.core.optim import SGDW, decay_param_groups, make_optimizer
from fedadamw.schema import DECAY_MODES


def _zero_grad_step(w: torch.Tensor, mode: str, lr: float, wd: float) -> torch.Tensor:
    p = nn.Parameter(w.clone())
    opt = make_optimizer([p], mode, lr, wd)
    (0.0 * p).sum().backward()  # type: ignore[no-untyped-call]  # an exactly-zero gradient
    opt.step()
    return p.detach()


@pytest.mark.parametrize(("lr", "wd"), [(1e-3, 0.01), (0.1, 0.5), (3e-4, 1.0)])
def test_decoupled_step_with_zero_gradient_is_a_uniform_shrink(lr: float, wd: float) -> None:
    w = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32))
    got = _zero_grad_step(w, "decoupled", lr, wd).double().numpy()
    want = w.double().numpy() * (1.0 - lr * wd)  # float64 reference of w·(1 − ηλ)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
    ratio = got / w.double().numpy()
    assert np.ptp(ratio) < 1e-6  # the same factor for every weight, large or small


def test_coupled_first_step_moves_every_weight_by_lr_whatever_its_size() -> None:
    lr, wd, eps = 1e-3, 0.01, 1e-8
    mags = np.logspace(-2, 2, 41)  # weights from 0.01 to 100
    signs = np.where(np.arange(41) % 2 == 0, 1.0, -1.0)
    w = torch.tensor(mags * signs, dtype=torch.float32)
    step = (_zero_grad_step(w, "coupled", lr, wd) - w).double().numpy()
    w64 = w.double().numpy()
    # Adam from fresh state: m̂ = λw, v̂ = (λw)², so Δ = −η·λw / (λ|w| + ε) ≈ −η·sign(w).
    exact = -lr * wd * w64 / (wd * np.abs(w64) + eps)
    # The step is read back as a float32 difference: allow one ulp of w on top.
    ulp = np.spacing(np.abs(w.numpy())).astype(np.float64)
    assert np.all(np.abs(step - exact) <= 1e-5 * np.abs(exact) + ulp)
    assert np.all(np.abs(step + lr * np.sign(w64)) <= 1e-3 * lr + ulp)
    # Decoupled shrinks a 100× larger weight 100× more; coupled moves both by ~η.
    assert abs(step[-1] / step[0]) == pytest.approx(1.0, rel=1e-3)


def test_none_mode_ignores_decay() -> None:
    w = torch.randn(10, 10)
    assert torch.equal(_zero_grad_step(w, "none", 0.1, 0.5), w)


def _trajectory(mode: str, steps: int = 200, lr: float = 0.05, wd: float = 0.1) -> list[np.ndarray]:
    # float64: the two SGD forms round differently in float32, and 200 steps of a non-convex
    # problem amplify one-ulp differences; in float64 the algebraic identity is what remains.
    torch.manual_seed(0)
    model = MLP(8, 3, 16).double()
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randint(0, 3, (64,))
    opt = make_optimizer(decay_param_groups(model), mode, lr, wd)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy())
    return out


def test_sgd_coupled_and_sgd_decoupled_give_the_same_trajectory() -> None:
    coupled, decoupled = _trajectory("sgd-coupled"), _trajectory("sgd-decoupled")
    for a, b in zip(coupled, decoupled, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # ...while the Adam pair does not: the control must be able to fail.
    adam_c, adam_d = _trajectory("coupled"), _trajectory("decoupled")
    assert np.abs(adam_c[-1] - adam_d[-1]).max() > 1e-3


def test_modes_are_torch_optimizers_with_the_shared_lambda() -> None:
    p = [nn.Parameter(torch.zeros(2, 2))]
    assert type(make_optimizer(p, "decoupled", 1e-3, 0.02)) is torch.optim.AdamW
    assert type(make_optimizer(p, "coupled", 1e-3, 0.02)) is torch.optim.Adam
    assert type(make_optimizer(p, "sgd-coupled", 1e-3, 0.02)) is torch.optim.SGD
    assert type(make_optimizer(p, "sgd-decoupled", 1e-3, 0.02)) is SGDW
    for mode in DECAY_MODES:
        wd = make_optimizer(p, mode, 1e-3, 0.02).param_groups[0]["weight_decay"]
        assert wd == (0.0 if mode in ("none", "server-decay") else 0.02)  # the server decays


def test_biases_are_not_decayed_in_any_mode() -> None:
    model = nn.Linear(4, 3)
    groups = decay_param_groups(model)
    assert [len(g["params"]) for g in groups] == [1, 1]
    for mode in ("decoupled", "sgd-decoupled"):
        bias = model.bias.detach().clone()
        opt = make_optimizer(decay_param_groups(model), mode, 0.1, 0.5)
        torch.stack([p.sum() for p in model.parameters()]).mul(0.0).sum().backward()  # type: ignore[no-untyped-call]
        opt.step()
        assert torch.equal(model.bias.detach(), bias)
