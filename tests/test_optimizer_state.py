"""optimizer-state: Adam's moments kept by each client (local) or averaged by the server.

`local` in a real Flower simulation (Context.state across rounds, an unsampled client's state
untouched); Adam's state carried across two train_local calls against torch's own AdamW run
without a break; `server-averaged` against a numpy float64 reference: the server sends back
exactly the example-weighted mean of the clients' v, and a client's first step from (m = 0,
v = mean, step) is Adam's closed form.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core.models import build_model
from fedadamw.core.optim import decay_param_groups, make_optimizer
from fedadamw.core.sampling import sample_partitions
from fedadamw.core.training import TrainSpec, batch_plan, train_local
from fedadamw.data.split import ArrayDataset
from fedadamw.errors import ConfigError
from fedadamw.results.reader import connect_readonly
from fedadamw.results.writer import ResultStore
from fedadamw.run.recorder import RunRecorder
from server.optimizers import make_strategy
from tests.test_strategy import SHAPES, FakeGrid, _arrays, _metrics, _reply, _task_identity

__all__ = ["_task_identity"]
CPU = torch.device("cpu")
CLIENTS, PER_ROUND, ROUNDS, STEPS = 3, 2, 4, 3


def test_local_state_survives_rounds_in_a_real_simulation(tmp_path: Path) -> None:
    # Seed 0 must leave some client out of a round and sample it again later: the round that
    # follows then has to start from the state of its last sampled round, untouched.
    sampled = {r: set(sample_partitions(0, r, range(CLIENTS), PER_ROUND)) for r in range(1, 5)}
    assert any(
        p not in sampled[r] and any(p in sampled[s] for s in range(r + 1, ROUNDS + 1))
        for r in range(2, ROUNDS)
        for p in sampled[1] & sampled[r - 1]
    ) or any(p not in sampled[2] and p in sampled[3] and p in sampled[1] for p in range(CLIENTS))
    out = tmp_path / "out"
    sets = [
        f"num-clients={CLIENTS}",
        f"num-server-rounds={ROUNDS}",
        f"fraction-train={PER_ROUND / CLIENTS + 0.01}",
        f"local-steps={STEPS}",
        "arms=decoupled,coupled",
        "optimizer-state=local",
        "experiment=local-state",
    ]
    argv = [sys.executable, "-m", "fedadamw.cli", "run", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    conn = connect_readonly(out / "results.db")
    rows = conn.execute(
        "SELECT u.arm, c.round, c.partition_id, c.local_steps, c.optimizer_steps "
        "FROM clients c JOIN runs u USING (run_id) ORDER BY u.arm, c.round"
    ).fetchall()
    conn.close()
    for arm in ("decoupled", "coupled"):
        done = dict.fromkeys(range(CLIENTS), 0)  # Adam steps each client has taken so far
        arm_rows = [r for r in rows if r[0] == arm]
        assert sorted({r[1] for r in arm_rows}) == list(range(1, ROUNDS + 1))
        for _, rnd, pid, steps, started in arm_rows:
            assert pid in sampled[rnd]
            # Its own steps only: the other arm's moments (same client process) never leak in.
            assert started == done[pid], (arm, rnd, pid)
            done[pid] += steps
        assert max(done.values()) > STEPS  # somebody's state did carry over


def _data(n: int, seed: int) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n))


def test_moments_carried_across_two_calls_are_torchs_uninterrupted_run() -> None:
    model = build_model("logreg", (6,), 3, seed=0)
    data = _data(40, 1)
    spec1 = TrainSpec("decoupled", 0.01, 0.1, 1, 8, 0, 2, 1, optimizer_state="local")
    spec2 = TrainSpec("decoupled", 0.01, 0.1, 1, 8, 0, 2, 2, optimizer_state="local")
    ours = copy.deepcopy(model)
    first = train_local(ours, data, spec1, CPU)
    second = train_local(ours, data, spec2, CPU, moments=first.moments)
    assert first.start_step == 0 and second.start_step == first.local_steps == 5
    ref = copy.deepcopy(model)
    opt = make_optimizer(decay_param_groups(ref), "decoupled", 0.01, 0.1)
    x, y = data.tensors()
    for idx in [*batch_plan(40, spec1), *batch_plan(40, spec2)]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
        opt.step()
    for name, value in ref.state_dict().items():
        assert torch.equal(second.state[name], value), name
    # Without the carried moments the second round is a different trajectory.
    fresh = copy.deepcopy(model)
    train_local(fresh, data, spec1, CPU)
    alone = train_local(fresh, data, dataclasses_replace(spec2), CPU)
    assert not torch.equal(alone.state["linear.weight"], second.state["linear.weight"])


def dataclasses_replace(spec: TrainSpec) -> TrainSpec:
    import dataclasses

    return dataclasses.replace(spec, optimizer_state="reset")


def test_first_step_from_the_servers_mean_v_is_adams_closed_form() -> None:
    model = build_model("logreg", (6,), 3, seed=4)
    data = _data(8, 2)
    lr, lam, step = 0.01, 0.1, 7
    spec = TrainSpec("decoupled", lr, lam, 1, 8, 0, 0, 1, optimizer_state=schema.SERVER_AVERAGED)
    rng = np.random.default_rng(3)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    v_mean = {n: rng.uniform(1e-4, 1e-2, size=params[n].shape) for n in names}
    moments = {f"exp_avg_sq/{n}": torch.tensor(v, dtype=torch.float32) for n, v in v_mean.items()}
    moments["step"] = torch.tensor(float(step))
    w0 = {n: p.detach().double().numpy().copy() for n, p in params.items()}
    # The gradient at w0 on the one batch (float64).
    ref = copy.deepcopy(model).double()
    x, y = data.tensors()
    (idx,) = batch_plan(8, spec)
    torch.nn.functional.cross_entropy(ref(x[idx].double()), y[idx]).backward()  # type: ignore[no-untyped-call]
    grads = {n: p.grad.numpy() for n, p in ref.named_parameters() if p.grad is not None}
    result = train_local(model, data, spec, CPU, moments=moments)
    assert result.start_step == step
    b1, b2, eps, t = 0.9, 0.999, 1e-8, step + 1
    decayed = {n for n in names if params[n].ndim >= 2}
    for n in names:
        g, v0 = grads[n], v_mean[n].astype(np.float32).astype(np.float64)
        m1 = (1 - b1) * g  # m was reset to 0
        v1 = b2 * v0 + (1 - b2) * g**2
        w = w0[n] * (1 - lr * lam) if n in decayed else w0[n]
        want = w - lr * (m1 / (1 - b1**t)) / (np.sqrt(v1 / (1 - b2**t)) + eps)
        np.testing.assert_allclose(result.state[n].double().numpy(), want, rtol=0, atol=1e-6)
    assert result.moments is not None and float(result.moments["step"]) == t


def test_server_sends_back_the_example_weighted_mean_of_the_clients_v(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    cfg = Config.from_mapping({"num-clients": 3, "optimizer-state": schema.SERVER_AVERAGED})
    rec = RunRecorder(store, "exp:decoupled:x", cfg, "decoupled")
    rec.start()
    nodes = {10 + p: p for p in range(3)}
    strategy = make_strategy(cfg, "decoupled", rec.model, nodes, 3)
    strategy.parameter_names = frozenset(SHAPES)
    rng = np.random.default_rng(5)
    glob = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    first = list(
        strategy.configure_train(1, _arrays(glob), ConfigRecord({}), FakeGrid(list(nodes)))
    )
    assert all(schema.ADAM_V not in m.content.array_records for m in first)  # nothing yet
    counts = {0: 10, 1: 30, 2: 60}
    vs = {
        p: {
            **{
                f"exp_avg_sq/{k}": rng.uniform(0, 1, size=s).astype(np.float32)
                for k, s in SHAPES.items()
            },
            "step": np.asarray(float(5 + 3 * p), np.float32),
        }
        for p in range(3)
    }
    replies = []
    for node, p in nodes.items():
        msg = _reply(node, {k: v + 0.1 for k, v in glob.items()}, _metrics(counts[p], p))
        msg.content[schema.ADAM_V] = ArrayRecord({k: Array(v) for k, v in vs[p].items()})
        replies.append(msg)
    arrays, _ = strategy.aggregate_train(
        1, iter(reversed(replies))
    )  # arrival order must not matter
    assert arrays is not None
    weights = np.asarray([counts[p] for p in range(3)], np.float64) / 100
    sent = list(strategy.configure_train(2, arrays, ConfigRecord({}), FakeGrid(list(nodes))))
    assert len(sent) == 3
    for m in sent:
        got = {k: a.numpy() for k, a in m.content.array_records[schema.ADAM_V].items()}
        assert set(got) == set(vs[0])
        for key in SHAPES:
            want = sum(weights[p] * vs[p][f"exp_avg_sq/{key}"].astype(np.float64) for p in range(3))
            np.testing.assert_allclose(got[f"exp_avg_sq/{key}"], want, rtol=1e-6)
        assert float(got["step"]) == round(float(weights @ np.asarray([5.0, 8.0, 11.0])))
    # The mean goes into the checkpoint, so a resumed run sends the same.
    assert {k for k in strategy.server_state() if k.startswith("avg_v/")} == {
        f"avg_v/{k}" for k in vs[0]
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine": "vmap", "optimizer-state": "local"}, "^engine: 'vmap' is not allowed"),
        ({"arms": "sgd-coupled", "optimizer-state": "local"}, "^optimizer-state: 'local'"),
        (
            {"arms": "coupled", "track-decay": True, "optimizer-state": "local"},
            "^optimizer-state: 'local' is not allowed with track-decay",
        ),
        ({"optimizer-state": "global"}, "^optimizer-state: 'global' is not allowed"),
    ],
)
def test_what_optimizer_state_cannot_do_is_one_line(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_mapping(changes)
