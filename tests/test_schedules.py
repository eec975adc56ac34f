"""Learning-rate and decay schedules against their closed forms and a hand-computed AdamW step."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's convention

from fedadamw.config import Config
from fedadamw.core.models import build_model
from fedadamw.core.optim import decay_param_groups, make_optimizer, param_counts
from fedadamw.core.schedules import Schedule, lr_multiplier
from fedadamw.core.training import (
    TrainSpec,
    batch_plan,
    client_decay,
    round_length,
    step_settings,
    train_local,
)
from fedadamw.data.split import ArrayDataset
from fedadamw.errors import ConfigError

CPU = torch.device("cpu")
S = 7  # local steps per round
R = 10  # rounds


def _cos(x: float) -> float:
    """½(1 + cos πx) in numpy float64: the reference, written apart from the module's."""
    return float(0.5 * (1.0 + np.cos(np.pi * np.float64(x))))


# (schedule, global step, expected multiplier): every branch, boundaries included.
CASES = [
    (Schedule("constant", R), 33, 1.0),
    (Schedule("cosine", R), 0, 1.0),
    (Schedule("cosine", R), R * S // 2, _cos(0.5)),
    (Schedule("cosine", R), 10, _cos(10 / (R * S))),
    (Schedule("cosine", R), R * S - 1, _cos((R * S - 1) / (R * S))),
    # warmup over 2 rounds = 14 steps: 1/14, …, 14/14, then the cosine over the other 56.
    (Schedule("warmup-cosine", R, warmup_rounds=2), 0, 1 / 14),
    (Schedule("warmup-cosine", R, warmup_rounds=2), 6, 7 / 14),
    (Schedule("warmup-cosine", R, warmup_rounds=2), 13, 1.0),
    (Schedule("warmup-cosine", R, warmup_rounds=2), 14, 1.0),
    (Schedule("warmup-cosine", R, warmup_rounds=2), 14 + 28, _cos(0.5)),
    # step: ×0.5 every 3 rounds = 21 steps.
    (Schedule("step", R, step_rounds=3, step_gamma=0.5), 20, 1.0),
    (Schedule("step", R, step_rounds=3, step_gamma=0.5), 21, 0.5),
    (Schedule("step", R, step_rounds=3, step_gamma=0.5), 42, 0.25),
    (Schedule("step", R, step_rounds=3, step_gamma=0.5), 69, 0.125),
    # restarts: periods 2, 4, 8 rounds = 14, 28, 56 steps, starting at steps 0, 14, 42.
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=2.0), 13, _cos(13 / 14)),
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=2.0), 14, 1.0),
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=2.0), 28, _cos(0.5)),
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=2.0), 41, _cos(27 / 28)),
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=2.0), 42, 1.0),
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=2.0), 69, _cos(27 / 56)),
    # mult 1.5: periods 14, 21 steps; the second restart at step 35.
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=1.5), 34, _cos(20 / 21)),
    (Schedule("cosine-restarts", R, restart_rounds=2, restart_mult=1.5), 35, 1.0),
]


@pytest.mark.parametrize(("schedule", "t", "expected"), CASES)
def test_each_schedule_at_chosen_steps_is_its_closed_form(
    schedule: Schedule, t: int, expected: float
) -> None:
    assert lr_multiplier(schedule, t, S) == pytest.approx(expected, rel=1e-13, abs=1e-15)


def _spec(**changes: object) -> TrainSpec:
    base = TrainSpec("decoupled", 0.01, 0.05, 1, 8, 0, 0, 1, local_steps=S)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _run_settings(spec: TrainSpec, num_examples: int = 40) -> np.ndarray:
    """(R·s, 2) float64: every step's (ηₜ, torch weight_decay) over the whole run."""
    s = round_length(num_examples, spec)
    rows = [
        step_settings(num_examples, dataclasses.replace(spec, server_round=r), s)
        for r in range(1, spec.schedule.rounds + 1)
    ]
    return np.array([x for per in rows for x in per], dtype=np.float64)


