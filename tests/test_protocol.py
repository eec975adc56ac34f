"""The controlled protocol: validation hold-out, equal local work, server-side decay, NULL for
undefined statistics and the store upgrade, each against its definition or a closed form."""

from __future__ import annotations

import copy
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core.optim import decayed_names
from fedadamw.core.server_decay import ServerDecay
from fedadamw.core.training import TrainSpec, batch_plan, train_local
from fedadamw.core.updates import ClientReply, measure_round
from fedadamw.core.wire import TrainRequest
from fedadamw.data.split import (
    ArrayDataset,
    DataSpec,
    holdout,
    holdout_size,
    load_partition,
    load_splits,
    partition_indices,
    validation_set,
)
from fedadamw.results.reader import connect_readonly
from fedadamw.results.writer import SCHEMA_VERSION, ResultStore, RoundRecord
from fedadamw.run.recorder import RunRecorder

CPU = torch.device("cpu")


def _spec(**values: object) -> DataSpec:
    return DataSpec.from_config(Config.from_mapping(dict(values)))


# -- validation split --------------------------------------------------------------------------
def test_validation_rows_are_disjoint_from_training_rows_and_the_same_for_every_arm() -> None:
    base = {"num-clients": 10, "val-fraction": 0.2, "seed": 3}
    variants = [
        {},
        {"arms": "coupled", "learning-rate": 0.003, "weight-decay": 0.5},
        {"arms": "server-decay", "local-steps": 7, "track-decay": True},
    ]
    # What a client is told (the wire), for every arm and optimizer setting of the seed.
    specs = {
        TrainRequest.from_config(Config.from_mapping({**base, **extra}), mode).data
        for extra in variants
        for mode in ("coupled", "decoupled", "none", "server-decay")
    }
    (spec,) = specs
    everything, _ = load_splits(spec)
    held = []
    for pid, rows in enumerate(partition_indices(spec)):
        train, val = holdout(spec, pid)
        assert not set(train) & set(val)
        assert sorted([*train, *val]) == sorted(rows)
        assert len(val) == math.floor(0.2 * len(rows)) and len(train) >= 1
        np.testing.assert_array_equal(load_partition(spec, pid).y, everything.y[train])
        held.append(val)
    union = validation_set(spec)
    assert len(union) == sum(len(v) for v in held)
    other_seed = _spec(**{**base, "seed": 4})
    assert not np.array_equal(holdout(other_seed, 0)[1], held[0])
    # A larger share holds out a superset: the draw is one permutation per (seed, client).
    wider = holdout(replace(spec, val_fraction=0.4), 0)[1]
    assert set(held[0]) < set(wider)


def test_a_client_too_small_to_hold_out_a_row_trains_on_all_of_them() -> None:
    assert [holdout_size(n, 0.1) for n in (1, 9, 10, 29, 30)] == [0, 0, 1, 2, 3]
    assert holdout_size(3, 0.99) == 2 and holdout_size(1, 0.99) == 0  # one training row stays
    # Exponential sizes: client 0 has 46 rows, so 2% of it is less than one row.
    spec = _spec(**{"num-clients": 5, "partitioner": "exponential", "val-fraction": 0.02})
    train, val = holdout(spec, 0)
    assert len(partition_indices(spec)[0]) == 46 and len(val) == 0 and len(train) == 46
    assert len(holdout(spec, 4)[1]) == math.floor(0.02 * len(partition_indices(spec)[4]))


# -- equal local work --------------------------------------------------------------------------
def test_local_steps_gives_every_client_exactly_that_many_steps() -> None:
    spec = _spec(**{"num-clients": 10, "local-steps": 13})
    sizes = [len(load_partition(spec, pid)) for pid in range(10)]
    # The smallest client needs several epochs for 13 steps, the largest not even one.
    assert len(set(sizes)) > 5 and min(sizes) < 32 * 13 < max(sizes)
    for pid, n in enumerate(sizes):
        task = TrainSpec("decoupled", 0.01, 0.01, 2, 32, 0, pid, 1, local_steps=13)
        plan = batch_plan(n, task)
        assert len(plan) == 13
        per_epoch = math.ceil(n / 32)
        rows = torch.cat(plan).tolist()
        for e in range(13 // per_epoch):  # every full epoch is a permutation of the rows
            epoch = torch.cat(plan[e * per_epoch : (e + 1) * per_epoch]).tolist()
            assert sorted(epoch) == list(range(n))
        assert set(rows) <= set(range(n))
        straggler = batch_plan(n, replace(task, work_fraction=0.5))
        assert len(straggler) == 7 and all(
            torch.equal(a, b) for a, b in zip(straggler, plan, strict=False)
        )
        epochs = batch_plan(n, replace(task, local_steps=0))
        assert len(epochs) == 2 * per_epoch  # local-epochs as before
    from fedadamw.core.models import model_for

    for pid in (int(np.argmin(sizes)), int(np.argmax(sizes))):
        model = model_for(Config.from_mapping({}))
        task = TrainSpec("coupled", 0.01, 0.01, 2, 32, 0, pid, 1, local_steps=13)
        assert train_local(model, load_partition(spec, pid), task, CPU).local_steps == 13


# -- server-side decay -------------------------------------------------------------------------
def _zero_gradient_setup() -> tuple[nn.Module, ArrayDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))  # its weight decays, its bias does not
    # x = 0: ∂L/∂W = (∂L/∂out) xᵀ = 0 exactly; only the (undecayed) bias learns.
    data = ArrayDataset(np.zeros((10, 4), np.float32), np.arange(10) % 3)
    return model, data


