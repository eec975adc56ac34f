"""Every server optimizer (Flower's strategies under MeasuredStrategy) on fake replies, no Ray.

Each one's first two rounds against a numpy float64 implementation of its update rule (Reddi
et al., "Adaptive Federated Optimization", Algorithm 2; FedAvgM: Hsu et al. 2019), the same
statistics stored by every one, and a resumed run continuing from the checkpointed state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.errors import ConfigError
from fedadamw.results.reader import connect_readonly
from fedadamw.results.writer import ResultStore
from fedadamw.run.recorder import RunRecorder
from server.optimizers import STRATEGIES, make_strategy
from server.strategy import MeasuredStrategy
from tests.test_strategy import SHAPES, FakeGrid, _arrays, _metrics, _reply, _task_identity

__all__ = ["_task_identity"]  # the fixture that gives messages a task identity

NODES = {10 + p: p for p in range(3)}
COUNTS = {0: 10, 1: 30, 2: 60}
SETTINGS = {
    "server-learning-rate": 0.3,
    "server-momentum": 0.8,
    "server-tau": 0.05,
    "server-beta1": 0.7,
    "server-beta2": 0.9,
    "proximal-mu": 0.1,
}


def _config(optimizer: str) -> Config:
    return Config.from_mapping(
        {"num-clients": len(NODES), "server-optimizer": optimizer, **SETTINGS}
    )


def _strategy(
    tmp_path: Path, optimizer: str, first_round: int = 0
) -> tuple[MeasuredStrategy, RunRecorder]:
    store = ResultStore(tmp_path / "results.db")
    cfg = _config(optimizer)
    rec = RunRecorder(store, f"exp:coupled:{optimizer}", cfg, "coupled")
    resume = rec.start()
    strategy = make_strategy(cfg, "coupled", rec.model, NODES, len(NODES), first_round)
    strategy.parameter_names = frozenset(SHAPES)  # measure the fake tensors, not the model's
    strategy.load_server_state(resume.server_state)
    return strategy, rec


def _record(strategy: MeasuredStrategy, rec: RunRecorder, rnd: int) -> None:
    """Write round `rnd` as the ServerApp's evaluate_fn does (the recorder's own model)."""
    rec.record(rnd, rec.model.state_dict(), strategy.last_measurement, strategy.last_server_state)


def _client_states(glob: dict[str, np.ndarray], rnd: int) -> dict[int, dict[str, np.ndarray]]:
    """Each client's weights after local training: the global model plus seeded noise."""
    rng = np.random.default_rng(100 + rnd)
    return {
        p: {k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()}
        for p in NODES.values()
    }


