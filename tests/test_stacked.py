"""`fedadamw.core.stacked`: G models' forward as batched products equals each model's own."""

from __future__ import annotations

import pytest
import torch

from fedadamw.core.models import build_model
from fedadamw.core.stacked import stacked_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")
G, B = 5, 7


def _stack(model: torch.nn.Module, g: int) -> list[dict[str, torch.Tensor]]:
    """g perturbed copies of the model's parameters, in float64 (the reference is exact)."""
    gen = torch.Generator().manual_seed(0)
    return [
        {
            n: p.detach().double() + 0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            for n, p in model.named_parameters()
        }
        for _ in range(g)
    ]


@pytest.mark.parametrize("name", ["cnn1d", "mlp", "logreg"])
def test_each_row_is_its_own_models_forward_and_gradient(name: str) -> None:
    model = build_model(name, (40,), 10, 0).double()
    copies = _stack(model, G)
    x = torch.randn(G, B, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward = stacked_forward(model)
    assert forward is not None
    stacked = {n: torch.stack([c[n] for c in copies]).requires_grad_() for n in copies[0]}
    out = forward(stacked, x)
    assert out.shape == (G, B, 10)
    out.logsumexp(-1).sum().backward()  # type: ignore[no-untyped-call]
    for g, params in enumerate(copies):
        model.load_state_dict(params)
        model.zero_grad()
        want = model(x[g])
        want.logsumexp(-1).sum().backward()
        torch.testing.assert_close(out[g], want, rtol=1e-12, atol=1e-12)
        for n, p in model.named_parameters():
            grad = stacked[n].grad
            assert grad is not None
            torch.testing.assert_close(grad[g], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["cnn1d", "mlp"])
def test_a_rows_float32_bits_do_not_depend_on_the_other_rows(name: str) -> None:
    model = build_model(name, (40,), 10, 0)
    copies = [{n: v.float() for n, v in c.items()} for c in _stack(model, 40)]
    x = torch.randn(40, 32, 40, generator=torch.Generator().manual_seed(2))
    forward = stacked_forward(model)
    assert forward is not None

    def grads(rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        leaves = {n: torch.stack([c[n] for c in copies[rows]]).requires_grad_() for n in copies[0]}
        out = forward(leaves, x[rows])
        out.logsumexp(-1).sum().backward()  # type: ignore[no-untyped-call]
        return out.detach(), {n: v.grad for n, v in leaves.items()}  # type: ignore[misc]

    whole, whole_grads = grads(slice(0, 40))
    part, part_grads = grads(slice(17, 20))
    assert torch.equal(part, whole[17:20])
    for n in whole_grads:
        assert torch.equal(part_grads[n], whole_grads[n][17:20]), n


def test_other_architectures_fall_back_to_vmap() -> None:
    assert stacked_forward(build_model("cnn", (1, 28, 28), 10, 0)) is None
