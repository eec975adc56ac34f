"""`fedadamw probe`: the one-round counterfactual, checked against independent references.

Every stored statistic is recomputed in numpy float64 from the updates the probe keeps
(`--keep-updates`), the stored checkpoint and the clients' own training rows (losses from a
float64 copy of the model); the clients are the server's seeded sample of the next round; the
total shrink is the closed form τ·η·λ of constant schedules. Identical batches show as
bit-identical updates at λ = 0 across the Adam modes; SGD coupled ≡ decoupled is the negative
control; the two engines agree to the cohort engine's own tolerance (tests/test_cohort.py).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - torch's convention

from fedadamw.cli import main
from fedadamw.config import Config
from fedadamw.core.models import model_for
from fedadamw.core.sampling import sample_partitions
from fedadamw.data.split import DataSpec, load_partition
from fedadamw.results.reader import Store
from fedadamw.results.writer import SCHEMA_VERSION, ResultStore
from fedadamw.run.experiment import load as load_experiment
from fedadamw.run.probe import make_options, plan_jobs
from fedadamw.schema import PROBE_COLUMNS, PROBE_STATS
from server.app import run_experiment
from server.cohort_grid import CohortGrid

CLIENTS, SAMPLED, ROUNDS, STEPS = 4, 3, 2, 3
SETTINGS = {
    "experiment": "probe",
    "engine": "vmap",
    "num-clients": CLIENTS,
    "fraction-train": SAMPLED / CLIENTS,
    "num-server-rounds": ROUNDS,
    "local-steps": STEPS,
    "arms": "decoupled",
    "weight-decay": 0.05,
    "learning-rate": 0.01,
    "min-partition-size": 5,
    "checkpoint-every": 1,
}
MODES = "coupled,decoupled,none,sgd-coupled,sgd-decoupled"
DECAYS = (0.0, 0.1)
GRID = ["--modes", MODES, "--weight-decay", ",".join(map(str, DECAYS))]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(seed: int, **changes: object) -> Config:
    return Config.from_mapping({**SETTINGS, "seed": seed, **changes})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeds of a 2-round run that keeps every round's global model (not probed)."""
    out = tmp_path_factory.mktemp("runs")
    run_experiment(CohortGrid(CLIENTS), [_cfg(0), _cfg(1)], out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "results.db", dst / "results.db")
    return dst