def _reply(
    pid: int,
    state: dict[str, torch.Tensor],
    n: int,
    steps: int,
    decay: dict[str, np.ndarray] | None = None,
) -> ClientReply:
    metrics = {
        schema.NUM_EXAMPLES: n,
        schema.TRAIN_LOSS: 1.0,
        schema.LOCAL_STEPS: steps,
        schema.PARTITION_ID: pid,
    }
    arrays = {k: v.numpy() for k, v in state.items()}
    return ClientReply(100 + pid, pid, arrays, metrics, decay=decay)


def test_server_decay_is_client_side_sgd_decoupled_for_one_client_with_zero_gradient() -> None:
    model, data = _zero_gradient_setup()
    lr, lam, tau = 0.05, 0.3, 7
    w0 = model.state_dict()["0.weight"].double().numpy().copy()
    closed = w0 * (1.0 - lr * lam) ** tau  # float64 closed form
    client_side = TrainSpec("sgd-decoupled", lr, lam, 1, 4, 0, 0, 1, local_steps=tau)
    sgdw = train_local(copy.deepcopy(model), data, client_side, CPU)
    np.testing.assert_allclose(sgdw.state["0.weight"].double().numpy(), closed, rtol=1e-6)

    # The server-decay client runs Adam without decay: with zero gradient W does not move ...
    trained = train_local(copy.deepcopy(model), data, replace(client_side, mode="server-decay"))
    assert torch.equal(trained.state["0.weight"], model.state_dict()["0.weight"])
    # ... and the server shrinks the aggregate of its one client by (1 − ηλ)^τ.
    global_arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    decay = ServerDecay(lr, lam, decayed_names(model))
    m = measure_round(global_arrays, [_reply(0, trained.state, 10, tau)], server_decay=decay)
    assert m.server_decay is not None
    assert m.server_decay.factor == pytest.approx((1.0 - lr * lam) ** tau, rel=1e-12)
    out = m.server_decay.apply(_reply(0, trained.state, 10, tau).arrays or {})
    assert set(out) == {"0.weight"}  # the bias is never decayed
    np.testing.assert_allclose(out["0.weight"], closed, rtol=1e-6)
    np.testing.assert_allclose(out["0.weight"], sgdw.state["0.weight"].numpy(), rtol=1e-6)
    assert m.effective_shrink == pytest.approx(lr * lam, rel=1e-9)  # ηλ per step, as SGDW
    # The measured update carries the decay step: Δ = (f − 1)·w on W (the bias moved alone).
    assert m.whole is not None and m.whole.norms[0] > 0


def test_server_decay_factor_with_unequal_steps_and_a_shared_decay_part() -> None:
    rng = np.random.default_rng(5)
    glob = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(3, np.float32)}
    states = {
        pid: {
            k: torch.from_numpy((v + rng.normal(size=v.shape)).astype(np.float32))
            for k, v in glob.items()
        }
        for pid in range(3)
    }
    n, steps, lr, lam = [10, 30, 60], [3, 9, 20], 0.01, 0.5
    zero = {k: np.zeros_like(v) for k, v in glob.items()}  # server-decay clients decay nothing
    replies = [_reply(p, states[p], n[p], steps[p], zero) for p in range(3)]
    m = measure_round(glob, replies, server_decay=ServerDecay(lr, lam, frozenset({"w"})))
    assert m.server_decay is not None and m.parts is not None
    p = np.asarray(n, float) / sum(n)
    factor = float(p @ (1.0 - lr * lam) ** np.asarray(steps, float))
    assert m.server_decay.factor == pytest.approx(factor, rel=1e-12)
    w_avg = sum(p[i] * states[i]["w"].double().numpy() for i in range(3))
    np.testing.assert_allclose(m.server_decay.step["w"], (factor - 1.0) * w_avg, rtol=1e-12)
    mean_steps = float(p @ np.asarray(steps, float))
    assert m.effective_shrink == pytest.approx(1.0 - factor ** (1.0 / mean_steps))
    assert m.effective_shrink is not None and m.effective_shrink < lr * lam  # Jensen
    # One decay part, the same for every client: identical directions by construction.
    assert m.parts.decay.stats["mean_pairwise_cosine"] == pytest.approx(1.0)
    assert m.parts.decay.stats["dispersion"] == pytest.approx(0.0, abs=1e-7)


