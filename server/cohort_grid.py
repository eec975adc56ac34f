"""The vectorized engine (`engine = vmap`) as a Flower Grid: a whole round in one batched call.

`CohortGrid` stands for a federation of `num_clients` nodes, node i holding partition i, inside
the server's own process. It answers the messages `server.app.run_experiment` sends exactly as
`clients/app.py` would, with the same functions (`read_request`, `partition_reply`,
`train_reply`), except that every train message of one push is trained in ONE
`fedadamw.core.cohort.train_cohort` call: all sampled clients in lockstep, stacked. Sampling,
dropout, straggling, batch sizes, the reply checks, FedAvg, the divergence measurement, the store
and resume are the strategy's and the recorder's, untouched: one code path for both engines.

No Ray, no actor, no serialisation of a message between processes: the round's replies exist
when `push_messages` returns. A client that fails (an unreadable message, an empty partition)
gets the error reply Flower's simulation engine would give it, and the others train on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from uuid import uuid4

import torch
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from clients.app import partition_reply, read_request, train_reply
from fedadamw.core.cohort import CohortClient, train_cohort
from fedadamw.core.models import build_model, sizes_of
from fedadamw.core.records import state_dict
from fedadamw.core.training import TrainSpec, pick_device
from fedadamw.core.wire import TrainRequest
from fedadamw.data import registry
from fedadamw.data.split import ArrayDataset, load_partition

# What fixes a model's structure: (model, data set, norm, transformer sizes).
_ModelKey = tuple[str, str, str, tuple[int, int, int]]
# Node i holds partition i. Far above Flower's own SuperLink node id (1), like its random ids.
NODE_ID_BASE = 1 << 32

# A train message, what its client trains, its partition id, data and global model.
_Member = tuple[Message, TrainSpec, int, ArrayDataset, dict[str, torch.Tensor]]


def _error_reply(msg: Message, exc: BaseException) -> Message:
    """The reply Flower's simulation engine gives when a ClientApp raises (vce_api.worker)."""
    return Message(
        Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc)}:<'{exc}'>"), reply_to=msg
    )


class CohortGrid(Grid):
    """An in-process federation whose train messages of one push train as one cohort."""

    def __init__(self, num_clients: int, device: torch.device | None = None) -> None:
        self.partitions = {NODE_ID_BASE + pid: pid for pid in range(num_clients)}
        self.device = device or pick_device()
        self._run = Run.create_empty(0)
        if TaskIdentity._run_id is None:
            # New messages read their run and sender from this process's task identity, which
            # Flower's runtimes set; outside them this grid is the SuperLink of run 0.
            TaskIdentity.task_id, TaskIdentity.run_id = 1, self._run.run_id
            TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._replies: dict[str, Message] = {}
        self._models: dict[_ModelKey, nn.Module] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.partitions)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=n) for n in self.partitions]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Answer every message; the train messages as cohorts (one per round and request)."""
        ids: list[str] = []
        cohorts: dict[tuple[_ModelKey, str, str], list[_Member]] = {}
        states: dict[int, dict[str, torch.Tensor]] = {}
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
            ids.append(msg.metadata.message_id)
            kind = msg.metadata.message_type.split(".")[0]
            pid = self.partitions.get(msg.metadata.dst_node_id)
            try:
                if pid is None:
                    raise ValueError(f"node {msg.metadata.dst_node_id} is not in this federation")
                if kind == MessageType.QUERY:
                    self._answer(partition_reply(msg, pid))
                    continue
                if kind != MessageType.TRAIN:
                    raise ValueError(f"message type {msg.metadata.message_type!r} is not served")
                request, spec = read_request(msg, pid)
                data = load_partition(request.data, pid)
                if len(data) == 0:  # train_local's error for this client alone, as in Flower
                    raise ValueError(f"partition {pid} has no training examples")
            except Exception as exc:  # a client's failure is its error reply, as in Flower
                self._answer(_error_reply(msg, exc))
                continue
            # Messages that share their content (FedAvg sends one record) share the weights.
            state = states.get(id(msg.content))
            if state is None:
                try:
                    state = states[id(msg.content)] = state_dict(
                        msg.content.array_records["arrays"]
                    )
                except Exception as exc:
                    self._answer(_error_reply(msg, exc))
                    continue
            # One stack per model structure and optimizer family: the clients of every run
            # pushed together (the grid engine) train in one call, each with its own weights.
            key = (self._model_key(request), spec.mode, spec.decay_params)
            cohorts.setdefault(key, []).append((msg, spec, pid, data, state))
        for (model_key, _, _), members in cohorts.items():
            self._train(model_key, members)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to these messages (each handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Every reply: they are ready as soon as the messages are pushed."""
        return self.pull_messages(self.push_messages(messages))

    def _answer(self, reply: Message) -> None:
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        self._replies[reply.metadata.reply_to_message_id] = reply

    @staticmethod
    def _model_key(request: TrainRequest) -> _ModelKey:
        """What fixes a model's structure (its weights come from the message)."""
        return (request.model, request.data.dataset, request.resnet_norm, sizes_of(request))

    def _model(self, key: _ModelKey) -> nn.Module:
        """The model structure of `key` (train_cohort takes the weights from the messages)."""
        if key not in self._models:
            model, dataset, norm, sizes = key
            data = registry.get(dataset)
            self._models[key] = build_model(
                model, data.shape, data.num_classes, 0, norm, sizes, data.tokens
            )
        return self._models[key]

    def _train(self, model_key: _ModelKey, members: list[_Member]) -> None:
        """Train one cohort and answer each of its messages."""
        # Each push's clients by partition id: Flower samples them in a random order, and a
        # stack in partition order makes identical settings identical calls (the pairing).
        first: dict[int, int] = {}
        for i, member in enumerate(members):
            first.setdefault(id(member[4]), i)
        members = sorted(members, key=lambda m: (first[id(m[4])], m[2]))
        try:
            model = self._model(model_key)
            started = time.perf_counter()
            clients = [CohortClient(data, spec) for _, spec, _, data, _ in members]
            states = [state for *_, state in members]
            results = train_cohort(model, states, clients, self.device)
            seconds = time.perf_counter() - started
        except Exception as exc:  # what would fail in every client fails each of them
            for msg, *_ in members:
                self._answer(_error_reply(msg, exc))
            return
        # Lockstep clients have no time of their own: each gets its share of the steps.
        steps = sum(r.local_steps for r in results)
        for (msg, spec, *_), result in zip(members, results, strict=True):
            self._answer(train_reply(msg, spec, result, seconds * result.local_steps / steps))
