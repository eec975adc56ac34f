"""The probe's training step for one checkpoint (torch): clients, engines, rows to store.

Imported by `fedadamw.run.probe` only once there is work to do, so bad input and a store that
holds every row already never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedadamw.core.models import model_for
from fedadamw.core.probe import Probe, ProbeClient, Setting, train_settings
from fedadamw.core.sampling import dropped_partitions, sample_partitions
from fedadamw.core.training import pick_device
from fedadamw.core.wire import TrainRequest
from fedadamw.data.split import load_partition
from fedadamw.schema import DECAY_MODES

if TYPE_CHECKING:
    from fedadamw.config import Config
    from fedadamw.results.reader import Checkpoint
    from fedadamw.run.probe import Job


def decays(mode: str) -> bool:
    """Whether λ acts in a probe mode (`none`: its optimizer ignores λ)."""
    return DECAY_MODES[mode].client_decays


def round_clients(cfg: Config, run_mode: str, server_round: int) -> list[ProbeClient]:
    """The clients the run's server sends round `server_round` to, with the specs it sends.

    The server's seeded sample of `clients_per_round` partitions less its seeded dropouts
    (server/strategy.py's configure_train), each with the spec its train message gives it.
    """
    sampled = sample_partitions(
        cfg.seed, server_round, range(cfg.num_clients), cfg.clients_per_round
    )
    dropped = set(dropped_partitions(cfg.seed, server_round, sampled, cfg.dropout_rate))
    request = TrainRequest.from_config(cfg, run_mode)
    return [
        ProbeClient(load_partition(request.data, pid), request.train_spec(pid, server_round))
        for pid in sampled
        if pid not in dropped
    ]


def probe_checkpoint(
    checkpoint: Checkpoint, job: Job, engine: str, keep_updates: bool
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, np.ndarray]]], int]:
    """Every setting of `job` from its checkpoint: probe rows, kept updates, number of clients."""
    device = pick_device()
    model = model_for(job.cfg)
    state = {k: torch.from_numpy(np.array(v)) for k, v in checkpoint.state.items()}
    clients = round_clients(job.cfg, job.mode, job.round + 1)
    settings = [Setting(*s) for s in job.settings]
    # λ means nothing to `none`: its settings of one η train (and measure) once, at λ = 0.
    same = {s: Setting(s.mode, s.learning_rate, 0.0) if not decays(s.mode) else s for s in settings}
    unique = list(dict.fromkeys(same.values()))
    trained = train_settings(model, state, clients, unique, engine, device)
    probe = Probe(model, state, clients, device)
    measures = {u: probe.measure(u, results) for u, results in zip(unique, trained, strict=True)}
    rows: list[dict[str, Any]] = []
    updates: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
    for setting in settings:
        measured = measures[same[setting]]
        key = {
            "run_id": job.run_id,
            "round": job.round,
            "mode": setting.mode,
            "learning_rate": setting.learning_rate,
            "weight_decay": setting.weight_decay,
            "engine": engine,
        }
        rows.append({**key, **measured.stats})
        if keep_updates:
            for c, n, update, decay in zip(
                clients, measured.num_examples, measured.updates, measured.decay_parts, strict=True
            ):
                row = {**key, "partition_id": c.spec.partition_id, "num_examples": n}
                updates.append((row, {"update": update, "decay_part": decay}))
    return rows, updates, len(clients)