def test_the_round_clock_follows_the_global_step() -> None:
    spec = _spec(schedule=Schedule("cosine", R))
    run = _run_settings(spec)
    want = [0.01 * _cos(t / (R * S)) for t in range(R * S)]
    np.testing.assert_allclose(run[:, 0], want, rtol=1e-13)
    # With local-epochs the round is the client's full epochs: 2 epochs of ⌈40/8⌉ batches.
    epochs = _spec(local_steps=0, local_epochs=2, work_fraction=0.3)
    assert round_length(40, epochs) == 10 and len(batch_plan(40, epochs)) == 3


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule("warmup-cosine", R, warmup_rounds=3),
        Schedule("cosine", R, warmup_rounds=1),
        Schedule("constant", R, warmup_rounds=4),
        Schedule("cosine-restarts", R, warmup_rounds=2, restart_rounds=2, restart_mult=2.0),
    ],
)
@pytest.mark.parametrize("scaling", ["torch", "paper"])
def test_after_warmup_gives_constants_total_shrink(schedule: Schedule, scaling: str) -> None:
    """Σₜ shrinkₜ over the run is the same as with decay from the first step."""
    constant = _run_settings(_spec(schedule=schedule, decay_scaling=scaling))
    after = _run_settings(
        _spec(schedule=schedule, decay_scaling=scaling, decay_schedule="after-warmup")
    )
    warm = schedule.warmup_rounds * S
    assert not after[:warm, 1].any() and (after[warm:, 1] > constant[warm:, 1]).all()
    # The decoupled shrink per step is lr·weight_decay in torch's AdamW, whatever the scaling.
    total = math.fsum(constant[:, 0] * constant[:, 1])
    assert math.fsum(after[:, 0] * after[:, 1]) == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("name", ["cosine", "warmup-cosine", "step", "cosine-restarts"])
def test_lr_compensated_holds_lambda_times_eta(name: str) -> None:
    schedule = Schedule(name, R, warmup_rounds=2, step_rounds=3, step_gamma=0.3, restart_rounds=2)
    run = _run_settings(_spec(schedule=schedule, decay_schedule="lr-compensated"))
    assert np.ptp(run[:, 0]) > 0.005  # the learning rate does fall
    np.testing.assert_allclose(run[:, 0] * run[:, 1], 0.01 * 0.05, rtol=1e-12)


@pytest.mark.parametrize("scaling", ["torch", "paper"])
@pytest.mark.parametrize("mode", ["decoupled", "coupled"])
def test_decay_scaling_against_a_hand_computed_adamw_step(scaling: str, mode: str) -> None:
    """One step of round 4 of a cosine run (m ≈ 0.79): w·(1 − shrink) − ηₜ·g/(|g| + ε)."""
    lr, lam, eps = 0.01, 0.2, 1e-8
    spec = _spec(mode=mode, schedule=Schedule("cosine", R), decay_scaling=scaling, server_round=4)
    spec = dataclasses.replace(spec, weight_decay=lam)
    j = 3
    eta_t, wd = step_settings(40, spec, j + 1)[j]
    m = _cos((3 * S + j) / (R * S))
    rng = np.random.default_rng(0)
    w64, g64 = rng.normal(size=50), rng.normal(size=50)
    p = nn.Parameter(torch.tensor(w64, dtype=torch.float32))
    opt = make_optimizer([p], mode, lr, lam)
    opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"] = eta_t, wd  # as train_local
    p.grad = torch.tensor(g64, dtype=torch.float32)
    opt.step()
    w, g = p.detach().double().numpy(), g64.astype(np.float32).astype(np.float64)
    w0 = w64.astype(np.float32).astype(np.float64)
    assert eta_t == pytest.approx(lr * m, rel=1e-13)
    if mode == "decoupled":
        shrink = lr * m * lam if scaling == "torch" else m * lam  # ηₜλ, or the paper's α·λ
        want = w0 * (1.0 - shrink) - lr * m * g / (np.abs(g) + eps)
    else:  # L2 either way: g' = g + λw, first Adam step moves by ηₜ·g'/|g'|
        gp = g + lam * w0
        want = w0 - lr * m * gp / (np.abs(gp) + eps)
    np.testing.assert_allclose(w, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("b", "n", "epochs", "steps"), [(8, 40, 1, 0), (32, 1000, 3, 0), (16, 50, 2, 0), (8, 40, 1, 9)]
)
def test_normalized_decay_per_client(b: int, n: int, epochs: int, steps: int) -> None:
    spec = _spec(decay_schedule="normalized", batch_size=b, local_epochs=epochs, local_steps=steps)
    got = client_decay(n, spec)
    # λ_norm·√(b/(B·T)); with k local steps T = k·b/B epochs, i.e. λ_norm/√k.
    t_epochs = epochs if steps == 0 else steps * b / n
    want = 0.05 * np.sqrt(np.float64(b) / (n * t_epochs))
    assert got == pytest.approx(float(want), rel=1e-13)
    assert {wd for _, wd in step_settings(n, spec, 5)} == {got}  # constant over the run
    assert client_decay(n, _spec()) == 0.05  # other schedules: the server's λ


