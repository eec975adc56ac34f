"""Experiment trackers (`fedadamw run --log tensorboard,mlflow`), written from the store.

Off by default, and nothing leaves the machine: TensorBoard event files and an MLflow store
both go into the output folder. They are written from the results store when `fedadamw run`
ends (finished, interrupted or failed alike), not from the training loop: the round's single
store transaction stays the only write on the hot path, and a resumed run's trackers show
exactly the rounds the store holds. Each arm's files are rewritten as a whole every time.

- TensorBoard (`OUT/tensorboard/<experiment>/<arm>/<hash>/`): every per-round statistic the
  store holds as a scalar (step = round), the run's config as hparams, with the final test
  accuracy and the mean over rounds of the main statistics as hparams metrics.
- MLflow (`OUT/mlflow/`: a local SQLite store, `mlflow.db`, and `artifacts/`): one MLflow run
  per arm in an MLflow experiment named after the fedadamw experiment, with the config as
  params, every per-round statistic as metrics (step = round) and a snapshot of the results
  store as an artifact. MLflow 3 refuses its plain-file backend unless told otherwise; SQLite
  is its recommended local store (`mlflow ui --backend-store-uri sqlite:///OUT/mlflow/mlflow.db`).
  `MLFLOW_TRACKING_URI`, when set, sends the runs to that store instead. An arm stays one
  MLflow run across interrupts, resumes, exports and re-runs (found by its `fedadamw.run_id`
  tag; later commands add only the rounds it lacks); `--restart` replaces it.

Only `tensorboard` (its event writer and protos, no TensorFlow) and `mlflow-skinny` are
needed: `pip install 'fedadamw[trackers]'`. Neither imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fedadamw.errors import ConfigError
from fedadamw.results.reader import Store, connect_readonly
from fedadamw.results.summaries import ROUND_MEAN, run_summary
from fedadamw.schema import FAILED_PREFIX, FINISHED, INTERRUPTED, STAT_NAMES, STORE_FILE

TRACKERS = ("tensorboard", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"
RUN_ID_TAG = "fedadamw.run_id"  # the MLflow tag that finds an arm's run again
LOGGED_TAG = "fedadamw.logged"  # "<last round>:<digest of the rows up to it>" it holds
# hparams metrics: what a run ended with, and how spread its clients' updates were
SUMMARY_METRICS = (
    "final_accuracy",
    *(ROUND_MEAN + s for s in ("mean_pairwise_cosine", "dispersion")),
)


def parse_trackers(values: Sequence[str]) -> tuple[str, ...]:
    """The trackers of `--log` (repeatable, or comma-separated), each checked as installed."""
    chosen = [v.strip() for value in values for v in value.split(",") if v.strip()]
    for name in chosen:
        if name not in TRACKERS:
            raise ConfigError(
                f"--log: {name!r} is not allowed; expected one of {', '.join(TRACKERS)}"
            )
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"--log {name}: the {PACKAGES[name]} package is not installed; "
                "pip install 'fedadamw[trackers]'"
            )
    return tuple(dict.fromkeys(chosen))


def metric_name(column: str) -> str:
    """The tracker name of a `rounds` column, grouped as TensorBoard shows sections."""
    for prefix, group in (("decay_", "decay_part"), ("data_", "data_part")):
        if column.startswith(prefix):
            return f"{group}/{column[len(prefix) :]}"
    if column in STAT_NAMES:
        return f"divergence/{column}"
    if column.startswith("shrink_"):
        return f"decay_part/{column}"
    if column in ("test_accuracy", "test_loss", "train_loss"):
        return f"training/{column}"
    return f"round/{column}"


@dataclass(frozen=True)
class ArmLog:
    """One arm as the trackers see it: its config, status and per-round values."""

    run_id: str
    experiment: str
    mode: str
    status: str
    started_at: float
    finished_at: float | None
    config: dict[str, Any]
    rounds: pd.DataFrame  # round + one column per metric that holds a value
    summary: dict[str, float]  # SUMMARY_METRICS that have a value

    @property
    def folder(self) -> Path:
        """`experiment/arm/hash` of the run id: TensorBoard lists runs by their path."""
        return Path(*[part or "_" for part in self.run_id.split(":")])


def arms_of(out_dir: Path, run_ids: Sequence[str] | None = None) -> list[ArmLog]:
    """The arms of the store in `out_dir` (those of `run_ids`) that have a stored round."""
    store = Store(out_dir)
    runs = store.runs()
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(list(run_ids))]
    rounds = store.rounds(list(runs["run_id"]))
    summary = run_summary(runs, rounds, STAT_NAMES).set_index("run_id")
    columns = [c for c in rounds.columns if c not in ("run_id", "round")]
    arms = []
    for run in runs.itertuples():
        rows = rounds[rounds["run_id"] == run.run_id]
        if rows.empty:
            continue  # registered, never started: nothing to log
        kept = [c for c in columns if rows[c].notna().any()]
        arms.append(
            ArmLog(
                run_id=str(run.run_id),
                experiment=str(run.experiment),
                mode=str(run.mode),
                status=str(run.status),
                started_at=float(getattr(run, "started_at", 0.0) or time.time()),
                finished_at=_number(getattr(run, "finished_at", None)),
                config=dict(run.config),
                rounds=rows[["round", *kept]]
                .rename(columns={c: metric_name(c) for c in kept})
                .reset_index(drop=True),
                summary={
                    k: float(v)
                    for k in SUMMARY_METRICS
                    if k in summary and (v := _number(summary.at[run.run_id, k])) is not None
                },
            )
        )
    return arms


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def write_trackers(
    out_dir: Path, trackers: Sequence[str], run_ids: Sequence[str] | None = None
) -> list[str]:
    """Write every chosen tracker for the arms of `run_ids`; one line per tracker written."""
    arms = arms_of(out_dir, run_ids)
    lines = []
    if "tensorboard" in trackers:
        root = write_tensorboard(out_dir / TENSORBOARD_DIR, arms)
        lines.append(f"tensorboard: {len(arms)} runs in {root}  (tensorboard --logdir {root})")
    if "mlflow" in trackers:
        uri = write_mlflow(out_dir / STORE_FILE, out_dir / MLFLOW_DIR, arms)
        lines.append(f"mlflow: {len(arms)} runs in {uri}  (mlflow ui --backend-store-uri {uri})")
    return lines


# -- TensorBoard -----------------------------------------------------------------------------
def write_tensorboard(root: Path, arms: Sequence[ArmLog]) -> Path:
    """One event file per arm under `root`: scalars per round, config as hparams."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for arm in arms:
        folder = root / arm.folder
        shutil.rmtree(folder, ignore_errors=True)  # the store is the truth: rewrite it whole
        folder.mkdir(parents=True)
        writer = EventFileWriter(str(folder))
        try:
            for summary in _hparams(arm):
                writer.add_event(Event(wall_time=arm.started_at, summary=summary))
            wall = arm.started_at
            for _, row in arm.rounds.iterrows():
                step = int(row["round"])
                wall += _seconds(row)
                values = [
                    Summary.Value(tag=tag, simple_value=float(v))
                    for tag, v in row.items()
                    if tag != "round" and pd.notna(v)
                ]
                writer.add_event(Event(wall_time=wall, step=step, summary=Summary(value=values)))
            last = int(arm.rounds["round"].max())
            metrics = [
                Summary.Value(tag=f"hparams/{k}", simple_value=v) for k, v in arm.summary.items()
            ]
            writer.add_event(Event(wall_time=wall, step=last, summary=Summary(value=metrics)))
        finally:
            writer.close()
    return root


