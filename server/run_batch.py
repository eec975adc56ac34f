"""The grid engine (`engine = grid`): many runs' rounds trained as one stacked computation.

Every run keeps its own server loop — the strategy, the measurement, the recorder, the store:
the one code path `server.app` runs for every engine — each in its own thread. The threads take
turns: exactly one runs at a time, in the order the runs were given, until it sends its train
messages (or ends). When every live run of the batch waits on its messages, the driver trains
all of them in one `CohortGrid.push_messages` call: one `fedadamw.core.cohort.train_cohort` per
(model, decay mode, decayed tensors), the clients of all runs stacked, each row with its own
global model, η, λ, schedule, μ and batch plan. Then each run gets its replies and its turn again.

Evaluation follows the same pattern: each run's `evaluate_fn` (server.app) hands its new global
model to the recorder with its `Member.evaluate` as the evaluator, which waits like a push; the
driver scores every waiting run's model with one `fedadamw.core.training.evaluate_many` per
(architecture, data set) — the stacked forward of `fedadamw.core.stacked` over all of them —
and each run writes its round on its next turn. Outside a batch the recorder evaluates the run
alone (`evaluate_each`); the two differ by float rounding only.

Taking turns keeps everything outside the stacked training exactly sequential: the store's
connection, the progress bar and the recorders are never used by two threads at once, and the
order of every write is fixed by the runs' order, not by a thread scheduler.

A run that fails stops the batch: the others are told to stop (they end ``interrupted`` and
resume later), and the first error is raised in the driving thread, as a sequential run would.
A stop request (Ctrl-C, SIGTERM) does the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from flwr.app import Message
from torch import Tensor, nn

from fedadamw.config import Config
from fedadamw.core.models import model_for
from fedadamw.core.training import evaluate_many
from fedadamw.data.split import ArrayDataset
from fedadamw.run.failures import RunInterruptedError
from server.cohort_grid import CohortGrid
from server.grid import GuardedGrid

T = TypeVar("T")
# The stacked weights' budget on the CPU: each stacked client holds ~8 float32 copies of the
# model (weights, gradient, Adam's two moments, the decay split's three sums, FedProx's anchor).
CPU_BUDGET_BYTES = 2 << 30
COPIES_PER_CLIENT = 8


def run_bytes(cfg: Config) -> int:
    """Bytes of stacked weights one run of `cfg` holds: clients × params × 4 × copies."""
    params = sum(p.numel() for p in model_for(cfg).parameters())
    return cfg.clients_per_round * params * 4 * COPIES_PER_CLIENT


def memory_budget() -> int:
    """`CPU_BUDGET_BYTES`, or half the free memory of a CUDA device."""
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0]) // 2
    return CPU_BUDGET_BYTES


def fits(count: int, used: int, cost: int, budget: int, most: int = 0) -> bool:
    """Whether a run of `cost` bytes joins a batch of `count` runs holding `used` bytes.

    A batch always takes its first run; then runs join while the bytes stay within `budget`
    (0: no memory cap) and the count within `most` (0: no cap).
    """
    if count == 0:
        return True
    return (most <= 0 or count < most) and (budget <= 0 or used + cost <= budget)


def batch_size(configs: Sequence[Config], most: int = 0) -> tuple[int, str]:
    """The largest batch of runs of `configs` that train together, and a line saying why.

    The runs go in order into consecutive batches, each as large as `fits` lets it: within
    `memory_budget()` of stacked weights, each run costed by its own config's model
    (`run_bytes`), at most `most` runs when it is > 0; the activations are bounded separately
    (train_cohort's chunks).
    """
    budget = memory_budget()
    costs = [run_bytes(c) for c in configs for _ in c.arm_list]
    sizes: list[int] = []
    peak, count, used = 0, 0, 0
    for cost in costs:
        if not fits(count, used, cost, budget, most):
            sizes.append(count)
            count, used = 0, 0
        count, used = count + 1, used + cost
        peak = max(peak, used)
    sizes.append(count)
    size = max(sizes)
    batches = len(sizes)
    why = (
        f"grid engine: {len(costs)} runs in {batches} batch{'es' if batches > 1 else ''} of up "
        f"to {size} ({peak / 2**20:.0f} MiB of stacked weights"
        + (f"; --max-batch-runs {most}" if most > 0 else f"; budget {budget / 2**30:.1f} GiB")
        + ")"
    )
    return size, why


class Member(GuardedGrid):
    """One run's view of the shared cohort grid: its pushes and evaluations wait for the batch.

    Everything else is `GuardedGrid`'s (the interruptible `send_and_receive` over this class's
    `push_messages`), on the batch's cohort grid.
    """

    def __init__(self, batch: RunBatch[Any], index: int, stop: threading.Event) -> None:
        super().__init__(batch.grid, stop)
        self._batch, self._index = batch, index

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._batch.push(self._index, list(messages))

    def evaluate(
        self,
        model: nn.Module,
        state: Mapping[str, Tensor],
        datasets: Sequence[ArrayDataset],
        device: torch.device,
    ) -> list[tuple[float, float]]:
        """A `fedadamw.core.training.Evaluator`: answered with the batch's other requests."""
        request = _Evaluation(model, dict(state), list(datasets), device)
        return self._batch.evaluate(self._index, request)


