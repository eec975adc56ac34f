"""The train message's wire format: the same keys and values as deployed clients read."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, Metadata, RecordDict

from clients.app import read_request
from fedadamw.config import Config
from fedadamw.core import wire
from fedadamw.core.sampling import client_batch_size, work_fraction
from fedadamw.core.schedules import Schedule
from fedadamw.core.training import ClientSettings, TrainSpec
from fedadamw.core.wire import TrainRequest
from fedadamw.data.split import DataSpec
from fedadamw.errors import ConfigError


def _config() -> Config:
    # Every value differs from its default, so a key read from the wrong field shows.
    return Config.from_mapping(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "num-clients": 7,
            "partitioner": "natural-id",
            "dirichlet-alpha": 0.7,
            "classes-per-client": 3,
            "shards-per-client": 4,
            "min-partition-size": 5,
            "synthetic-alpha": 0.5,
            "synthetic-beta": 0.25,
            "synthetic-iid": True,
            "seed": 11,
            "resnet-norm": "group",
            "learning-rate": 0.002,
            "weight-decay": 0.3,
            "local-epochs": 3,
            "local-steps": 9,
            "val-fraction": 0.25,
            "batch-size": 17,
            "straggler-rate": 0.4,
            "client-batch-sizes": "8,64",
            "track-decay": True,
            "num-server-rounds": 12,
            "lr-schedule": "cosine-restarts",
            "warmup-rounds": 2,
            "step-rounds": 4,
            "step-gamma": 0.5,
            "restart-rounds": 3,
            "restart-mult": 3.0,
            "decay-schedule": "normalized",
            "decay-scaling": "paper",
            "decay-params": "all",
            "server-optimizer": "fedprox",
            "proximal-mu": 0.03,
            "optimizer-state": "server-averaged",
        }
    )


def _reference(cfg: Config, mode: str) -> dict[str, Any]:
    """The train config as the server wrote it key by key before it was derived from fields."""
    return {
        "mode": mode,
        "weight-decay": cfg.weight_decay,
        "learning-rate": cfg.learning_rate,
        "local-epochs": cfg.local_epochs,
        "local-steps": cfg.local_steps,
        "val-fraction": cfg.val_fraction,
        "batch-size": cfg.batch_size,
        "seed": cfg.seed,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "num-partitions": cfg.num_clients,
        "partitioner": cfg.partitioner,
        "dirichlet-alpha": cfg.dirichlet_alpha,
        "classes-per-client": cfg.classes_per_client,
        "shards-per-client": cfg.shards_per_client,
        "min-partition-size": cfg.min_partition_size,
        "synthetic-alpha": cfg.synthetic_alpha,
        "synthetic-beta": cfg.synthetic_beta,
        "synthetic-iid": cfg.synthetic_iid,
        "shakespeare-min-chars": cfg.shakespeare_min_chars,
        "resnet-norm": cfg.resnet_norm,
        "transformer-layers": cfg.transformer_layers,
        "transformer-dim": cfg.transformer_dim,
        "transformer-heads": cfg.transformer_heads,
        "straggler-rate": cfg.straggler_rate,
        "client-batch-sizes": cfg.client_batch_sizes,
        "track-decay": cfg.track_decay,
        "num-server-rounds": cfg.num_server_rounds,
        "lr-schedule": cfg.lr_schedule,
        "warmup-rounds": cfg.warmup_rounds,
        "step-rounds": cfg.step_rounds,
        "step-gamma": cfg.step_gamma,
        "restart-rounds": cfg.restart_rounds,
        "restart-mult": cfg.restart_mult,
        "decay-schedule": cfg.decay_schedule,
        "decay-scaling": cfg.decay_scaling,
        "decay-params": cfg.decay_params,
        # FedProx's μ (0 for every other server optimizer)
        "proximal-mu": cfg.proximal_mu if cfg.server_optimizer == "fedprox" else 0.0,
        "optimizer-state": cfg.optimizer_state,
        # whose Adam state a client keeps: one per run (config and arm), never shared
        "run-key": hashlib.sha256(
            json.dumps({**cfg.to_dict(), "arms": mode}, sort_keys=True).encode()
        ).hexdigest()[:16],
    }


@pytest.mark.parametrize("cfg", [_config(), Config.from_mapping({})], ids=["set", "defaults"])
def test_the_wire_keeps_the_keys_and_values_deployed_clients_read(cfg: Config) -> None:
    sent = TrainRequest.from_config(cfg, "coupled").to_wire()
    expected = _reference(cfg, "coupled")
    assert sent == expected
    assert all(type(sent[k]) is type(expected[k]) for k in expected)  # 3 stays int, 3.0 float
    # No two fields share a key (one would silently overwrite the other).
    assert len(sent) == len(fields(TrainRequest)) - 1 + len(fields(DataSpec))


def test_a_request_survives_the_wire() -> None:
    request = TrainRequest.from_config(_config(), "coupled")
    received = TrainRequest.from_wire({**request.to_wire(), "server-round": 4})
    assert received == request
    assert received.data == DataSpec.from_config(_config())


def test_the_train_spec_is_the_clients_share_of_the_request() -> None:
    cfg = _config()
    spec = TrainRequest.from_config(cfg, "decoupled").train_spec(partition_id=5, server_round=2)
    assert spec == TrainSpec(
        mode="decoupled",
        learning_rate=0.002,
        weight_decay=0.3,
        local_epochs=3,
        batch_size=client_batch_size(11, 5, [8, 64], 17),
        seed=11,
        partition_id=5,
        server_round=2,
        work_fraction=work_fraction(11, 2, 5, 0.4),
        track_decay=True,
        local_steps=9,
        schedule=Schedule(
            name="cosine-restarts",
            rounds=12,
            warmup_rounds=2,
            step_rounds=4,
            step_gamma=0.5,
            restart_rounds=3,
            restart_mult=3.0,
        ),
        decay_schedule="normalized",
        decay_scaling="paper",
        decay_params="all",
        proximal_mu=0.03,
        optimizer_state="server-averaged",
    )


BAD: list[tuple[dict[str, Any], str]] = [
    ({"num-partitions": None}, "train message lacks config key 'num-partitions'"),
    ({"learning-rate": "0.1"}, "train message key 'learning-rate': '0.1' is not a float"),
    ({"local-epochs": True}, "train message key 'local-epochs': True is not a int"),
    ({"local-epochs": 2.0}, "train message key 'local-epochs': 2.0 is not a int"),
    ({"synthetic-iid": 1}, "train message key 'synthetic-iid': 1 is not a bool"),
    ({"model": 3}, "train message key 'model': 3 is not a str"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_a_missing_or_mistyped_key_is_a_one_line_config_error(
    change: dict[str, Any], message: str
) -> None:
    record = {**TrainRequest.from_config(_config(), "coupled").to_wire(), **change}
    record = {k: v for k, v in record.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        TrainRequest.from_wire(record)
    assert str(info.value) == message


def test_an_integer_is_read_as_a_float_and_the_round_is_checked() -> None:
    record = {**TrainRequest.from_config(_config(), "coupled").to_wire(), "weight-decay": 1}
    assert TrainRequest.from_wire(record).weight_decay == 1.0
    assert wire.server_round({"server-round": 3}) == 3
    with pytest.raises(ConfigError, match="lacks config key 'server-round'"):
        wire.server_round({})
    with pytest.raises(ConfigError, match="client-batch-sizes: '8,x' is not allowed"):
        TrainRequest.from_wire({**record, "client-batch-sizes": "8,x"})


# --- one declaration per client hyperparameter --------------------------------------------
SPEC_DRAWS = {"seed", "partition_id", "server_round", "work_fraction", "schedule"}


def test_a_client_setting_is_a_config_field_a_request_field_and_a_spec_field_by_name() -> None:
    settings = [f.name for f in fields(ClientSettings)]
    config = {f.name for f in fields(Config)}
    assert set(settings) - {"mode"} <= config  # mode is the arm
    request = [f.name for f in fields(TrainRequest)]
    spec = [f.name for f in fields(TrainSpec)]
    assert request[: len(settings)] == settings == spec[: len(settings)]
    assert set(spec) - set(settings) == SPEC_DRAWS  # the client's own draws, nothing else
    # Every other request field is read by name from a Config field too (or is the data/run key).
    assert set(request) - set(settings) - config == {"data", "run_key"}


def test_config_to_request_to_spec_keeps_every_value() -> None:
    cfg = _config().replace(client_batch_sizes="")  # every client then uses batch-size
    sent = TrainRequest.from_config(cfg, "coupled").to_wire()
    request = TrainRequest.from_wire({**sent, wire.SERVER_ROUND: 5})
    spec = request.train_spec(partition_id=3, server_round=5)
    for f in fields(ClientSettings):
        want = "coupled" if f.name == "mode" else getattr(cfg, f.name)
        got = getattr(spec, f.name)
        assert got == want and type(got) is type(want), f.name
    assert (spec.seed, spec.partition_id, spec.server_round) == (11, 3, 5)
    assert spec.work_fraction == work_fraction(11, 5, 3, 0.4)
    assert spec.schedule == Schedule(
        name=cfg.lr_schedule,
        rounds=cfg.num_server_rounds,
        warmup_rounds=cfg.warmup_rounds,
        step_rounds=cfg.step_rounds,
        step_gamma=cfg.step_gamma,
        restart_rounds=cfg.restart_rounds,
        restart_mult=cfg.restart_mult,
    )
    # What the client checks is the config again: every key it carries has the server's value.
    carried = request.config_mapping()
    assert carried == {
        k: v for k, v in cfg.replace(arms="coupled").to_dict().items() if k in carried
    }
    assert len(carried) == len(request.to_wire()) - 1  # all but the run key


def test_a_request_names_one_decay_mode() -> None:
    sent = TrainRequest.from_config(_config(), "coupled").to_wire()
    for bad in ("coupled,decoupled", " coupled"):  # good arms, but not one mode
        with pytest.raises(ConfigError) as info:
            TrainRequest.from_wire({**sent, "mode": bad})
        assert str(info.value) == (
            f"mode: {bad!r} is not allowed; expected one of "
            "decoupled, coupled, none, sgd-coupled, sgd-decoupled, server-decay"
        )


# (config key, its wire key, a bad value, how `--set` writes it)
BAD_REQUESTS = [
    ("weight-decay", "weight-decay", -0.1, "-0.1"),
    ("learning-rate", "learning-rate", 1e39, "1e39"),
    ("arms", "mode", "adamw", "adamw"),
    ("local-epochs", "local-epochs", 0, "0"),
    ("decay-params", "decay-params", "some", "some"),
    ("model", "model", "cnn", "cnn"),  # a convolution over mnist1d's vectors: the pair is checked
]


@pytest.mark.parametrize(("key", "wire_key", "value", "text"), BAD_REQUESTS)
def test_a_remote_client_gets_the_error_the_cli_prints_for_the_same_value(
    key: str, wire_key: str, value: Any, text: str, tmp_path: Path
) -> None:
    sent = TrainRequest.from_config(Config.from_mapping({}), "decoupled").to_wire()
    config = ConfigRecord({**sent, wire_key: value, wire.SERVER_ROUND: 1})
    meta = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    msg = Message(RecordDict({"config": config}), metadata=meta)  # type: ignore[call-overload]  # as received
    with pytest.raises(ConfigError) as info:
        read_request(msg, 0)
    cli = subprocess.run(
        [sys.executable, "-m", "fedadamw.cli", "run", "--set", f"{key}={text}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip().splitlines() == [f"fedadamw: error: {info.value}"]


def test_a_key_the_client_does_not_know_is_refused() -> None:
    wire: dict[str, Any] = TrainRequest.from_config(_config(), "decoupled").to_wire()
    wire["server-round"] = 3
    assert TrainRequest.from_wire(wire).mode == "decoupled"
    wire["future-schedule"] = "cosine"  # sent by a newer server
    with pytest.raises(ConfigError, match="does not know: future-schedule"):
        TrainRequest.from_wire(wire)


# --- arrays: numpy's .npy bytes, as Flower's Array carries them ----------------------------

_ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(2.5),  # 0-d: BatchNorm's num_batches_tracked is one
    np.array(7, dtype=np.int64),
    np.zeros((0, 3), dtype=np.float64),
    np.arange(6, dtype=">f4"),  # big-endian
    np.linspace(-1, 1, 2 * 3 * 5, dtype=np.float16).reshape(2, 3, 5),
]


@pytest.mark.parametrize("a", _ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_bytes_are_what_np_save_writes_and_read_back(a: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    assert wire.npy_bytes(a) == buffer.getvalue()
    back = wire.from_npy_bytes(str(a.dtype), a.shape, buffer.getvalue())
    assert back is not None
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    assert not back.flags.writeable  # a view of the message's bytes, never written through


def test_bytes_npy_bytes_did_not_write_are_left_to_np_load() -> None:
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(a), allow_pickle=False)  # fortran_order: True
    good = wire.npy_bytes(a)
    # Another header, a lying dtype, a truncated or padded body, a forged shape: None, and
    # the caller parses the bytes with np.load (which reads or refuses them).
    assert wire.from_npy_bytes("float64", (2, 3), fortran.getvalue()) is None
    assert wire.from_npy_bytes("float32", (2, 3), good) is None
    assert wire.from_npy_bytes("float64", (2, 3), good[:-1]) is None
    assert wire.from_npy_bytes("float64", (2, 3), good + b"\0") is None
    assert wire.from_npy_bytes("float64", (3, 2), good) is None
    assert wire.from_npy_bytes("float64", (10**12,), good) is None  # allocates nothing
    assert wire.from_npy_bytes("float64", (-1, 3), good) is None
    assert wire.from_npy_bytes("no-such-dtype", (2, 3), good) is None
    assert wire.from_npy_bytes("object", (2, 3), good) is None
    with pytest.raises(TypeError, match="pickle"):
        wire.npy_bytes(np.array([{}], dtype=object))
    # A Fortran-ordered array is sent in C order: other bytes, the same values.
    np.testing.assert_array_equal(np.load(io.BytesIO(wire.npy_bytes(np.asfortranarray(a)))), a)
