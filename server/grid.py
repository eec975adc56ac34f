"""A Grid whose rounds can be stopped, and that notices dead simulation workers.

Flower's `send_and_receive` waits up to the strategy's round timeout (an hour by default) and
cannot be interrupted, so a Ctrl-C used to leave the ServerApp thread waiting after Ray had
stopped. `GuardedGrid` delegates everything to the real grid and replaces only that wait: it
polls for replies, raises `RunInterruptedError` as soon as the stop event is set, answers an empty
send at once (the evaluate phase sends nothing: the server evaluates), and, in simulation,
raises `WorkerLostError` when a reply says the Ray worker died (the run then resumes on fresh
workers instead of silently training without those clients). Its wait goes through its own
`push_messages`/`pull_messages`, so a subclass that changes how messages are pushed (the grid
engine's `server.run_batch.Member`) keeps the same interruptible round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedadamw.run.failures import RunInterruptedError, WorkerLostError, is_lost_worker, summary

# Replies of a simulated round come within milliseconds; a round of seconds is seen at most
# 50 ms late (at 0.2 s, ~0.1 s a round was lost on average: 3 s of a 30-round run).
_FIRST_POLL_S, _MAX_POLL_S = 0.002, 0.05


class GuardedGrid(Grid):
    """The wrapped grid, with an interruptible `send_and_receive`."""

    def __init__(
        self, grid: Grid, stop: threading.Event | None = None, lost_worker_fatal: bool = False
    ) -> None:
        self._grid = grid
        self._stop = stop or threading.Event()
        self._lost_worker_fatal = lost_worker_fatal

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, then collect replies until all came, `timeout` passed, or a stop is asked for."""
        outgoing = list(messages)
        if not outgoing:
            return []
        self._check_stop()
        pending = set(self.push_messages(outgoing))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = _FIRST_POLL_S
        while pending:
            got = list(self.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() > deadline):
                break
            if self._stop.wait(wait):
                self._check_stop()
            wait = min(_MAX_POLL_S, wait * 1.5)
        if self._lost_worker_fatal:
            for reply in replies:
                if reply.has_error() and is_lost_worker(str(reply.error.reason)):
                    why = summary(str(reply.error.reason), 160)
                    raise WorkerLostError(f"a Ray worker died ({why})")
        return replies

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise RunInterruptedError("stop requested")
