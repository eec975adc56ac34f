"""Models: output shapes, parameter counts against the papers' formulas, seeding, BatchNorm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core import models
from fedadamw.core.models import FloatBatchNorm2d, build_model
from fedadamw.core.training import TrainSpec, evaluate, train_local
from fedadamw.core.updates import ClientReply, check_reply, flatten_updates
from fedadamw.data.registry import REGISTRY
from fedadamw.data.split import ArrayDataset
from fedadamw.errors import ConfigError
from fedadamw.schema import MODEL_INPUTS, MODELS


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fits(model: str, dataset: str) -> bool:
    kind = REGISTRY[dataset].kind
    return MODEL_INPUTS[model] == kind or (MODEL_INPUTS[model] == "any" and kind != "tokens")


PAIRS = [(m, d) for m in MODELS for d in REGISTRY if _fits(m, d)]


def test_every_model_has_a_builder() -> None:
    assert list(models._BUILDERS) == list(MODELS)


@pytest.mark.parametrize(("name", "dataset"), PAIRS)
def test_every_fitting_model_maps_a_batch_to_class_logits(name: str, dataset: str) -> None:
    data = REGISTRY[dataset]
    model = build_model(name, data.shape, data.num_classes, seed=0, tokens=data.tokens)
    if data.tokens:  # token windows: logits per position, (batch, vocabulary, length)
        out = model.train()(torch.randint(0, data.num_classes, (3, *data.shape)))
        assert out.shape == (3, data.num_classes, *data.shape)
    else:
        out = model.train()(torch.randn(3, *data.shape))
        assert out.shape == (3, data.num_classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def _linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def _resnet20(cin: int, classes: int) -> int:
    """He et al. (2016), CIFAR ResNet-20 with option-A shortcuts: conv/norm weights + final FC."""
    total = _conv(cin, 16, 3, bias=False) + 2 * 16  # stem conv + its norm (scale, shift)
    prev = 16
    for width in (16, 32, 64):
        for _ in range(3):
            total += _conv(prev, width, 3, bias=False) + _conv(width, width, 3, bias=False)
            total += 2 * 2 * width
            prev = width
    return total + _linear(64, classes)


@pytest.mark.parametrize(
    ("name", "dataset", "expected"),
    [
        # The MNIST-1D authors print 5,210 (ConvBase) and 15,210 (MLPBase) parameters.
        ("cnn1d", "mnist1d", 5210),
        ("mlp", "mnist1d", 15210),
        ("logreg", "synthetic", _linear(60, 10)),
        ("logreg", "mnist1d", 410),  # the authors' LinearBase
        # McMahan et al.'s CNN: conv 5×5×32, conv 5×5×64, two 2×2 pools, 512 ReLU, softmax.
        (
            "cnn",
            "femnist",
            _conv(1, 32, 5) + _conv(32, 64, 5) + _linear(7 * 7 * 64, 512) + _linear(512, 62),
        ),
        (
            "cnn",
            "cifar10",
            _conv(3, 32, 5) + _conv(32, 64, 5) + _linear(8 * 8 * 64, 512) + _linear(512, 10),
        ),
        (
            "cnn",
            "digits",
            _conv(1, 32, 5) + _conv(32, 64, 5) + _linear(2 * 2 * 64, 512) + _linear(512, 10),
        ),
        ("resnet20", "cifar10", _resnet20(3, 10)),
        ("resnet20", "femnist", _resnet20(1, 62)),
    ],
)
def test_parameter_counts_match_the_formulas(name: str, dataset: str, expected: int) -> None:
    model = build_model(name, REGISTRY[dataset].shape, REGISTRY[dataset].num_classes, seed=0)
    assert _params(model) == expected


def test_resnet20_is_the_0_27m_parameter_network_with_either_norm() -> None:
    batch = build_model("resnet20", (3, 32, 32), 10, seed=0, norm="batch")
    group = build_model("resnet20", (3, 32, 32), 10, seed=0, norm="group")
    assert _params(batch) == _params(group) == 269_722  # He et al. (2016), Table 6: 0.27M
    assert sum(isinstance(m, nn.Conv2d) for m in batch.modules()) == 19  # + 1 FC = 20 layers
    assert any(isinstance(m, nn.GroupNorm) for m in group.modules())
    assert not list(group.buffers())  # GroupNorm keeps no running statistics


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights_and_the_global_rng_is_untouched(name: str) -> None:
    shape = (3, 32, 32) if MODEL_INPUTS[name] == "image" else (40,)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    tokens = MODEL_INPUTS[name] == "tokens"
    a = build_model(name, shape, 10, seed=4, tokens=tokens).state_dict()
    assert torch.equal(torch.rand(1), before)  # building a model drew nothing from the global RNG
    b = build_model(name, shape, 10, seed=4, tokens=tokens).state_dict()
    c = build_model(name, shape, 10, seed=5, tokens=tokens).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_batchnorm_state_is_floating_and_tracks_like_torchs_batchnorm() -> None:
    model = build_model("resnet20", (3, 32, 32), 10, seed=0, norm="batch")
    state = model.state_dict()
    assert all(v.is_floating_point() for v in state.values())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert sum(k.endswith("running_mean") for k in state) == 19
    # Running statistics follow torch's own BatchNorm2d (momentum 0.1, unbiased variance).
    ours, ref = FloatBatchNorm2d(4), nn.BatchNorm2d(4)
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5) * 3 + 1
        ours.train()(x)
        ref.train()(x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    # A plain dict without torch's metadata (what Flower's ArrayRecord gives back) loads strictly.
    plain = {k: v.clone() for k, v in state.items()}
    build_model("resnet20", (3, 32, 32), 10, seed=1).load_state_dict(plain)


def test_batchnorm_replies_pass_the_reply_check_and_their_deltas_cover_running_stats() -> None:
    x = torch.randn(16, 1, 8, 8)
    data = ArrayDataset(x.numpy(), np.arange(16) % 10)
    model = build_model("resnet20", (1, 8, 8), 10, seed=0)
    glob = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    spec = TrainSpec(
        mode="decoupled",
        learning_rate=0.01,
        weight_decay=0.01,
        local_epochs=1,
        batch_size=8,
        seed=0,
        partition_id=0,
        server_round=1,
    )
    result = train_local(model, data, spec, torch.device("cpu"))
    metrics = {
        schema.NUM_EXAMPLES: result.num_examples,
        schema.TRAIN_LOSS: result.train_loss,
        schema.LOCAL_STEPS: result.local_steps,
        schema.PARTITION_ID: 0,
    }
    arrays = {k: v.numpy() for k, v in result.state.items()}
    reply = ClientReply(node_id=1, partition_id=0, arrays=arrays, metrics=metrics)
    assert check_reply(reply, glob) is None
    deltas, segments = flatten_updates(glob, [reply])
    stat = segments["norm.running_mean"]
    expected = arrays["norm.running_mean"] - glob["norm.running_mean"]
    np.testing.assert_allclose(deltas[0, stat].numpy(), expected, rtol=1e-6)
    loss, acc = evaluate(model, data, torch.device("cpu"))
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dataset": "digits"}, "model: 'cnn1d' does not fit dataset 'digits' (image examples)"),
        ({"model": "resnet20"}, "model: 'resnet20' does not fit dataset 'mnist1d'"),
        ({"dataset": "cifar10", "model": "cnn1d"}, "expected one of mlp, cnn, resnet20, logreg"),
        ({"partitioner": "natural-id"}, "partitioner: 'natural-id' is not allowed with dataset"),
        (
            {"dataset": "synthetic", "model": "logreg"},
            "partitioner: 'dirichlet' is not allowed with dataset 'synthetic'; expected natural-id",
        ),
        ({"resnet-norm": "layer"}, "resnet-norm: 'layer' is not allowed; expected one of batch"),
    ],
)
def test_mismatches_are_one_line_config_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_build_model_rejects_inputs_it_cannot_take() -> None:
    with pytest.raises(ConfigError, match="expects images"):
        build_model("cnn", (40,), 10, seed=0)
    with pytest.raises(ConfigError, match="expects 1-D inputs"):
        build_model("cnn1d", (1, 8, 8), 10, seed=0)
    with pytest.raises(ConfigError, match="model: 'vit' is not allowed"):
        build_model("vit", (40,), 10, seed=0)