# -- the null space: decay in directions no data gradient reaches --------------------------------
@pytest.mark.parametrize("mode", ["none", "decoupled"])
def test_a_weight_without_data_gradient_stays_under_adam_and_shrinks_under_adamw(mode: str) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3))
    x = np.random.default_rng(2).normal(size=(64, 4)).astype(np.float32)
    x[:, 3] = 0.0  # feature 3 is always 0: column 3 of W gets no data gradient, ever
    data = ArrayDataset(x, np.arange(64) % 3)
    lr, lam, tau = 0.01, 0.5, 40
    before = model.state_dict()["0.weight"].clone()
    result = train_local(model, data, TrainSpec(mode, lr, lam, 1, 8, 0, 0, 1, local_steps=tau))
    after = result.state["0.weight"]
    assert not torch.allclose(after[:, :3], before[:, :3])  # the data subspace does learn
    if mode == "none":
        assert torch.equal(after[:, 3], before[:, 3])  # Adam without decay never moves it
    else:
        want = before[:, 3].double() * (1.0 - lr * lam) ** tau  # AdamW: (1 − ηλ) per step
        np.testing.assert_allclose(after[:, 3].double(), want, rtol=1e-5)


# -- NULL where a statistic has no meaning --------------------------------------------------------
def test_all_zero_decay_parts_are_stored_as_null(tmp_path: Path) -> None:
    cfg = Config.from_mapping({"num-clients": 3, "weight-decay": 0.0, "track-decay": True})
    with ResultStore(tmp_path / "results.db") as store:
        rec = RunRecorder(store, "x:decoupled:1", cfg, "decoupled")
        rec.start()
        glob = {k: v.detach().numpy() for k, v in rec.model.state_dict().items()}
        rng = np.random.default_rng(0)
        replies = []
        for pid in range(3):
            state = {
                k: torch.from_numpy((v + 0.01 * rng.normal(size=v.shape)).astype(v.dtype))
                for k, v in glob.items()
            }
            zero = {k: np.zeros_like(v) for k, v in glob.items() if k in rec.parameter_names}
            replies.append(_reply(pid, state, 50, 10, zero))  # λ = 0: nothing decayed
        measured = measure_round(glob, replies, only=rec.parameter_names)
        rec.record(1, {k: torch.from_numpy(v) for k, v in glob.items()}, measured)
    conn = connect_readonly(tmp_path / "results.db")
    row = conn.execute("SELECT * FROM rounds WHERE round = 1").fetchone()
    for prefix in ("decay_",):
        for name in schema.STAT_NAMES:
            want = 0.0 if name == "mean_update_norm" else None
            assert row[prefix + name] == want, name
    assert row["decay_cosine_to_neg_weights"] is None
    assert row["data_dispersion"] is not None and row["dispersion"] is not None
    assert row["val_accuracy"] is not None and 0.0 <= row["val_accuracy"] <= 1.0
    nulls = conn.execute("SELECT COUNT(*) FROM layers WHERE decay_dispersion IS NULL").fetchone()
    assert nulls[0] == len(rec.parameter_names)
    conn.close()


# -- the store ---------------------------------------------------------------------------------
def test_a_schema_4_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        store.start_run("x:coupled:1", "x", "coupled", "coupled", 0.01, "{}")
        store.write_round(RoundRecord("x:coupled:1", 1, {"test_accuracy": 0.4}))
    conn = sqlite3.connect(path)  # make it what schema 4 wrote
    for table, column in (("rounds", "val_loss"), ("rounds", "val_accuracy")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for table in ("rounds", "clients"):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {schema.EFFECTIVE_SHRINK}")
    conn.execute(f"ALTER TABLE clients DROP COLUMN {schema.CLIENT_DECAY_COLUMN}")  # schema 6
    conn.execute(f"DROP TABLE {schema.PARAM_COUNTS_TABLE}")  # schema 6
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        store.write_round(
            RoundRecord("x:coupled:1", 2, {"test_accuracy": 0.5, "val_accuracy": 0.45})
        )
    conn = connect_readonly(path)
    rows = conn.execute("SELECT round, test_accuracy, val_accuracy FROM rounds").fetchall()
    assert [tuple(r) for r in rows] == [(1, 0.4, None), (2, 0.5, 0.45)]
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 8
    columns = {r[1] for r in conn.execute("PRAGMA table_info(clients)")}
    assert {schema.EFFECTIVE_SHRINK, schema.CLIENT_DECAY_COLUMN} <= columns
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert schema.PARAM_COUNTS_TABLE in tables
    conn.close()
