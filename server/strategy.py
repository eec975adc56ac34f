"""Flower's strategies, each sampling clients by partition id and measuring their divergence.

`DivergenceMixin` holds everything this framework adds to a strategy (seeded sampling,
dropout, reply checks, the divergence measurement, partition-order aggregation input, the
server-decay hook, recording and the server optimizer's checkpointed state); it is applied
once to each of Flower's strategies (`server.optimizers.STRATEGIES`), so every server
optimizer stores the same statistics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from clients.records import keep_decoded, numpy_dict
from fedadamw import schema
from fedadamw.core.optim import decayed_names
from fedadamw.core.sampling import dropped_partitions, sample_partitions
from fedadamw.core.server_decay import ServerDecay
from fedadamw.core.updates import ClientReply, measure_round
from fedadamw.run.failures import NonFiniteRunError
from fedadamw.run.recorder import RunRecorder
from server.metrics import aggregate_client_metrics
from server.server_state import (
    average_moments,
    optimizer_state,
    pop_moments,
    restore_optimizer_state,
)

NODE_WAIT_S = 120.0  # how long to wait for SuperNodes to (re)connect before giving up


def to_client_reply(
    msg: Message, partitions: Mapping[int, int], addressed: Mapping[str, int] | None = None
) -> ClientReply:
    """Take a train reply out of its Flower message; a malformed one becomes an error reply.

    `addressed` maps sent message ids to their destination nodes: for a node that stopped
    sending heartbeats the SuperLink itself replies with an error, so the reply's source is
    the SuperLink and the failed node is the one the message was addressed to.
    """
    sent_to = (addressed or {}).get(msg.metadata.reply_to_message_id)
    node = int(msg.metadata.src_node_id if sent_to is None else sent_to)
    pid = partitions.get(node)
    if msg.has_error():
        return ClientReply(node, pid, None, {}, error=str(msg.error.reason))
    try:
        content = msg.content
        records = dict(content.array_records)
        decay_record = records.pop(schema.DECAY_PART, None)
        records.pop(schema.ADAM_V, None)  # server-averaged: the strategy averages these
        if len(records) != 1 or len(content.metric_records) != 1:
            raise ValueError("expected one ArrayRecord of weights and one MetricRecord")
        weights = next(iter(records.values()))
        arrays = numpy_dict(weights)
        keep_decoded(weights, arrays)  # FedAvg reads these arrays, not the bytes, again
        metrics = dict(next(iter(content.metric_records.values())))
        decay = None if decay_record is None else numpy_dict(decay_record)
    except Exception as exc:  # any malformed reply is a rejection, not a crash
        return ClientReply(node, pid, None, {}, error=f"malformed reply: {exc}")
    return ClientReply(node, pid, arrays, metrics, decay=decay)


class DivergenceMixin(FedAvg):
    """A Flower strategy whose sampled clients are seeded by partition id and whose updates are
    measured; put first in the bases of a Flower strategy (`server.optimizers`).

    `configure_train` lets the strategy address every connected node and keeps the seeded
    subset; `aggregate_train` checks each reply, measures the divergence of the accepted updates
    (`fedadamw.core.updates.measure_round`) and hands only accepted replies, in partition order,
    to the strategy's own aggregation (FedAvg, then its server step).

    A resumed run starts the strategy's loop again at its round 1: `first_round` (the last round
    already in the store) is added to the round number wherever a round is seen, so every
    seeded draw, every stored row and FedAdam's bias correction carry the run's true round.
    The server optimizer's state (`server_state`) goes into each round's checkpoint and is
    loaded back with `load_server_state`.
    """

    def __init__(
        self,
        recorder: RunRecorder,
        partitions: Mapping[int, int],
        seed: int,
        clients_per_round: int,
        dropout_rate: float = 0.0,
        first_round: int = 0,
        **strategy_kwargs: Any,
    ) -> None:
        super().__init__(
            fraction_train=1.0,  # Flower addresses all nodes; configure_train keeps the sample
            fraction_evaluate=0.0,  # the server evaluates the global model itself
            min_train_nodes=1,
            # discover_partitions already waited (bounded) for every node; FedAvg would wait
            # forever for a node that died since, so the run goes on with the survivors.
            min_available_nodes=1,
            train_metrics_aggr_fn=aggregate_client_metrics,
            **strategy_kwargs,
        )
        self.recorder = recorder
        self.partitions = dict(partitions)  # node id -> partition id
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.dropout_rate = dropout_rate
        self.first_round = first_round
        cfg = recorder.cfg
        self.server_decay = (
            ServerDecay(
                cfg.learning_rate, cfg.weight_decay, decayed_names(recorder.model, cfg.decay_params)
            )
            if recorder.arm == schema.SERVER_DECAY_MODE
            else None
        )
        self._dropped: list[int] = []
        self._global: dict[str, np.ndarray] = {}
        self.avg_v: dict[str, np.ndarray] | None = None  # server-averaged: the mean v sent out
        self._sent: list[Message] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model to the seeded sample of partitions."""
        server_round += self.first_round
        # aggregate_train is not given the global arrays: keep them from here.
        self._global = numpy_dict(arrays)
        deadline = time.monotonic() + NODE_WAIT_S
        while not self.partitions.keys() & set(grid.get_node_ids()):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"none of the {len(self.partitions)} SuperNodes this run started with "
                    f"came back within {NODE_WAIT_S:.0f} s; restart them and start the run again"
                )
            time.sleep(1.0)
        sampled = sample_partitions(
            self.seed, server_round, self.partitions.values(), self.clients_per_round
        )
        # Simulated dropout: a sampled client that never answers. It gets no message; the
        # round records it as a rejection, exactly as it records a client that died.
        self._dropped = dropped_partitions(self.seed, server_round, sampled, self.dropout_rate)
        wanted = set(sampled) - set(self._dropped)
        # The grid fills in each message's id when it sends it: aggregate_train reads them.
        self._sent = [
            m
            for m in super().configure_train(server_round, arrays, config, grid)
            if self.partitions.get(m.metadata.dst_node_id) in wanted
        ]
        if self.avg_v:  # server-averaged: every sampled client starts from the mean v
            mean_v = ArrayRecord({k: Array(v) for k, v in self.avg_v.items()})
            for m in self._sent:
                m.content[schema.ADAM_V] = mean_v
        return self._sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Measure and record the updates, then FedAvg the accepted ones."""
        server_round += self.first_round
        replies = list(replies)
        sent = [m for m in self._sent if m.metadata.message_id]
        addressed = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        unpacked = [to_client_reply(m, self.partitions, addressed) for m in replies]
        message_of = {id(r): m for r, m in zip(unpacked, replies, strict=True)}
        measured = measure_round(
            self._global,
            unpacked,
            device=self.recorder.device,
            only=self.recorder.parameter_names,  # weights, not BatchNorm's running statistics
            server_decay=self.server_decay,  # the server-decay arm's shared step, measured
        )
        nodes = {pid: node for node, pid in self.partitions.items()}
        measured.rejections += [
            (pid, nodes[pid], f"simulated dropout (dropout-rate={self.dropout_rate:g})")
            for pid in self._dropped
        ]
        self.recorder.pending = measured
        for pid, node, reason in measured.rejections:
            log(
                WARNING,
                "round %d: rejected partition %s (node %s): %s",
                server_round,
                pid,
                node,
                reason,
            )
        # In measure_round's partition order: FedAvg sums in this order, and float addition is
        # not associative, so arrival order must not leak into the aggregate.
        accepted = [message_of[id(r)] for r in measured.accepted]
        moments, weights = pop_moments(accepted)  # server-averaged: each client's v
        for m in accepted:
            # FedAvg expects exactly one ArrayRecord per reply; the decay part is measured above.
            if schema.DECAY_PART in m.content.array_records:
                del m.content[schema.DECAY_PART]
        if moments and self.recorder.cfg.optimizer_state == schema.SERVER_AVERAGED:
            self.avg_v = average_moments(moments, weights)  # FedAdamW: sent back next round
        failed = [r for r in measured.rejections if r[0] not in self._dropped]
        if not accepted and failed and all("non-finite" in reason for *_, reason in failed):
            cfg = self.recorder.cfg
            raise NonFiniteRunError(
                f"round {server_round}: every client's update is non-finite: "
                f"learning-rate={cfg.learning_rate:g} with weight-decay={cfg.weight_decay:g} "
                "overflows float32; lower them"
            )
        if not accepted:
            log(
                WARNING, "round %d: no update accepted; the global model is unchanged", server_round
            )
            self.recorder.server_state = self.server_state()
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if arrays is not None:
            # FedAdam's bias correction is a float64 scalar: numpy would promote the model to
            # float64, and the next round's replies would no longer match its dtypes.
            arrays = ArrayRecord(
                {k: Array(np.asarray(v.numpy(), self._global[k].dtype)) for k, v in arrays.items()}
            )
        if arrays is not None and measured.server_decay is not None:
            # The server-decay arm: the aggregate shrinks by the clients' decoupled factor.
            decayed = measured.server_decay.apply({k: v.numpy() for k, v in arrays.items()})
            arrays.update({k: Array(v) for k, v in decayed.items()})
        self.recorder.server_state = self.server_state()
        return arrays, metrics

    def server_state(self) -> dict[str, np.ndarray]:
        """The server optimizer's state as named arrays ("m_t/conv.weight"); empty for FedAvg."""
        return optimizer_state(self)

    def load_server_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from `server_state`'s arrays (a resumed run's checkpoint)."""
        restore_optimizer_state(self, state)


class DivergenceFedAvg(DivergenceMixin, FedAvg):
    """FedAvg (McMahan et al. 2017), measured."""
