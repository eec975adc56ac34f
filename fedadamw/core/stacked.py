"""One forward pass for G models of one architecture at once, written as batched matrix products.

The cohort and grid engines train many copies of a small model in lockstep: a (G, *shape)
stack of every weight, one batch of inputs per model. `torch.func.vmap(functional_call)` turns a
1-D convolution into one grouped convolution of G·C channels, which on the CPU dispatches to
kernels sized for one large model and spends ~1.2 ms per model-step on MNIST-1D's cnn1d (and on
2-D convolutions it is compute-bound anyway). Written as `torch.baddbmm` over the stack — each
convolution as one im2col matrix product per model, channels last so no transpose sits between
layers — the same forward and backward take ~0.4 ms (benchmarks/bench_cohort.py).

Each model's rows are a separate matrix product of fixed shape, so a row's numbers do not
depend on which other models share the stack or where it sits in it (tests/test_stacked.py
checks this bit for bit): identical settings give identical rows, the pairing a comparison rests on.

`stacked_forward(model)` returns such a function for the architectures written out here and
None for the others, which the engines then run through `vmap(functional_call)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - torch's convention

from fedadamw.core.models import CNN1D, MLP, LogReg

# (parameters by name, each (G, *shape); inputs (G, B, *example)) -> logits (G, B, classes).
StackedForward = Callable[[dict[str, Tensor], Tensor], Tensor]


def linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """h (G, B, in) times each model's weight (G, out, in)ᵀ plus its bias (G, out)."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def conv1d_channels_last(h: Tensor, weight: Tensor, bias: Tensor, stride: int, pad: int) -> Tensor:
    """A 1-D convolution of h (G, B, L, C_in) with each model's weight (G, C_out, C_in, k).

    im2col: the padded input's windows (G, B, L', C_in, k) flattened to (G, B·L', C_in·k), one
    matrix product per model with its weight as (G, C_in·k, C_out); the result stays channels
    last, (G, B, L', C_out), ready for the next layer.
    """
    g, b = h.shape[0], h.shape[1]
    c_out, c_in, k = weight.shape[1], weight.shape[2], weight.shape[3]
    windows = F.pad(h, (0, 0, pad, pad)).unfold(2, k, stride)  # (G, B, L', C_in, k)
    length = windows.shape[2]
    cols = windows.reshape(g, b * length, c_in * k)
    out = torch.baddbmm(bias.unsqueeze(1), cols, weight.reshape(g, c_out, c_in * k).transpose(1, 2))
    return out.view(g, b, length, c_out)


def _cnn1d(model: CNN1D) -> StackedForward:
    convs = [(name, getattr(model, name)) for name in ("conv1", "conv2", "conv3")]
    for _, conv in convs:
        if conv.dilation != (1,) or conv.groups != 1 or not isinstance(conv.padding, tuple):
            raise ValueError("stacked cnn1d: only plain strided convolutions are written out")
    shapes = [(name, conv.stride[0], conv.padding[0]) for name, conv in convs]

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        h = x.unsqueeze(-1)  # (G, B, L, 1): one input channel, channels last
        for name, stride, pad in shapes:
            h = torch.relu(
                conv1d_channels_last(h, p[f"{name}.weight"], p[f"{name}.bias"], stride, pad)
            )
        g, b, length, channels = h.shape
        # torch's flatten is channel-major (C, L'); the activations are (L', C): permute the
        # linear weight's columns instead of the (larger) activations.
        w = p["linear.weight"]
        w = w.view(g, w.shape[1], channels, length).transpose(2, 3).reshape(g, w.shape[1], -1)
        return linear(h.reshape(g, b, length * channels), w, p["linear.bias"])

    return forward


def _mlp(model: MLP) -> StackedForward:
    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        h = torch.relu(linear(x.flatten(2), p["linear1.weight"], p["linear1.bias"]))
        h = h + torch.relu(linear(h, p["linear2.weight"], p["linear2.bias"]))
        return linear(h, p["linear3.weight"], p["linear3.bias"])

    return forward


def _logreg(model: LogReg) -> StackedForward:
    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return linear(x.flatten(2), p["linear.weight"], p["linear.bias"])

    return forward


def stacked_forward(model: nn.Module) -> StackedForward | None:
    """The stacked forward of `model`'s architecture, or None where none is written out."""
    # Exact types: a subclass may change forward, and then only vmap reproduces it.
    if type(model) is CNN1D:
        return _cnn1d(model)
    if type(model) is MLP:
        return _mlp(model)
    if type(model) is LogReg:
        return _logreg(model)
    return None
