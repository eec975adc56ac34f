"""The ClientApp: unpack the message, train with `fedadamw`, pack the reply."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedadamw import schema
from fedadamw.core import wire
from fedadamw.core.models import build_model
from fedadamw.core.training import train_local
from fedadamw.data import registry
from fedadamw.data.split import load_partition

app = ClientApp()


def _partition_id(context: Context) -> int:
    # Set by the simulation engine, or by `flower-supernode --node-config "partition-id=N"`.
    return int(context.node_config["partition-id"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (it samples clients by partition id)."""
    reply = MetricRecord({schema.PARTITION_ID: _partition_id(context)})
    return Message(content=RecordDict({"metrics": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition with the requested decay mode."""
    config = msg.content.config_records["config"]
    request = wire.TrainRequest.from_wire(config)
    spec = request.train_spec(_partition_id(context), wire.server_round(config))
    data = load_partition(request.data, spec.partition_id)  # cached per process
    dataset = registry.get(request.data.dataset)
    model = build_model(
        request.model, dataset.shape, dataset.num_classes, request.data.seed, request.resnet_norm
    )
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    started = time.perf_counter()
    result = train_local(model, data, spec)
    seconds = time.perf_counter() - started
    metrics = MetricRecord(
        {
            schema.NUM_EXAMPLES: result.num_examples,
            schema.TRAIN_LOSS: result.train_loss,
            schema.LOCAL_STEPS: result.local_steps,
            schema.PARTITION_ID: spec.partition_id,
            schema.BATCH_SIZE: spec.batch_size,
            schema.WORK_FRACTION: spec.work_fraction,
            schema.TRAIN_SECONDS: seconds,
            **{schema.shrink_key(q): v for q, v in result.shrink_quantiles.items()},
        }
    )
    if result.decay_step_sum is not None and result.weight_sum is not None:
        metrics[schema.DECAY_STEP_SUM] = result.decay_step_sum
        metrics[schema.WEIGHT_SUM] = result.weight_sum
    content = RecordDict({"arrays": ArrayRecord(result.state), "metrics": metrics})
    if result.decay_part is not None:
        # Only Δ_decay travels: the server gets Δ_data = Δ − Δ_decay exactly from the weights.
        content[schema.DECAY_PART] = ArrayRecord(result.decay_part)
    return Message(content=content, reply_to=msg)
