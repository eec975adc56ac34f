"""Flower's strategies, each sampling clients by partition id and measuring their divergence.

`MeasuredStrategy` holds everything this framework adds to a strategy (seeded sampling,
dropout, reply checks, the divergence measurement, partition-order aggregation input, the
server-decay hook, the round's measurement and the server optimizer's state for the
recorder); it is applied once to each of Flower's strategies (`server.optimizers.STRATEGIES`),
so every server optimizer stores the same statistics.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from logging import WARNING
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedadamw import schema
from fedadamw.core.records import keep_decoded, numpy_dict
from fedadamw.core.sampling import dropped_partitions, sample_partitions
from fedadamw.core.server_decay import ServerDecay
from fedadamw.core.updates import ClientReply, RoundMeasurement, measure_round
from fedadamw.run.failures import NonFiniteRunError
from server.metrics import aggregate_client_metrics
from server.server_state import (
    average_moments,
    optimizer_state,
    pop_moments,
    restore_optimizer_state,
)

if TYPE_CHECKING:
    import torch

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


class MeasuredStrategy(FedAvg):
    """A Flower strategy whose sampled clients are seeded by partition id and whose updates are
    measured; put first in the bases of a Flower strategy (`server.optimizers`).

    `configure_train` lets the strategy address every connected node and keeps the seeded
    subset; `aggregate_train` unpacks each reply, measures the divergence of the accepted
    updates (`fedadamw.core.updates.measure_round`), hands only accepted replies, in partition
    order, to the strategy's own aggregation (FedAvg, then its server step) and finishes the
    aggregate (dtypes, the server-decay arm's shrink). The round's measurement and the server
    optimizer's state after it stay on the strategy (`last_measurement`, `last_server_state`):
    the ServerApp's `evaluate_fn` hands them to the recorder with the new global model.

    A resumed run starts the strategy's loop again at its round 1: `first_round` (the last round
    already in the store) is added to the round number wherever a round is seen, so every
    seeded draw, every stored row and FedAdam's bias correction carry the run's true round.
    The server optimizer's state (`server_state`) goes into each round's checkpoint and is
    loaded back with `load_server_state`.
    """

    def __init__(
        self,
        partitions: Mapping[int, int],
        seed: int,
        clients_per_round: int,
        *,
        parameter_names: Collection[str],
        learning_rate: float,
        weight_decay: float,
        device: torch.device | str = "cpu",
        server_decay_names: Collection[str] | None = None,
        average_moments: bool = False,
        dropout_rate: float = 0.0,
        first_round: int = 0,
        **strategy_kwargs: Any,
    ) -> None:
        """`parameter_names`: the model's weights (the measurement leaves out BatchNorm's
        running statistics); `learning_rate`/`weight_decay`: the clients' (the server-decay
        arm's shared step, and the message of a run that overflows); `server_decay_names`: the
        decayed tensors of the server-decay arm (None: another arm); `average_moments`:
        optimizer-state server-averaged (the mean second moment goes back to the clients)."""
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
        self.partitions = dict(partitions)  # node id -> partition id
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.dropout_rate = dropout_rate
        self.first_round = first_round
        self.parameter_names = frozenset(parameter_names)
        self.device = device
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.average_moments = average_moments
        self.server_decay = (
            None
            if server_decay_names is None
            else ServerDecay(learning_rate, weight_decay, frozenset(server_decay_names))
        )
        self._dropped: list[int] = []
        self._global: dict[str, np.ndarray] = {}
        self.avg_v: dict[str, np.ndarray] | None = None  # server-averaged: the mean v sent out
        self._sent: list[Message] = []
        # The latest round's measurement and the server optimizer's state after it (for
        # `evaluate_fn`, which Flower calls after aggregate_train with the new global model).
        self.last_measurement: RoundMeasurement | None = None
        self.last_server_state: dict[str, np.ndarray] = {}

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
        """Unpack, measure, aggregate the accepted replies (FedAvg, the server step), finish."""
        server_round += self.first_round
        replies = list(replies)
        unpacked = self._unpack(replies)
        self.last_measurement = measured = self._measure(server_round, unpacked)
        accepted = self._accepted(replies, unpacked, measured)
        arrays, metrics = self._aggregate(server_round, accepted, measured)
        self.last_server_state = self.server_state()
        return arrays, metrics

    def _unpack(self, replies: list[Message]) -> list[ClientReply]:
        """Each reply out of its Flower message, attributed to the node it was sent to."""
        sent = [m for m in self._sent if m.metadata.message_id]
        addressed = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        return [to_client_reply(m, self.partitions, addressed) for m in replies]

    def _measure(self, server_round: int, unpacked: list[ClientReply]) -> RoundMeasurement:
        """Check every reply and measure the accepted updates; the dropped clients rejected."""
        measured = measure_round(
            self._global,
            unpacked,
            device=self.device,
            only=self.parameter_names,  # weights, not BatchNorm's running statistics
            server_decay=self.server_decay,  # the server-decay arm's shared step, measured
        )
        nodes = {pid: node for node, pid in self.partitions.items()}
        measured.rejections += [
            (pid, nodes[pid], f"simulated dropout (dropout-rate={self.dropout_rate:g})")
            for pid in self._dropped
        ]
        for pid, node, reason in measured.rejections:
            log(
                WARNING,
                "round %d: rejected partition %s (node %s): %s",
                server_round,
                pid,
                node,
                reason,
            )
        return measured

    def _accepted(
        self, replies: list[Message], unpacked: list[ClientReply], measured: RoundMeasurement
    ) -> list[Message]:
        """The accepted messages in partition order, each with its weights alone.

        FedAvg sums in this order, and float addition is not associative, so arrival order must
        not leak into the aggregate. Server-averaged: their second moments are averaged here.
        """
        message_of = {id(r): m for r, m in zip(unpacked, replies, strict=True)}
        accepted = [message_of[id(r)] for r in measured.accepted]
        moments, weights = pop_moments(accepted)  # server-averaged: each client's v
        for m in accepted:
            # FedAvg expects exactly one ArrayRecord per reply; the decay part is measured.
            if schema.DECAY_PART in m.content.array_records:
                del m.content[schema.DECAY_PART]
        if moments and self.average_moments:
            self.avg_v = average_moments(moments, weights)  # FedAdamW: sent back next round
        return accepted

    def _aggregate(
        self, server_round: int, accepted: list[Message], measured: RoundMeasurement
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's own aggregation of `accepted`; (None, None) when nothing was."""
        failed = [r for r in measured.rejections if r[0] not in self._dropped]
        if not accepted and failed and all("non-finite" in reason for *_, reason in failed):
            raise NonFiniteRunError(
                f"round {server_round}: every client's update is non-finite: "
                f"learning-rate={self.learning_rate:g} with weight-decay={self.weight_decay:g} "
                "overflows float32; lower them"
            )
        if not accepted:
            log(
                WARNING, "round %d: no update accepted; the global model is unchanged", server_round
            )
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        return (None if arrays is None else self._finish(arrays, measured)), metrics

    def _finish(self, arrays: ArrayRecord, measured: RoundMeasurement) -> ArrayRecord:
        """The aggregate in the global model's dtypes, shrunk by the server-decay arm's step."""
        # FedAdam's bias correction is a float64 scalar: numpy would promote the model to
        # float64, and the next round's replies would no longer match its dtypes.
        arrays = ArrayRecord(
            {k: Array(np.asarray(v.numpy(), self._global[k].dtype)) for k, v in arrays.items()}
        )
        if measured.server_decay is not None:
            # The server-decay arm: the aggregate shrinks by the clients' decoupled factor.
            decayed = measured.server_decay.apply({k: v.numpy() for k, v in arrays.items()})
            arrays.update({k: Array(v) for k, v in decayed.items()})
        return arrays

    def server_state(self) -> dict[str, np.ndarray]:
        """The server optimizer's state as named arrays ("m_t/conv.weight"); empty for FedAvg."""
        return optimizer_state(self)

    def load_server_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from `server_state`'s arrays (a resumed run's checkpoint)."""
        restore_optimizer_state(self, state)


class MeasuredFedAvg(MeasuredStrategy, FedAvg):
    """FedAvg (McMahan et al. 2017), measured."""
