"""TensorBoard and MLflow files of a store, read back with each tool's own reader."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedadamw import cli
from fedadamw.errors import ConfigError
from fedadamw.results.reader import connect_readonly
from fedadamw.results.trackers import metric_name, parse_trackers
from tests.test_figures import Synthetic, write_synthetic_store

ROUNDS = 3


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    out = tmp_path_factory.mktemp("trackers") / "run"
    return write_synthetic_store(out, seeds=(0, 1), num_rounds=ROUNDS, num_clients=3, parts=True)


def _store_rounds(syn: Synthetic, run_id: str) -> dict[int, dict[str, float]]:
    """Every non-NULL value of a run's `rounds` rows, by round: the reference."""
    conn = connect_readonly(syn.path)
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM rounds WHERE run_id=?", (run_id,))]
    finally:
        conn.close()
    return {
        int(r["round"]): {
            k: float(v) for k, v in r.items() if k not in ("run_id", "round") and v is not None
        }
        for r in rows
    }


def test_tensorboard_event_files_hold_every_round_and_the_config(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    root = tmp_path / "tb"
    args = ["export", str(synthetic.path.parent), "--format", "tensorboard", "--dir", str(root)]
    assert cli.main(args) == 0
    assert cli.main(args) == 0  # written again: replaced, never appended
    folders = sorted(p.parent for p in root.rglob("events.out.tfevents.*"))
    assert len(folders) == len(synthetic.run_ids) and len(set(folders)) == len(folders)
    for (mode, seed, _), run_id in synthetic.run_ids.items():
        folder = root.joinpath(*run_id.split(":"))
        acc = EventAccumulator(str(folder))
        acc.Reload()
        ref = _store_rounds(synthetic, run_id)
        columns = {c for values in ref.values() for c in values}
        assert set(acc.Tags()["scalars"]) >= {metric_name(c) for c in columns}
        for column in columns:
            events = acc.Scalars(metric_name(column))
            expected = [(k, ref[k][column]) for k in sorted(ref) if column in ref[k]]
            assert [e.step for e in events] == [k for k, _ in expected]
            # simple_value is float32: exactly the store's value rounded to float32
            np.testing.assert_array_equal(
                np.asarray([e.value for e in events], np.float32),
                np.asarray([v for _, v in expected], np.float32),
            )
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        config = synthetic.configs[run_id]
        assert start.hparams["seed"].number_value == seed == config["seed"]
        assert start.hparams["arms"].string_value == mode
        assert start.hparams["weight-decay"].number_value == config["weight-decay"]
        assert start.hparams["track-decay"].bool_value is False
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        tags = {m.name.tag for m in experiment.metric_infos}
        assert "hparams/final_accuracy" in tags
        (final,) = acc.Scalars("hparams/final_accuracy")
        assert final.value == np.float32(ref[ROUNDS]["test_accuracy"])


def test_mlflow_has_one_run_per_arm_with_params_metrics_and_the_store(
    synthetic: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "ml"
    args = ["export", str(synthetic.path.parent), "--format", "mlflow", "--dir", str(folder)]
    assert cli.main(args) == 0
    assert cli.main(args) == 0  # the arms' runs are replaced, not duplicated
    uri = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["default"])
    assert sorted(found["tags.fedadamw.run_id"]) == sorted(synthetic.run_ids.values())
    assert set(found["status"]) == {"FINISHED"}
    client = MlflowClient(tracking_uri=uri)
    for mlflow_id, run_id in zip(found["run_id"], found["tags.fedadamw.run_id"], strict=True):
        config = synthetic.configs[run_id]
        params = client.get_run(mlflow_id).data.params
        assert params == {k: str(v) for k, v in config.items()}
        ref = _store_rounds(synthetic, run_id)
        for column in ("test_accuracy", "dispersion", "decay_dispersion", "shrink_p50"):
            history = client.get_metric_history(mlflow_id, metric_name(column))
            got = sorted((m.step, m.value) for m in history)
            assert got == [(k, ref[k][column]) for k in sorted(ref) if column in ref[k]]
        # the store itself rides along: its copy holds the same rounds
        local = Path(client.download_artifacts(mlflow_id, "results.db", str(tmp_path)))
        copy = sqlite3.connect(local)
        n = copy.execute("SELECT COUNT(*) FROM rounds WHERE run_id=?", (run_id,)).fetchone()[0]
        copy.close()
        assert n == len(ref)


@pytest.mark.parametrize(
    ("values", "message"),
    [(["wandb"], "--log: 'wandb' is not allowed; expected one of tensorboard, mlflow")],
)
def test_an_unknown_tracker_is_refused(values: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_trackers(values)


def test_trackers_parse_from_commas_and_repeats() -> None:
    assert parse_trackers(["tensorboard,mlflow", "tensorboard"]) == ("tensorboard", "mlflow")


def test_run_with_an_unknown_tracker_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "--out", str(tmp_path / "o"), "--log", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "--log: 'wandb' is not allowed" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def _mlflow_runs(uri: str) -> dict[str, list[tuple[str, str]]]:
    """Every MLflow run (deleted ones too) by fedadamw run id: (MLflow id, lifecycle stage)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    found: dict[str, list[tuple[str, str]]] = {}
    for run in client.search_runs(ids, run_view_type=ViewType.ALL):
        key = run.data.tags["fedadamw.run_id"]
        found.setdefault(key, []).append((run.info.run_id, run.info.lifecycle_stage))
    return found


def test_one_arm_is_one_mlflow_run_across_interrupt_resume_export_and_restart(
    synthetic: Synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "ml"
    uri = f"sqlite:///{folder}/mlflow.db"
    # The store as an interrupted run left it: rounds after 1 not written yet.
    partial = tmp_path / "partial"
    shutil.copytree(synthetic.path.parent, partial)
    conn = sqlite3.connect(partial / "results.db")
    for table in ("rounds", "clients", "layers", "pairs", "rejections"):
        conn.execute(f"DELETE FROM {table} WHERE round > 1")
    conn.execute("UPDATE runs SET status='interrupted'")
    conn.commit()
    conn.close()

    def export(out: Path) -> None:
        assert cli.main(["export", str(out), "--format", "mlflow", "--dir", str(folder)]) == 0

    export(partial)
    first = _mlflow_runs(uri)
    assert sorted(first) == sorted(synthetic.run_ids.values())
    export(synthetic.path.parent)  # resumed and finished
    export(synthetic.path.parent)  # exported again
    after = _mlflow_runs(uri)
    assert after == first  # the same one MLflow run per arm, none deleted, none added
    client = MlflowClient(tracking_uri=uri)
    for run_id, [(mlflow_id, _)] in after.items():
        assert client.get_run(mlflow_id).info.status == "FINISHED"
        ref = _store_rounds(synthetic, run_id)
        for column in ("test_accuracy", "dispersion"):
            got = sorted(
                (m.step, m.value) for m in client.get_metric_history(mlflow_id, metric_name(column))
            )
            # each stored round exactly once
            assert got == [(k, ref[k][column]) for k in sorted(ref) if column in ref[k]]
    # --restart ran one arm again: different rows for rounds it held, so its run is replaced.
    redone = tmp_path / "redone"
    shutil.copytree(synthetic.path.parent, redone)
    run_id = sorted(synthetic.run_ids.values())[0]
    conn = sqlite3.connect(redone / "results.db")
    conn.execute("UPDATE rounds SET test_accuracy = 0.125 WHERE run_id=? AND round=1", (run_id,))
    conn.commit()
    conn.close()
    export(redone)
    final = _mlflow_runs(uri)
    assert {k: v for k, v in final.items() if k != run_id} == {
        k: v for k, v in first.items() if k != run_id
    }
    live = [m for m, stage in final[run_id] if stage == "active"]
    assert len(live) == 1 and live[0] != first[run_id][0][0]
    history = client.get_metric_history(live[0], metric_name("test_accuracy"))
    assert [m.value for m in history if m.step == 1] == [0.125]
