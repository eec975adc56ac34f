"""One run's bookkeeping: server-side evaluation and one store transaction per round.

The global model is evaluated every round on the test split and on the union of the clients'
validation rows (`fedadamw.data.split.validation_set`); selection reads the latter.

torch and the data stack are imported when a recorder is made, not with this module: the
console display imports `Progress` and `RoundReport` from here, and `fedadamw run`'s parent
process (which only supervises and prints the closing table) must stay free of torch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.results.writer import ResultStore, Resume
from fedadamw.run.failures import FailureLog
from fedadamw.run.rounds import round_record

if TYPE_CHECKING:
    import torch

    from fedadamw.core.training import Evaluator
    from fedadamw.core.updates import RoundMeasurement


@dataclass(frozen=True)
class RoundReport:
    """What the progress display shows after each round."""

    arm: str
    label: str  # the arm, prefixed with the grid point in a sweep
    round: int
    num_rounds: int
    train_loss: float | None
    test_loss: float
    test_accuracy: float
    mean_pairwise_cosine: float | None
    num_clients: int
    num_rejected: int


class Progress:
    """What a run tells its display; the default shows nothing (subclass to show it)."""

    def round(self, report: RoundReport) -> None:
        """A round was written."""

    def note(self, text: str) -> None:
        """Something worth a line: an arm resumed or skipped."""

    def skip(self, rounds: int) -> None:
        """`rounds` rounds need no work (they are already in the store)."""


class RunRecorder:
    """Evaluates the global model each round and commits the round's measurements."""

    def __init__(
        self,
        store: ResultStore,
        run_id: str,
        cfg: Config,
        arm: str,
        progress: Progress | None = None,
        label: str = "",
    ) -> None:
        self.store, self.run_id, self.cfg, self.arm = store, run_id, cfg, arm
        self.failures = FailureLog(store.path.parent)
        self.label = label or arm
        self.progress = progress
        from fedadamw.core.models import model_for
        from fedadamw.core.training import pick_device
        from fedadamw.data.split import DataSpec, load_splits, validation_set

        self.device = pick_device()
        spec = DataSpec.from_config(cfg)
        _, self.test = load_splits(spec)
        self.validation = validation_set(spec)
        self.model = model_for(cfg)
        self.parameter_names = frozenset(n for n, _ in self.model.named_parameters())
        self._last = time.perf_counter()

    def start(self, restart: bool = False) -> Resume:
        """Mark the run running in the store; where it resumes (its last checkpoint)."""
        resume = self.store.start_run(
            self.run_id,
            self.cfg.experiment,
            self.arm,
            self.arm,
            self.cfg.weight_decay,
            self.cfg.replace(arms=self.arm).to_json(),
            restart=restart,
        )
        from fedadamw.core.optim import param_counts
        from fedadamw.data.split import DataSpec, label_histogram

        # Which tensors decay is fixed by the config and the model (nanoGPT logs the counts).
        self.store.write_param_counts(self.run_id, param_counts(self.model, self.cfg.decay_params))
        # The split is fixed by the config: the views read its label counts from the store.
        self.store.write_labels(self.run_id, label_histogram(DataSpec.from_config(self.cfg)))
        self._last = time.perf_counter()
        return resume

    def finish(self, status: str = "finished") -> None:
        """Record how the run ended."""
        self.store.finish_run(self.run_id, status)

    def record(
        self,
        server_round: int,
        state: Mapping[str, torch.Tensor],
        measured: RoundMeasurement | None = None,
        server_state: Mapping[str, np.ndarray] | None = None,
        evaluator: Evaluator | None = None,
    ) -> tuple[float, float]:
        """Evaluate the global model of `server_round` and write the round; (loss, accuracy).

        `measured` is the strategy's measurement of the round's updates (None: round 0, or
        nothing was aggregated), `server_state` the server optimizer's state after it: it goes
        into the round's checkpoint, so a resumed run continues identically. `evaluator`
        scores the model on the test and validation sets (default: this run alone,
        `fedadamw.core.training.evaluate_each`; the grid engine batches its runs').
        """
        from fedadamw.core.training import evaluate_each

        held_out = len(self.validation) > 0  # val-fraction 0: nothing held out
        datasets = [self.test, self.validation] if held_out else [self.test]
        scores = (evaluator or evaluate_each)(self.model, state, datasets, self.device)
        test_loss, test_acc = scores[0]
        val_loss, val_acc = scores[1] if held_out else (None, None)
        now = time.perf_counter()
        values: dict[str, float | int | None] = {
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            schema.VAL_LOSS: val_loss,
            schema.VAL_ACCURACY: val_acc,
            "seconds": now - self._last,
        }
        self._last = now
        rec = round_record(
            self.run_id,
            server_round,
            values,
            measured,
            seed=self.cfg.seed,
            pairs_limit=self.cfg.pairs_limit,
            reason=lambda text, pid: self.failures.reason(text, self.run_id, server_round, pid),
        )
        values = rec.values
        if server_round >= 1:
            # The global model goes with the round it ends, in one transaction: a run resumes
            # from exactly what its last stored round evaluated.
            rec.checkpoint = {k: v.detach().cpu().numpy() for k, v in state.items()}
            rec.server_state = dict(server_state or {})
            every = self.cfg.checkpoint_every
            rec.keep = every > 0 and server_round % every == 0  # besides the last, always kept
        self.store.write_round(rec)
        if self.progress is not None:
            cos = values.get("mean_pairwise_cosine")
            self.progress.round(
                RoundReport(
                    arm=self.arm,
                    label=self.label,
                    round=server_round,
                    num_rounds=self.cfg.num_server_rounds,
                    train_loss=values.get("train_loss"),
                    test_loss=test_loss,
                    test_accuracy=test_acc,
                    mean_pairwise_cosine=None if cos is None else float(cos),
                    num_clients=int(values.get("num_clients") or 0),
                    num_rejected=int(values.get("num_rejected") or 0),
                )
            )
        return test_loss, test_acc