@pytest.fixture(scope="module")
def probed(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both runs probed with both engines (flower on seed 0 only), updates kept."""
    out = _copy(runs, tmp_path_factory.mktemp("probed"))
    assert main(["probe", str(out), *GRID, "--keep-updates"]) == 0
    flower = ["--engine", "flower", "--seeds", "0"]
    assert main(["probe", str(out), *GRID, "--keep-updates", *flower]) == 0
    return out


def _rows(out: Path) -> pd.DataFrame:
    return Store(out).probes()


def _updates(out: Path) -> pd.DataFrame:
    return Store(out).probe_updates()


def _of(updates: pd.DataFrame, run_id: str, mode: str, wd: float, engine: str) -> pd.DataFrame:
    sel = updates[
        (updates["run_id"] == run_id)
        & (updates["mode"] == mode)
        & (updates["weight_decay"] == wd)
        & (updates["engine"] == engine)
    ]
    return sel.sort_values("partition_id")


def _loss64(
    model: torch.nn.Module, state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> float:
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()}
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(x, np.float64)))
        return float(F.cross_entropy(logits, torch.from_numpy(y), reduction="mean"))


def test_every_statistic_matches_a_float64_recomputation(probed: Path) -> None:
    store = Store(probed)
    rows, updates, runs = _rows(probed), _updates(probed), store.runs().set_index("run_id")
    assert list(rows.columns[: len(PROBE_COLUMNS)]) == list(PROBE_COLUMNS)
    assert {"arm", "seed", "run_mode", "dirichlet-alpha"} <= set(rows.columns)
    assert len(rows) == 2 * 5 * len(DECAYS) + 5 * len(DECAYS)  # vmap both seeds, flower one
    for _, row in rows.iterrows():
        cfg = Config.from_mapping(runs.at[row["run_id"], "config"])
        r = int(row["round"])
        assert r == 1  # the only kept round below num-server-rounds
        mine = _of(updates, row["run_id"], row["mode"], row["weight_decay"], row["engine"])
        pids = list(mine["partition_id"])
        assert pids == sample_partitions(cfg.seed, r + 1, range(CLIENTS), SAMPLED)
        assert row["clients"] == len(pids) == SAMPLED
        ckpt = store.checkpoint(row["run_id"], r).state
        names = list(ckpt)  # cnn1d: every tensor is a parameter, in the model's order
        w = np.concatenate([ckpt[n].astype(np.float64).ravel() for n in names])
        dec = np.concatenate([np.full(ckpt[n].size, ckpt[n].ndim >= 2) for n in names])
        d = np.stack(mine["update"].to_list()).astype(np.float64)
        decay = np.stack(mine["decay_part"].to_list()).astype(np.float64)
        n = mine["num_examples"].to_numpy(np.float64)
        p = n / n.sum()
        norms = np.linalg.norm(d, axis=1)
        u = d / norms[:, None]
        cos = u @ u.T
        k = len(d)
        want = {
            "mean_pairwise_cosine": cos[np.triu_indices(k, 1)].mean(),
            "dispersion": 1 - np.linalg.norm(u.mean(axis=0)),
            "mean_update_norm": norms.mean(),
            "decay_share": 0.0
            if row["mode"] == "none"
            else (np.linalg.norm(decay, axis=1) / norms).mean(),
            "shrink_cosine": (
                (d[:, dec] @ -w[dec]) / (np.linalg.norm(d[:, dec], axis=1) * np.linalg.norm(w[dec]))
            ).mean(),
            "shrink_component": (d[:, dec] @ -w[dec]).mean() / np.linalg.norm(w[dec]),
            "total_shrink": 0.0
            if row["mode"] == "none"
            else STEPS * row["learning_rate"] * row["weight_decay"],
        }
        for stat, value in want.items():
            assert row[stat] == pytest.approx(value, rel=1e-6, abs=1e-9), stat
        # Losses: a float64 copy of the model on each client's own training rows.
        model = model_for(cfg).double()
        spec = DataSpec.from_config(cfg)
        data = [load_partition(spec, pid) for pid in pids]
        assert [len(x) for x in data] == list(n.astype(int))

        def at(flat: np.ndarray, like: dict[str, np.ndarray] = ckpt) -> dict[str, np.ndarray]:
            out, offset = {}, 0
            for name, array in like.items():
                out[name] = flat[offset : offset + array.size].reshape(array.shape)
                offset += array.size
            return out

        base = np.asarray([_loss64(model, ckpt, c.x, c.y) for c in data])
        agg = at(w + p @ d)
        agg_change = p @ (np.asarray([_loss64(model, agg, c.x, c.y) for c in data]) - base)
        own = np.asarray([_loss64(model, at(w + d[i]), c.x, c.y) for i, c in enumerate(data)])
        assert row["aggregate_loss_change"] == pytest.approx(agg_change, abs=2e-5)
        assert row["client_loss_change"] == pytest.approx(p @ (own - base), abs=2e-5)
    # The decay acts: at λ = 0.1 decoupled's and coupled's shares are not 0, none's is.
    acting = rows[(rows["weight_decay"] == 0.1) & rows["mode"].isin(["coupled", "decoupled"])]
    assert (acting["decay_share"] > 0).all() and (acting["total_shrink"] > 0).all()


def test_identical_batches_lambda_zero_gives_bit_identical_updates(probed: Path) -> None:
    updates = _updates(probed)
    for run_id in updates["run_id"].unique():
        for engine in ("vmap", "flower"):
            adam = [_of(updates, run_id, m, 0.0, engine) for m in ("coupled", "decoupled", "none")]
            if adam[0].empty:
                continue  # flower probed seed 0 only
            first = np.stack(adam[0]["update"].to_list())
            for other in adam[1:]:
                assert np.array_equal(np.stack(other["update"].to_list()), first)
            sgd = [_of(updates, run_id, m, 0.0, engine) for m in ("sgd-coupled", "sgd-decoupled")]
            assert np.array_equal(
                np.stack(sgd[0]["update"].to_list()), np.stack(sgd[1]["update"].to_list())
            )


def test_sgd_coupled_equals_sgd_decoupled_where_adam_modes_differ(probed: Path) -> None:
    updates = _updates(probed)
    for run_id in updates["run_id"].unique():
        a = np.stack(_of(updates, run_id, "sgd-coupled", 0.1, "vmap")["update"].to_list())
        b = np.stack(_of(updates, run_id, "sgd-decoupled", 0.1, "vmap")["update"].to_list())
        # Float tolerance: (1 − ηλ)w − ηg and w − η(g + λw) round differently, by ~ulp(w) per
        # step, which is ~1e-5 of an update 60× smaller than w; a wrong formula is off by ηλw.
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
        # The control can fail: coupled and decoupled Adam at the same λ are far apart.
        c = np.stack(_of(updates, run_id, "coupled", 0.1, "vmap")["update"].to_list())
        e = np.stack(_of(updates, run_id, "decoupled", 0.1, "vmap")["update"].to_list())
        assert np.linalg.norm(c - e) > 1e-2 * np.linalg.norm(e)


def test_vmap_and_flower_engines_agree(probed: Path) -> None:
    updates, rows = _updates(probed), _rows(probed)
    flower = rows[rows["engine"] == "flower"]
    assert len(flower) == 5 * len(DECAYS)
    for _, row in flower.iterrows():
        rid, mode, wd = row["run_id"], row["mode"], row["weight_decay"]
        a = np.stack(_of(updates, rid, mode, wd, "vmap")["update"].to_list()).astype(np.float64)
        b = np.stack(_of(updates, rid, mode, wd, "flower")["update"].to_list()).astype(np.float64)
        # tests/test_cohort.py's tolerance: 1e-5 of the largest update entry everywhere, or
        # for Adam (float32 noise in near-zero gradients sent to full steps) on all but 0.2%
        # of the entries, the rest within 1e-2.
        err = np.abs(a - b) / np.abs(b).max()
        outliers = 0.0 if mode.startswith("sgd") else 2e-3
        assert (err > 1e-5).sum() <= outliers * err.size, err.max()
        assert err.max() <= (1e-2 if outliers else 1e-5)
        other = rows[
            (rows["engine"] == "vmap")
            & (rows["run_id"] == rid)
            & (rows["mode"] == mode)
            & (rows["weight_decay"] == wd)
        ].iloc[0]
        for stat in PROBE_STATS:
            # Coupled Adam's decay part divides by √v̂ + ε like its step (tests/test_cohort_grid.py
            # gives it 1e-3 per part, and outliers): its share is the one loose statistic.
            rel = 1e-2 if (stat, mode) == ("decay_share", "coupled") else 1e-3
            assert row[stat] == pytest.approx(other[stat], rel=rel, abs=1e-5), stat


def test_a_rerun_skips_stored_rows_and_computes_only_missing_ones(
    probed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(probed, tmp_path / "again")
    before = _rows(out)
    capsys.readouterr()
    assert main(["probe", str(out), *GRID]) == 0
    assert "nothing to compute" in capsys.readouterr().err
    conn = sqlite3.connect(out / "results.db")
    conn.execute("DELETE FROM probes WHERE mode = 'none' AND weight_decay = 0.1 AND engine='vmap'")
    conn.commit()
    conn.close()
    assert main(["probe", str(out), *GRID]) == 0
    err = capsys.readouterr().err
    assert err.count("probe ") == 2 and err.count("1 settings × 3 clients") == 2
    after = _rows(out)
    pd.testing.assert_frame_equal(after, before)  # recomputed bit for bit, the rest untouched


def test_the_probe_table_and_where_select_what_they_say(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(runs, tmp_path / "selected")
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'experiment = "probe"\n[probe]\nrounds = [1]\nmodes = ["coupled", "none"]\n'
        'weight-decay = [0.0, 0.3]\nlearning-rate = [0.02]\nwhere = ["seed=1"]\n'
    )
    load_experiment(exp)  # `fedadamw run` reads the same file and leaves [probe] alone
    # The command line wins over the table: one mode only.
    assert main(["probe", str(out), "--config", str(exp), "--modes", "none"]) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    # The printed note names what the table is over: as many runs as the store rows hold.
    assert f"runs: {rows['run_id'].nunique()} (seed=1; seeds all); engine vmap" in printed
    assert set(rows["seed"]) == {1} and set(rows["mode"]) == {"none"}
    assert sorted(rows["weight_decay"]) == [0.0, 0.3] and set(rows["learning_rate"]) == {0.02}
    store = Store(out)
    both = make_options({"where": ["arm=decoupled"], "seeds": "0-1", "rounds": "1"})
    jobs = plan_jobs(store, both, lambda run_id: set())
    assert sorted(j.cfg.seed for j in jobs) == [0, 1]
    only = make_options({"where": ["dirichlet-alpha=0.3", "seed=0"]})
    assert [j.cfg.seed for j in plan_jobs(store, only, lambda run_id: set())] == [0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--modes", "adamw"], "--modes: 'adamw' is not allowed"),
        (["--modes", "server-decay"], "server's decay is not a client setting"),
        (["--weight-decay", "-1"], "--weight-decay: '-1' is not allowed"),
        (["--weight-decay", "nan"], "--weight-decay: 'nan' is not allowed"),
        (["--learning-rate", "0"], "--learning-rate: '0' is not allowed"),
        (["--rounds", "7"], "has no checkpoint of round 7 (kept rounds: 1, 2)"),
        (["--rounds", "2"], "round 3 has no clients to re-train"),
        (["--where", "arm=coupled"], "--where arm=coupled matches no run"),
        (["--where", "colour=red"], "--where colour: no run has that key"),
        (["--seeds", "5"], "--seeds 5 matches no run"),
        (["--engine", "ray"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_stores_nothing(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    out = _copy(runs, tmp_path / "bad")
    capsys.readouterr()
    try:
        code = main(["probe", str(out), *args])
    except SystemExit as exc:  # argparse's own refusals (a choice) exit from the parser
        code = int(str(exc.code))
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert Store(out).probes().empty


def test_unknown_probe_key_and_no_kept_checkpoint(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text("[probe]\nlambda = [0.1]\n")
    capsys.readouterr()
    assert main(["probe", str(_copy(runs, tmp_path / "a")), "--config", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "[probe] key 'lambda' is not allowed" in err and err.count("\n") == 1
    # Only the last round's checkpoint (checkpoint-every = 0): nothing before it to probe.
    out = _copy(runs, tmp_path / "b")
    conn = sqlite3.connect(out / "results.db")
    conn.execute("DELETE FROM kept_checkpoints")
    conn.commit()
    conn.close()
    assert main(["probe", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint kept before its last round 2 (kept: 2)" in err and err.count("\n") == 1


def test_a_schema_7_store_reads_empty_probes_and_is_upgraded(runs: Path, tmp_path: Path) -> None:
    out = _copy(runs, tmp_path / "old")
    conn = sqlite3.connect(out / "results.db")
    conn.execute("DROP TABLE probes")
    conn.execute("DROP TABLE probe_updates")
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    empty = Store(out).probes()
    assert empty.empty and list(empty.columns) == list(PROBE_COLUMNS)
    assert Store(out).probe_updates().empty
    ResultStore(out / "results.db").close()
    conn = sqlite3.connect(out / "results.db")
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert int(version) == SCHEMA_VERSION == 8 and {"probes", "probe_updates"} <= tables


def test_ctrl_c_keeps_every_checkpoint_already_written(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedadamw.run import probe_train

    out = _copy(runs, tmp_path / "stopped")
    real = probe_train.probe_checkpoint
    calls: list[str] = []

    def stop_at_second(*args: object, **kwargs: object) -> object:
        calls.append("x")
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C during the second checkpoint's training
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probe_train, "probe_checkpoint", stop_at_second)
    grid = ["--modes", "none,decoupled", "--weight-decay", "0.1"]
    assert main(["probe", str(out), *grid]) == 130
    first = _rows(out)
    assert len(first) == 2 and first["run_id"].nunique() == 1  # the first checkpoint's rows
    monkeypatch.setattr(probe_train, "probe_checkpoint", real)
    capsys.readouterr()
    assert main(["probe", str(out), *grid]) == 0
    assert capsys.readouterr().err.count("probe 1/1:") == 1  # only the lost one again
    after = _rows(out)
    assert len(after) == 4
    kept = after[after["run_id"] == first["run_id"].iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first.reset_index(drop=True))


def test_copy_runs_carries_probes_and_updates(probed: Path, tmp_path: Path) -> None:
    """A cluster sweep's copy of a run's rows (ResultStore.copy_runs) keeps its probe rows."""
    ids = list(Store(probed).runs()["run_id"])
    with ResultStore(tmp_path / "copy" / "results.db") as store:
        store.copy_runs(probed / "results.db", ids)
    pd.testing.assert_frame_equal(_rows(tmp_path / "copy"), _rows(probed))
    a, b = _updates(tmp_path / "copy"), _updates(probed)
    assert len(a) == len(b) > 0
    for x, y in zip(a["update"], b["update"], strict=True):
        assert np.array_equal(x, y)