def test_train_local_reports_the_clients_normalized_decay() -> None:
    model = nn.Linear(6, 3)
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 3, 50))
    spec = _spec(decay_schedule="normalized", local_steps=0, local_epochs=2, batch_size=16)
    result = train_local(model, data, spec, CPU)
    assert result.client_decay == pytest.approx(0.05 * math.sqrt(16 / (50 * 2)), rel=1e-13)


@pytest.mark.parametrize("which", ["matrices", "all"])
def test_decay_params_against_torchs_adamw_on_the_same_groups(which: str) -> None:
    """`all` decays biases too: train_local against torch's AdamW, the groups written by hand."""
    model = build_model("cnn1d", (40,), 10, seed=1)
    rng = np.random.default_rng(1)
    data = ArrayDataset(rng.normal(size=(48, 40)).astype(np.float32), rng.integers(0, 10, 48))
    spec = _spec(decay_params=which, weight_decay=0.5, local_steps=5, learning_rate=0.01)
    mine = copy.deepcopy(model)
    train_local(mine, data, spec, CPU)
    ref = copy.deepcopy(model)
    params = list(ref.parameters())
    groups: list[dict[str, Any]] = (
        [{"params": params}]
        if which == "all"
        else [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    )
    opt = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.5)
    x, y = data.tensors(CPU)
    for idx in batch_plan(len(data), spec):
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
        opt.step()
    for (name, a), b in zip(mine.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), name
    counts = param_counts(model, which)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    if which == "all":
        assert counts == (len(params), sum(p.numel() for p in params), 0, 0)
    else:
        assert counts == (
            len(matrices),
            sum(p.numel() for p in matrices),
            len(vectors),
            sum(p.numel() for p in vectors),
        )
    assert len(decay_param_groups(model, which)[0]["params"]) == counts[0]


def test_all_decays_a_bias_with_no_gradient() -> None:
    """With g = 0 a bias is multiplied by 1 − ηλ under `all` and left alone under `matrices`."""
    for which, factor in (("all", 1.0 - 0.1 * 0.5), ("matrices", 1.0)):
        layer = nn.Linear(3, 2)
        before = layer.bias.detach().clone()
        opt = make_optimizer(decay_param_groups(layer, which), "decoupled", 0.1, 0.5)
        (0.0 * layer(torch.ones(1, 3))).sum().backward()
        opt.step()
        np.testing.assert_allclose(
            layer.bias.detach().double().numpy(), before.double().numpy() * factor, rtol=1e-7
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr-schedule": "linear"}, "lr-schedule: 'linear' is not allowed; expected one of"),
        ({"decay-schedule": "x"}, "decay-schedule: 'x' is not allowed; expected one of"),
        ({"decay-scaling": "adam"}, "decay-scaling: 'adam' is not allowed; expected one of"),
        ({"decay-params": "biases"}, "decay-params: 'biases' is not allowed; expected one of"),
        ({"step-gamma": 0.0}, "step-gamma: 0.0 is not allowed; expected a number in (0, 1]"),
        ({"restart-mult": 0.5}, "restart-mult: 0.5 is not allowed; expected a number >= 1"),
        ({"restart-rounds": 0}, "restart-rounds: 0 is not allowed; expected an integer >= 1"),
        ({"step-rounds": 0}, "step-rounds: 0 is not allowed; expected an integer >= 1"),
        (
            {"lr-schedule": "warmup-cosine", "warmup-rounds": 0},
            "warmup-rounds: 0 is not allowed with lr-schedule 'warmup-cosine'",
        ),
        (
            {"decay-schedule": "after-warmup", "warmup-rounds": 30},
            "warmup-rounds: 30 is not allowed with lr-schedule 'constant' and decay-schedule "
            "'after-warmup'; expected an integer in [1, num-server-rounds = 30)",
        ),
        (
            {"arms": "decoupled,server-decay", "lr-schedule": "cosine"},
            "arms: 'server-decay' is not allowed with lr-schedule 'cosine'",
        ),
    ],
)
def test_bad_schedule_keys_are_one_line_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(values)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_defaults_are_todays_behaviour() -> None:
    """Constant η and λ on matrices: every step gets the request's own numbers, exactly."""
    cfg = Config.from_mapping({})
    assert (cfg.lr_schedule, cfg.decay_schedule, cfg.decay_scaling, cfg.decay_params) == (
        "constant",
        "constant",
        "torch",
        "matrices",
    )
    spec = _spec(local_steps=0, local_epochs=2)
    assert set(step_settings(40, spec, 10)) == {(0.01, 0.05)}
    assert set(step_settings(40, dataclasses.replace(spec, mode="none"), 3)) == {(0.01, 0.0)}
