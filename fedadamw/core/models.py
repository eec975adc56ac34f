"""Models, written in torch (there is no CPU torchvision on these machines).

Every model's state dict holds floating tensors only: client updates Δ = w_client − w_global,
FedAvg and the reply check (`fedadamw.core.updates`) are defined on floating arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's convention

from fedadamw.config import Config, model_fits
from fedadamw.data import registry
from fedadamw.data.registry import example_kind
from fedadamw.errors import ConfigError
from fedadamw.schema import MODEL_INPUTS, MODELS, NORMS

GROUPS = 2  # GroupNorm groups: two per layer, the usual choice in federated ResNets


class CNN1D(nn.Module):
    """The MNIST-1D authors' ConvBase: three stride-2 convolutions of 25 channels, one linear."""

    def __init__(self, length: int = 40, num_classes: int = 10, channels: int = 25) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        with torch.no_grad():
            flat = self._features(torch.zeros(1, length)).shape[1]
        self.linear = nn.Linear(flat, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self._features(x))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """The MNIST-1D authors' MLPBase: two hidden layers of 100 ReLU units, the second residual."""

    def __init__(self, in_features: int = 40, num_classes: int = 10, hidden: int = 100) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear1(x.flatten(1)))
        h = h + torch.relu(self.linear2(h))
        return self.linear3(h)  # type: ignore[no-any-return]


class LogReg(nn.Module):
    """Multinomial logistic regression: one linear layer on the flattened example."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # type: ignore[no-any-return]


class CNN(nn.Module):
    """McMahan et al. (2017)'s CNN: 5×5 convolutions of 32 and 64 channels, each max-pooled,
    then 512 ReLU units and a linear layer."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = F.max_pool2d(torch.relu(self.conv2(h)), 2)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))  # type: ignore[no-any-return]


class FloatBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d without its int64 `num_batches_tracked` counter.

    The counter is read only when momentum is None (cumulative averages); without it the state
    dict holds floating tensors only, which Δ, FedAvg and the reply check are defined on. The
    running mean and variance stay: they are floating buffers and are averaged like weights.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.num_batches_tracked = None

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        # Skip _NormBase's hook, which inserts the counter into state dicts without metadata
        # (Flower's ArrayRecord.to_torch_state_dict()); strict loading would then fail on it.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return FloatBatchNorm2d
    return lambda channels: nn.GroupNorm(GROUPS, channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a parameter-free shortcut (He et al. 2016, CIFAR option A)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        shortcut = x
        if self.stride != 1 or self.extra:
            # Option A: subsample and zero-pad the new channels, so the shortcut has no weights.
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return torch.relu(h + shortcut)


class ResNet20(nn.Module):
    """He et al. (2016)'s CIFAR ResNet-20: 3 stages × 3 basic blocks of 16/32/64 channels."""

    def __init__(self, in_channels: int, num_classes: int, norm: str = "batch") -> None:
        super().__init__()
        layer = _norm_layer(norm)
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.norm = layer(16)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, layer))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv(x)))
        h = self.blocks(h)
        return self.fc(h.mean(dim=(2, 3)))  # type: ignore[no-any-return]


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GPT-2's order)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)
        # (B, heads, T, d / heads) each; causal: position t attends to positions ≤ t only.
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # type: ignore[no-any-return]


class Transformer(nn.Module):
    """A small causal character transformer: token and position embeddings (nn.Embedding),
    `layers` pre-LayerNorm blocks, a final LayerNorm and an untied linear head.

    The head is untied from the token embedding so that every tensor is either a matrix of a
    Linear layer, an embedding table, a bias or a LayerNorm weight: `decay-params` then says
    exactly which decay (`no-embeddings`: the Linear matrices only, head included). No dropout,
    no BatchNorm, no buffers (the cohort engine stacks parameters only). Input (B, T) int64 ids,
    T ≤ context; output logits (B, vocab, T), the layout F.cross_entropy takes with (B, T)
    targets.
    """

    def __init__(self, vocab: int, context: int, layers: int, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(
                f"transformer-dim: {dim} is not divisible by transformer-heads {heads}"
            )
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        for m in self.modules():  # GPT-2's initialisation: N(0, 0.02) weights, zero biases
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[-1], device=x.device)
        h = self.blocks(self.tokens(x) + self.positions(pos))
        return self.head(self.norm(h)).transpose(1, 2)  # type: ignore[no-any-return]


def transformer_param_count(vocab: int, context: int, layers: int, dim: int) -> int:
    """The Transformer's parameter count by formula (embeddings, blocks, final norm, head)."""
    block = 2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim)
    block += (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
    return vocab * dim + context * dim + layers * block + 2 * dim + dim * vocab + vocab


# The transformer's (layers, dim, heads) when not given: pyproject's defaults.
TRANSFORMER_SIZES = (2, 32, 4)
Sizes = tuple[int, int, int]

# How each model of fedadamw.schema.MODELS is built from (example shape, classes, norm,
# transformer sizes); which shapes it takes is MODEL_INPUTS there, checked before building.
_BUILDERS: dict[str, Callable[[tuple[int, ...], int, str, Sizes], nn.Module]] = {
    "cnn1d": lambda shape, classes, norm, sizes: CNN1D(shape[0], classes),
    "mlp": lambda shape, classes, norm, sizes: MLP(math.prod(shape), classes),
    "cnn": lambda shape, classes, norm, sizes: CNN((shape[0], shape[1], shape[2]), classes),
    "resnet20": lambda shape, classes, norm, sizes: ResNet20(shape[0], classes, norm),
    "logreg": lambda shape, classes, norm, sizes: LogReg(math.prod(shape), classes),
    "transformer": lambda shape, classes, norm, sizes: Transformer(classes, shape[0], *sizes),
}
_EXPECTS = {"vector": "1-D inputs", "image": "images", "tokens": "token windows"}


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    norm: str = "batch",
    transformer: Sizes = TRANSFORMER_SIZES,
    tokens: bool = False,
) -> nn.Module:
    """A freshly initialised model; the same arguments always give the same weights.

    `transformer` is (layers, dim, heads) of the transformer; `tokens` says the examples are
    token windows (a data set record's `tokens`).
    """
    if name not in MODELS:
        raise ConfigError(f"model: {name!r} is not allowed; expected one of {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ConfigError(
            f"resnet-norm: {norm!r} is not allowed; expected one of {', '.join(NORMS)}"
        )
    takes = MODEL_INPUTS[name]
    if not model_fits(takes, example_kind(input_shape, tokens)):
        expects = _EXPECTS.get(takes, "float vectors or images")
        raise ConfigError(f"model: {name!r} expects {expects}, the data set has {input_shape}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[name](input_shape, num_classes, norm, transformer)


def sizes_of(source: Any) -> Sizes:
    """(layers, dim, heads) of the transformer from a Config or a train request."""
    return (source.transformer_layers, source.transformer_dim, source.transformer_heads)


def model_for(cfg: Config) -> nn.Module:
    """The freshly initialised model of a run config (its data set's shape and classes)."""
    data = registry.get(cfg.dataset)
    return build_model(
        cfg.model,
        data.shape,
        data.num_classes,
        cfg.seed,
        cfg.resnet_norm,
        sizes_of(cfg),
        data.tokens,
    )