def _seconds(row: pd.Series) -> float:
    """How long a round took (its events are stamped at the time it was stored)."""
    value = _number(row.get("round/seconds"))
    return 0.0 if value is None else value


def hparam_value(value: Any) -> bool | float | str:
    """A config value as TensorBoard's hparams take it (bool, number or text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return "" if value is None else str(value)


def _hparams(arm: ArmLog) -> list[Any]:
    """The experiment, session-start and session-end summaries of TensorBoard's hparams."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    hparams = {k: hparam_value(v) for k, v in arm.config.items()}
    start = plugin_data_pb2.SessionStartInfo(group_name=arm.run_id, start_time_secs=arm.started_at)
    infos = []
    for key, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
            kind = api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, float):
            start.hparams[key].number_value = value
            kind = api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[key].string_value = value
            kind = api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=key, type=kind))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"hparams/{k}")) for k in arm.summary
        ],
    )
    status = {
        FINISHED: api_pb2.STATUS_SUCCESS,
        INTERRUPTED: api_pb2.STATUS_UNKNOWN,  # hparams have no "stopped, resumable"
    }.get(arm.status, api_pb2.STATUS_FAILURE)
    end = plugin_data_pb2.SessionEndInfo(
        status=status, end_time_secs=arm.finished_at or arm.started_at
    )

    def summary(tag: str, **content: Any) -> Summary:
        data = plugin_data_pb2.HParamsPluginData(**content)
        return Summary(
            value=[
                Summary.Value(
                    tag=tag,
                    metadata=metadata.create_summary_metadata(data),
                    tensor=metadata.NULL_TENSOR,
                )
            ]
        )

    return [
        summary(metadata.EXPERIMENT_TAG, experiment=experiment),
        summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
        summary(metadata.SESSION_END_INFO_TAG, session_end_info=end),
    ]


