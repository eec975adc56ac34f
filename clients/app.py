"""The ClientApp: unpack the message, train with `fedadamw`, pack the reply.

The unpacking (`read_request`) and packing (`train_reply`, `partition_reply`) are functions of
their own because the vectorized engine (`server.cohort_grid`) answers the very same messages
with the very same replies, only training a round's clients together.
"""

from __future__ import annotations

import time
from functools import cache

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedadamw import schema
from fedadamw.core import wire
from fedadamw.core.models import build_model, sizes_of
from fedadamw.core.records import array_record, state_dict
from fedadamw.core.training import TrainResult, TrainSpec, train_local
from fedadamw.data import registry
from fedadamw.data.split import load_partition

app = ClientApp()


def _partition_id(context: Context) -> int:
    # Set by the simulation engine, or by `flower-supernode --node-config "partition-id=N"`.
    return int(context.node_config["partition-id"])


def partition_reply(msg: Message, partition_id: int) -> Message:
    """The answer to the server's partition-id query."""
    reply = MetricRecord({schema.PARTITION_ID: partition_id})
    return Message(content=RecordDict({"metrics": reply}), reply_to=msg)


def read_request(msg: Message, partition_id: int) -> tuple[wire.TrainRequest, TrainSpec]:
    """What a train message asks of the client holding `partition_id`.

    The request is checked here, once, with the server's own Config checks: a bad value is the
    ConfigError (one line) that `fedadamw run` gives for it.
    """
    config = msg.content.config_records["config"]
    request = wire.TrainRequest.from_wire(config)
    return request, request.train_spec(partition_id, wire.server_round(config))


def train_reply(msg: Message, spec: TrainSpec, result: TrainResult, seconds: float) -> Message:
    """The reply to a train message: the new weights, the metrics and, tracked, Δ_decay."""
    metrics = MetricRecord(
        {
            schema.NUM_EXAMPLES: result.num_examples,
            schema.TRAIN_LOSS: result.train_loss,
            schema.LOCAL_STEPS: result.local_steps,
            schema.PARTITION_ID: spec.partition_id,
            schema.BATCH_SIZE: spec.batch_size,
            schema.WORK_FRACTION: spec.work_fraction,
            schema.TRAIN_SECONDS: seconds,
            schema.OPTIMIZER_STEPS: result.start_step,
            **{schema.shrink_key(q): v for q, v in result.shrink_quantiles.items()},
        }
    )
    if result.client_decay is not None:  # normalized decay: each client its own λ
        metrics[schema.CLIENT_WEIGHT_DECAY] = result.client_decay
    if result.decay_step_sum is not None and result.weight_sum is not None:
        metrics[schema.DECAY_STEP_SUM] = result.decay_step_sum
        metrics[schema.WEIGHT_SUM] = result.weight_sum
    content = RecordDict({"arrays": array_record(result.state), "metrics": metrics})
    if result.decay_part is not None:
        # Only Δ_decay travels: the server gets Δ_data = Δ − Δ_decay exactly from the weights.
        content[schema.DECAY_PART] = array_record(result.decay_part)
    if spec.optimizer_state == schema.SERVER_AVERAGED and result.moments is not None:
        # FedAdamW: only the second moments (and their step count) go to the server.
        content[schema.ADAM_V] = array_record(
            {k: v for k, v in result.moments.items() if not k.startswith("exp_avg/")}
        )
    return Message(content=content, reply_to=msg)


def incoming_moments(
    msg: Message, context: Context, request: wire.TrainRequest
) -> dict[str, torch.Tensor] | None:
    """Adam's state this client starts from: its own (local), the server's mean v, or none."""
    if request.optimizer_state == schema.LOCAL_STATE:
        kept = context.state.array_records.get(_state_key(request))
        return None if kept is None else state_dict(kept)
    if request.optimizer_state == schema.SERVER_AVERAGED:
        mean = msg.content.array_records.get(schema.ADAM_V)
        return None if mean is None else state_dict(mean)
    return None


def keep_moments(context: Context, request: wire.TrainRequest, result: TrainResult) -> None:
    """optimizer-state local: the moments stay in this node's Context until it is sampled again."""
    if request.optimizer_state == schema.LOCAL_STATE and result.moments is not None:
        context.state[_state_key(request)] = array_record(result.moments)


def _state_key(request: wire.TrainRequest) -> str:
    # Every arm and grid point of one Flower run reaches the same nodes: one state per run.
    return f"adam-state-{request.run_key}"


@cache
def _model(name: str, dataset: str, seed: int, norm: str, sizes: tuple[int, int, int]) -> nn.Module:
    """The arm's model, built once per process (a simulation actor serves many messages)."""
    data = registry.get(dataset)
    return build_model(name, data.shape, data.num_classes, seed, norm, sizes, data.tokens)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (it samples clients by partition id)."""
    return partition_reply(msg, _partition_id(context))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition with the requested decay mode."""
    request, spec = read_request(msg, _partition_id(context))
    data = load_partition(request.data, spec.partition_id)  # cached per process
    model = _model(
        request.model,
        request.data.dataset,
        request.data.seed,
        request.resnet_norm,
        sizes_of(request),
    )
    # Every weight and buffer comes from the message: nothing of the previous call survives.
    model.load_state_dict(state_dict(msg.content.array_records["arrays"]))
    started = time.perf_counter()
    result = train_local(model, data, spec, moments=incoming_moments(msg, context, request))
    keep_moments(context, request, result)
    return train_reply(msg, spec, result, time.perf_counter() - started)
