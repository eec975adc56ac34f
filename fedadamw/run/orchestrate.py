"""An experiment's arms, one after the other: everything about a run that is not Flower glue.

A `Session` owns an output folder for the time of a run: it takes the folder's writer lock,
writes `config.json`, opens the store, registers every arm of the grid as ``pending`` and then
hands out the arms that still need work as `ArmTask`s — finished arms are skipped, interrupted
ones resume after their last stored round. The ServerApp (`server/app.py`) only turns an
`ArmTask` into Flower calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from fedadamw.config import Config
from fedadamw.fileio import atomic_write_text
from fedadamw.results.lock import WriterLock
from fedadamw.results.writer import ResultStore, Resume, RunInfo
from fedadamw.run.experiment import describe, describe_configs, run_id_for, swept_keys
from fedadamw.run.failures import RunInterruptedError, WorkerLostError, summary
from fedadamw.run.recorder import Progress, RunRecorder
from fedadamw.schema import FAILED_PREFIX, FINISHED, INTERRUPTED, STORE_FILE


def run_info(cfg: Config, arm: str) -> RunInfo:
    """The `runs` row of one arm of one config."""
    return RunInfo(
        run_id_for(cfg, arm),
        cfg.experiment,
        arm,
        arm,
        cfg.weight_decay,
        cfg.replace(arms=arm).to_json(),
    )


@dataclass
class ArmTask:
    """One arm that needs rounds: its config, its recorder and where it resumes."""

    cfg: Config
    arm: str
    run_id: str
    label: str
    recorder: RunRecorder
    resume: Resume

    @property
    def done(self) -> int:
        """Rounds already in the store (0 for a fresh start)."""
        return self.resume.round

    def initial_state(self) -> dict[str, np.ndarray]:
        """The global model to start from: the checkpoint, or the seed's fresh model."""
        if self.resume.state is not None:
            return self.resume.state
        # Built from the seed alone: every arm of a comparison starts from these weights.
        return {k: v.detach().cpu().numpy() for k, v in self.recorder.model.state_dict().items()}

    @contextmanager
    def running(self) -> Iterator[None]:
        """Record how the arm ends: finished, interrupted (resumable) or failed."""
        try:
            yield
        except (RunInterruptedError, WorkerLostError, KeyboardInterrupt):
            self.recorder.finish(INTERRUPTED)  # the next run continues after the last round
            raise
        except BaseException as exc:
            self.recorder.finish(FAILED_PREFIX + summary(f"{type(exc).__name__}: {exc}", 180))
            raise
        self.recorder.finish(FINISHED)


class Session:
    """An output folder held for one experiment; iterate `arms()` to run what is left."""

    def __init__(
        self,
        configs: Sequence[Config],
        out_dir: Path,
        progress: Progress | None = None,
        *,
        restart: bool = False,
        take_lock: bool = True,
    ) -> None:
        self.configs = list(configs)
        self.out_dir = out_dir
        self.progress = progress or Progress()
        self.restart = restart
        self.take_lock = take_lock
        self.run_ids: list[str] = []
        self._lock: WriterLock | None = None
        self._store: ResultStore | None = None

    @property
    def num_clients(self) -> int:
        """The federation size every config of the session shares."""
        return self.configs[0].num_clients

    def __enter__(self) -> Session:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A process whose parent holds the lock (`fedadamw run`) shares it instead.
        self._lock = WriterLock(self.out_dir) if self.take_lock else None
        try:
            text = json.dumps(describe_configs(self.configs), indent=1)
            atomic_write_text(self.out_dir / "config.json", text)
            self._store = ResultStore(self.out_dir / STORE_FILE)
            if self._lock is not None:
                self._store.mark_interrupted()  # we hold the lock: nothing else runs here
            self._store.register(run_info(c, arm) for c in self.configs for arm in c.arm_list)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def arms(self) -> Iterator[ArmTask]:
        """Every arm of every config, in order, that still has rounds to run."""
        assert self._store is not None, "use the session as a context manager"
        swept = swept_keys(self.configs)
        for cfg in self.configs:
            for arm in cfg.arm_list:
                run_id = run_id_for(cfg, arm)
                self.run_ids.append(run_id)
                label = describe(cfg, arm, swept)
                if not self.restart and self._store.status(run_id) == FINISHED:
                    self.progress.note(
                        f"{label}: finished in an earlier run; skipped (--restart reruns it)"
                    )
                    self.progress.skip(cfg.num_server_rounds)
                    continue
                recorder = RunRecorder(self._store, run_id, cfg, arm, self.progress, label=label)
                resume = recorder.start(self.restart)
                if resume.state is not None:
                    self.progress.note(
                        f"{label}: resuming after round {resume.round} of {cfg.num_server_rounds}"
                    )
                    self.progress.skip(resume.round)
                task = ArmTask(cfg, arm, run_id, label, recorder, resume)
                if resume.round >= cfg.num_server_rounds:
                    # Killed after its last round was stored, before it was marked finished.
                    recorder.finish(FINISHED)
                    continue
                yield task