@dataclass(frozen=True)
class _Evaluation:
    """One run's request: score `model` with `state` on each of `datasets`."""

    model: nn.Module
    state: dict[str, Tensor]
    datasets: list[ArrayDataset]
    device: torch.device

    def key(self, data: ArrayDataset) -> tuple[object, ...]:
        """Requests of equal keys are evaluated in one call: same architecture, data, device."""
        shapes = tuple((n, tuple(p.shape)) for n, p in self.model.named_parameters())
        return (type(self.model), shapes, id(data), str(self.device))


class RunBatch(Generic[T]):
    """Runs `work(item, grid)` for every item in its own thread, taking turns; see the module."""

    def __init__(self, grid: CohortGrid, stop: threading.Event | None = None) -> None:
        self.grid = grid
        self._stop = stop or threading.Event()
        self._cond = threading.Condition()
        self._turn: int | None = None  # the member that may run; None: the driver's turn
        self._pending: dict[int, list[Message]] = {}
        self._ids: dict[int, list[str]] = {}
        self._evals: dict[int, _Evaluation] = {}
        self._scores: dict[int, list[tuple[float, float]]] = {}
        self._abort = False

    def run(self, items: Sequence[T], work: Callable[[T, Member], None]) -> None:
        """Run every item's `work` to its end (or the batch's first error, which is raised)."""
        self._abort = False
        errors: dict[int, BaseException] = {}
        done: set[int] = set()

        def body(index: int, item: T) -> None:
            try:
                self._wait_turn(index)
                work(item, Member(self, index, self._stop))
            except BaseException as exc:  # handed to the driver, which raises the first
                errors[index] = exc
            finally:
                with self._cond:
                    done.add(index)
                    self._turn = None
                    self._cond.notify_all()

        threads = [
            threading.Thread(target=body, args=(i, item), name=f"grid-run-{i}", daemon=True)
            for i, item in enumerate(items)
        ]
        for thread in threads:
            thread.start()
        try:
            while len(done) < len(threads):
                for index in range(len(threads)):
                    if errors and not self._abort:
                        break  # nobody takes another step after a run failed
                    if index not in done:
                        self._give_turn(index, done)  # once aborting: its turn to stop
                if errors or self._stop.is_set():
                    self._abort = True  # the next round of turns stops every live run
                    continue
                if self._pending or self._evals:
                    self._serve()
        except BaseException:
            self._abort = True
            for index in range(len(threads)):
                if index not in done:
                    self._give_turn(index, done)
            raise
        finally:
            for thread in threads:
                thread.join()
        if errors:
            first = min(errors)  # the earliest run's error, whatever the others did
            real = [i for i in sorted(errors) if not isinstance(errors[i], RunInterruptedError)]
            raise errors[real[0] if real else first]

    def push(self, index: int, messages: list[Message]) -> list[str]:
        """A member's train messages: wait until the driver has answered them, then return."""
        self._hand_in(self._pending, index, messages)
        return self._ids.pop(index)

    def evaluate(self, index: int, request: _Evaluation) -> list[tuple[float, float]]:
        """A member's evaluation: wait until the driver has scored it with the others."""
        self._hand_in(self._evals, index, request)
        return self._scores.pop(index)

    def _hand_in(self, queue: dict[int, Any], index: int, item: Any) -> None:
        """Queue member `index`'s request for the driver's next `_serve`, yield the turn, and
        wait until the driver gives it back (RunInterruptedError if the batch stops)."""
        with self._cond:
            if self._abort:
                raise RunInterruptedError("stop requested")
            queue[index] = item
            self._turn = None
            self._cond.notify_all()
        self._wait_turn(index)

    def _wait_turn(self, index: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == index)
            if self._abort:
                self._pending.pop(index, None)
                self._evals.pop(index, None)
                raise RunInterruptedError("stop requested")

    def _give_turn(self, index: int, done: set[int]) -> None:
        """Let member `index` run until it pushes or ends."""
        with self._cond:
            self._turn = index
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn is None or index in done)

    def _serve(self) -> None:
        """Answer every pending push in one call on the cohort grid (one stack per kind), and
        every pending evaluation with one `evaluate_many` per (architecture, data set)."""
        if self._pending:
            order = sorted(self._pending)
            messages = [m for i in order for m in self._pending[i]]
            ids = list(self.grid.push_messages(messages))
            at = 0
            for i in order:
                n = len(self._pending[i])
                self._ids[i], at = ids[at : at + n], at + n
            self._pending.clear()
        if self._evals:
            groups: dict[tuple[object, ...], list[tuple[int, int, ArrayDataset]]] = {}
            for i in sorted(self._evals):
                request = self._evals[i]
                for j, data in enumerate(request.datasets):
                    groups.setdefault(request.key(data), []).append((i, j, data))
            scores = {i: [(0.0, 0.0)] * len(r.datasets) for i, r in self._evals.items()}
            for members in groups.values():
                first = self._evals[members[0][0]]
                states = [self._evals[i].state for i, _, _ in members]
                got = evaluate_many(first.model, states, members[0][2], first.device)
                for (i, j, _), score in zip(members, got, strict=True):
                    scores[i][j] = score
            self._scores.update(scores)
            self._evals.clear()