# -- MLflow ----------------------------------------------------------------------------------
def mlflow_uri(folder: Path) -> str:
    """Where the MLflow runs go: `MLFLOW_TRACKING_URI`, else `folder`/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder.resolve()}/mlflow.db"


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's and alembic's start-up chatter (table creation, deprecations) stays off screen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow  # noqa: F401 - configures its loggers on import: quiet them after that

        names = ("mlflow", "alembic", "sqlalchemy")
        levels = {n: logging.getLogger(n).level for n in names}
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


MLFLOW_STATUS = {FINISHED: "FINISHED", INTERRUPTED: "KILLED"}


def write_mlflow(store: Path, folder: Path, arms: Sequence[ArmLog]) -> str:
    """One MLflow run per arm (params, per-round metrics, the store as an artifact); the URI.

    The runs go to a local SQLite store in `folder` (artifacts beside it) unless
    `MLFLOW_TRACKING_URI` names another store.
    """
    uri = mlflow_uri(folder)
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    if local:
        folder.mkdir(parents=True, exist_ok=True)
    with _quiet_mlflow(), tempfile.TemporaryDirectory() as tmp:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        snapshot = Path(tmp) / STORE_FILE
        _snapshot(store, snapshot)
        for arm in arms:
            experiment = client.get_experiment_by_name(arm.experiment)
            if experiment is None:
                artifacts = (folder / "artifacts").resolve().as_uri() if local else None
                experiment_id = client.create_experiment(
                    arm.experiment, artifact_location=artifacts
                )
            else:
                experiment_id = experiment.experiment_id
            rid, first = _mlflow_run(client, experiment_id, arm)
            if first == 0:  # a new MLflow run: params are written once (they never change)
                params = [Param(k, str(v)) for k, v in arm.config.items()]
                client.log_batch(rid, params=params, tags=[RunTag("fedadamw.store", str(store))])
            metrics = []
            wall = arm.started_at
            for _, row in arm.rounds.iterrows():
                wall += _seconds(row)
                if int(row["round"]) < first:
                    continue  # logged by an earlier command, and unchanged in the store
                metrics += [
                    Metric(str(k), float(v), int(wall * 1000), int(row["round"]))
                    for k, v in row.items()
                    if k != "round" and pd.notna(v)
                ]
            last = int(arm.rounds["round"].max())
            metrics += [
                Metric(f"hparams/{k}", v, int(wall * 1000), last)
                for k, v in arm.summary.items()
                if last >= first
            ]
            for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 per batch
                client.log_batch(rid, metrics=metrics[i : i + 1000])
            client.set_tag(rid, "fedadamw.status", arm.status)
            client.set_tag(rid, LOGGED_TAG, f"{last}:{_rounds_digest(arm, last)}")
            client.log_artifact(rid, str(snapshot))
            status = MLFLOW_STATUS.get(arm.status, "FAILED")
            if arm.status.startswith(FAILED_PREFIX):
                client.set_tag(rid, "fedadamw.failure", arm.status[len(FAILED_PREFIX) :][:5000])
            end = arm.finished_at or wall
            client.set_terminated(rid, status=status, end_time=int(end * 1000))
    return uri


def _rounds_digest(arm: ArmLog, last: int) -> str:
    """A fingerprint of the arm's stored rows up to round `last` (what a tracker holds)."""
    rows = arm.rounds[arm.rounds["round"] <= last]
    text = rows.to_json(orient="split", double_precision=15)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _mlflow_run(client: Any, experiment_id: str, arm: ArmLog) -> tuple[str, int]:
    """The MLflow run of an arm and the first round it still needs (0: a fresh run).

    One arm of the store is one MLflow run, found again by its `RUN_ID_TAG` across interrupts,
    resumes, exports and re-runs: while the rounds it holds are still the store's rows (a
    resumed arm only adds rounds), only the new rounds are added to it. When they are not
    (`--restart` ran the arm again), the run is replaced by a new one.
    """
    from mlflow.entities import ViewType

    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{arm.run_id}'",
        run_view_type=ViewType.ALL,
        order_by=["attributes.start_time ASC"],
    )
    live = [r for r in found if r.info.lifecycle_stage == "active"]
    keep = (live or found or [None])[0]
    for extra in live:  # an older fedadamw made one run per command: keep one
        if extra is not keep:
            client.delete_run(extra.info.run_id)
    if keep is not None:
        logged, _, digest = str(keep.data.tags.get(LOGGED_TAG, "")).partition(":")
        if logged.isdigit() and digest == _rounds_digest(arm, int(logged)):
            if keep.info.lifecycle_stage != "active":
                client.restore_run(keep.info.run_id)
            client.update_run(keep.info.run_id, status="RUNNING")
            return keep.info.run_id, int(logged) + 1
        if keep.info.lifecycle_stage == "active":
            client.delete_run(keep.info.run_id)  # its rows are gone from the store
    run = client.create_run(
        experiment_id,
        start_time=int(arm.started_at * 1000),
        run_name=arm.run_id,
        tags={RUN_ID_TAG: arm.run_id, "mode": arm.mode},
    )
    return str(run.info.run_id), 0


def _snapshot(store: Path, target: Path) -> None:
    """A consistent copy of the store (SQLite's backup: safe while a writer holds the WAL)."""
    source = connect_readonly(store)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()


def export_command(out: Path, tracker: str, directory: Path | None) -> int:
    """`fedadamw export OUT --format tensorboard|mlflow [--dir D]`: trackers of a stored run."""
    from fedadamw.errors import print_error
    from fedadamw.results.reader import StoreError, resolve_store_path

    store = resolve_store_path(out)
    try:
        parse_trackers([tracker])
        arms = arms_of(store)
        if tracker == "tensorboard":
            root = write_tensorboard(directory or store.parent / TENSORBOARD_DIR, arms)
            where = f"{root}  (tensorboard --logdir {root})"
        else:
            uri = write_mlflow(store, directory or store.parent / MLFLOW_DIR, arms)
            where = f"{uri}  (mlflow ui --backend-store-uri {uri})"
    except (StoreError, ConfigError) as exc:
        return print_error(str(exc))
    except OSError as exc:
        return print_error(f"--dir {str(directory)!r}: cannot write ({exc.strerror or exc})")
    print(f"{tracker}: {len(arms)} runs in {where}")
    return 0