def _round(
    strategy: MeasuredStrategy, rnd: int, glob: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    strategy.configure_train(rnd, _arrays(glob), ConfigRecord({}), FakeGrid(list(NODES)))
    states = _client_states(glob, rnd + strategy.first_round)
    replies = [_reply(n, states[p], _metrics(COUNTS[p], p)) for n, p in NODES.items()]
    arrays, _ = strategy.aggregate_train(rnd, iter(replies))
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


def _reference(
    optimizer: str, glob0: dict[str, np.ndarray], rounds: int
) -> list[dict[str, np.ndarray]]:
    """The update rules in float64, from the paper; Flower's documented choices noted inline."""
    eta, tau = SETTINGS["server-learning-rate"], SETTINGS["server-tau"]
    b1, b2, mom = SETTINGS["server-beta1"], SETTINGS["server-beta2"], SETTINGS["server-momentum"]
    p = np.asarray([COUNTS[i] for i in sorted(COUNTS)], float) / sum(COUNTS.values())
    x = {k: v.astype(np.float64) for k, v in glob0.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v2 = {k: np.zeros_like(v) for k, v in x.items()}  # Flower starts v at 0 (paper: v₋₁ ≥ τ²)
    out = []
    for t in range(1, rounds + 1):
        states = _client_states({k: val.astype(np.float32) for k, val in x.items()}, t)
        new = {}
        for k in x:
            # Δₜ = Σ pᵢ(wᵢ − xₜ): FedAvg's aggregate minus the global model
            delta = sum(p[i] * states[i][k].astype(np.float64) for i in range(3)) - x[k]
            if optimizer in ("fedavg", "fedprox"):
                new[k] = x[k] + delta
            elif optimizer == "fedavgm":
                # Hsu et al.: v ← μv + (x − avg) (v₁ = its first pseudo-gradient); x ← x − ηv
                m[k] = mom * m[k] - delta
                new[k] = x[k] - eta * m[k]
            else:
                beta1 = 0.0 if optimizer == "fedadagrad" else b1  # Flower's FedAdagrad: β1 = 0
                m[k] = beta1 * m[k] + (1 - beta1) * delta
                if optimizer == "fedadagrad":
                    v2[k] = v2[k] + delta**2
                elif optimizer == "fedadam":
                    v2[k] = b2 * v2[k] + (1 - b2) * delta**2
                else:  # fedyogi
                    v2[k] = v2[k] - (1 - b2) * delta**2 * np.sign(v2[k] - delta**2)
                step = eta
                if optimizer == "fedadam":
                    # Flower adds Adam's bias correction (exponent t + 1); the paper has none.
                    step = eta * np.sqrt(1 - b2 ** (t + 1.0)) / (1 - b1 ** (t + 1.0))
                new[k] = x[k] + step * m[k] / (np.sqrt(v2[k]) + tau)
        x = new
        out.append({k: v.copy() for k, v in x.items()})
    return out


def _glob0() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


@pytest.mark.parametrize("optimizer", schema.SERVER_OPTIMIZERS)
def test_first_two_rounds_follow_the_papers_update_rule(tmp_path: Path, optimizer: str) -> None:
    glob = _glob0()
    strategy, _ = _strategy(tmp_path, optimizer)
    reference = _reference(optimizer, glob, 2)
    for rnd, want in enumerate(reference, start=1):
        glob = _round(strategy, rnd, glob)
        for k, value in glob.items():
            assert value.dtype == np.float32  # the model's dtype, whatever the server computes
            np.testing.assert_allclose(value, want[k], rtol=1e-5, atol=1e-6)
    # Round 2 moved the model away from plain FedAvg of round 2 (state carried over), except
    # for the stateless ones.
    fedavg = _reference("fedavg", _glob0(), 2)[1]
    moved = max(float(np.abs(reference[1][k] - fedavg[k]).max()) for k in SHAPES)
    assert (moved > 1e-3) == (optimizer not in ("fedavg", "fedprox"))


@pytest.mark.parametrize("optimizer", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_resumed_run_continues_from_the_checkpointed_server_state(
    tmp_path: Path, optimizer: str
) -> None:
    straight, _ = _strategy(tmp_path / "a", optimizer)
    glob = _round(straight, 1, _glob0())
    want = _round(straight, 2, glob)
    # The interrupted run: round 1 recorded (its checkpoint holds the server state), then a new
    # process resumes after round 1 from what the store gives back.
    first, first_rec = _strategy(tmp_path / "b", optimizer)
    after_one = _round(first, 1, _glob0())
    _record(first, first_rec, 1)
    assert first.server_state()  # the state that a fresh strategy would lack
    resumed, _ = _strategy(tmp_path / "b", optimizer, first_round=1)
    assert resumed.server_state().keys() == first.server_state().keys()
    got = _round(resumed, 1, after_one)
    for k in SHAPES:
        assert got[k].tobytes() == want[k].tobytes()


def test_every_server_optimizer_stores_the_same_statistics(tmp_path: Path) -> None:
    non_null: dict[str, dict[str, set[str]]] = {}
    for optimizer in STRATEGIES:
        strategy, rec = _strategy(tmp_path / optimizer, optimizer)
        glob = _glob0()
        for rnd in (1, 2):
            glob = _round(strategy, rnd, glob)
            _record(strategy, rec, rnd)
        conn = connect_readonly(tmp_path / optimizer / "results.db")
        tables: dict[str, set[str]] = {}
        for table in ("rounds", "clients", "layers", "pairs"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            tables[table] = {
                c
                for c in cols
                if conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE round >= 1 AND {c} IS NOT NULL"
                ).fetchone()[0]
            }
        conn.close()
        non_null[optimizer] = tables
    fedavg = non_null["fedavg"]
    assert "mean_pairwise_cosine" in fedavg["rounds"] and "cosine" in fedavg["pairs"]
    for optimizer, tables in non_null.items():
        assert tables == fedavg, optimizer


def test_fedprox_alone_sends_its_mu_and_server_decay_needs_plain_averaging() -> None:
    from fedadamw.core.wire import TrainRequest

    assert TrainRequest.from_config(_config("fedprox"), "coupled").proximal_mu == 0.1
    assert TrainRequest.from_config(_config("fedadam"), "coupled").proximal_mu == 0.0
    with pytest.raises(ConfigError, match="server-optimizer: 'fedyogi' is not allowed"):
        _config("fedyogi").replace(arms="decoupled,server-decay")
    for key, bad in [
        ("server-optimizer", "fedsgd"),
        ("server-learning-rate", 0.0),
        ("server-momentum", 1.0),
        ("server-tau", 0.0),
        ("server-beta1", 1.0),
        ("server-beta2", -0.1),
        ("proximal-mu", -1.0),
    ]:
        with pytest.raises(ConfigError, match=f"^{key}: "):
            _config("fedavg").replace(**{key.replace("-", "_"): bad})
