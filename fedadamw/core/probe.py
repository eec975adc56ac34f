"""The one-round counterfactual probe's torch side: re-train one round's clients, measure.

From one global model (a kept checkpoint after round r), every client the run sampled in round
r + 1 trains again on exactly its round-(r + 1) batches (`batch_plan`: same seed, partition and
round) under each probe setting (mode, η, λ); only the optimizer and λ vary. Every client starts
from fresh optimizer state, as the run's clients do under ``optimizer-state = reset``.

Two engines give the same updates to float32 accuracy (fedadamw.core.cohort): ``vmap`` trains
every setting and client of one decay mode as one `train_cohort` stack (one call per mode),
``flower`` runs `train_local` per client and setting, the code path of the Flower ClientApp.

`measure` turns one setting's updates into the statistics of docs/usage.md ("fedadamw probe"),
stored in the ``probes`` table (`fedadamw.schema.PROBE_STATS`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedadamw.core.cohort import CohortClient, train_cohort
from fedadamw.core.divergence import divergence_stats
from fedadamw.core.optim import decayed_names
from fedadamw.core.training import TrainResult, TrainSpec, evaluate, step_settings, train_local
from fedadamw.data.split import ArrayDataset
from fedadamw.schema import DECAY_MODES, RESET_STATE

PROBE_ENGINES = ("vmap", "flower")


@dataclass(frozen=True)
class Setting:
    """One probe setting: the decay mode, the base learning rate η and λ."""

    mode: str
    learning_rate: float
    weight_decay: float


@dataclass(frozen=True)
class ProbeClient:
    """A client of round r + 1: its training rows and the spec the run gave it that round."""

    data: ArrayDataset
    spec: TrainSpec


@dataclass(frozen=True)
class Measured:
    """One setting's updates (float32, (K, d), the model's parameters in order) and statistics."""

    setting: Setting
    updates: np.ndarray
    decay_parts: np.ndarray
    num_examples: list[int]
    stats: dict[str, float]


def setting_spec(spec: TrainSpec, setting: Setting) -> TrainSpec:
    """The run's spec with the setting's mode, η and λ; tracked (for the decay part), fresh."""
    return dataclasses.replace(
        spec,
        mode=setting.mode,
        learning_rate=setting.learning_rate,
        weight_decay=setting.weight_decay,
        track_decay=True,
        optimizer_state=RESET_STATE,
    )


def train_settings(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    clients: Sequence[ProbeClient],
    settings: Sequence[Setting],
    engine: str,
    device: torch.device,
) -> list[list[TrainResult]]:
    """Per setting (in order), one TrainResult per client (in order), from `global_state`."""
    state = dict(global_state)
    if engine == "flower":
        out = []
        for setting in settings:
            results = []
            for c in clients:
                fresh = copy.deepcopy(model)
                fresh.load_state_dict(state)
                results.append(train_local(fresh, c.data, setting_spec(c.spec, setting), device))
            out.append(results)
        return out
    if engine != "vmap":
        raise ValueError(f"engine: {engine!r}; expected one of {', '.join(PROBE_ENGINES)}")
    by_setting: dict[int, list[TrainResult]] = {}
    for mode in dict.fromkeys(s.mode for s in settings):
        # One stack per mode: every setting of the mode times every client, one start state.
        picked = [i for i, s in enumerate(settings) if s.mode == mode]
        stack = [
            CohortClient(c.data, setting_spec(c.spec, settings[i])) for i in picked for c in clients
        ]
        results = train_cohort(model, state, stack, device)
        for n, i in enumerate(picked):
            by_setting[i] = results[n * len(clients) : (n + 1) * len(clients)]
    return [by_setting[i] for i in range(len(settings))]


class Probe:
    """The fixed part of one checkpoint's probe: the global model, its clients, their losses."""

    def __init__(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        clients: Sequence[ProbeClient],
        device: torch.device,
    ) -> None:
        self.model = copy.deepcopy(model)
        self.state = {k: v.detach().to("cpu") for k, v in global_state.items()}
        self.clients = list(clients)
        self.device = device
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.w = np.concatenate([self.state[n].double().numpy().reshape(-1) for n in self.names])
        decayed = decayed_names(model, clients[0].spec.decay_params)  # the run's, shared
        self.decayed = np.concatenate(
            [np.full(self.state[n].numel(), n in decayed) for n in self.names]
        )
        self.weights = np.asarray([len(c.data) for c in clients], dtype=np.float64)
        # Each client's training loss at the global model (eval mode, every row).
        self.base_losses = np.asarray([self._loss(self.w, c.data) for c in clients])

    def _loss(self, flat: np.ndarray, data: ArrayDataset) -> float:
        """Mean training loss on `data` of the model with parameters `flat` (eval mode)."""
        state = dict(self.state)
        offset = 0
        for n in self.names:
            t = self.state[n]
            values = flat[offset : offset + t.numel()].reshape(t.shape)
            state[n] = torch.from_numpy(values).to(t.dtype)
            offset += t.numel()
        self.model.load_state_dict(state)
        return evaluate(self.model, data, self.device)[0]

    def flatten(self, result: TrainResult) -> tuple[np.ndarray, np.ndarray]:
        """(Δ, Δ_decay) of one client, float32, flat over the parameters."""
        w = np.concatenate(
            [result.state[n].detach().double().cpu().numpy().reshape(-1) for n in self.names]
        )
        parts = result.decay_part or {}
        decay = np.concatenate(
            [
                (
                    parts[n].detach().float().cpu().numpy().reshape(-1)
                    if n in parts
                    else np.zeros(self.state[n].numel(), np.float32)
                )
                for n in self.names
            ]
        )
        return (w - self.w).astype(np.float32), decay.astype(np.float32)

    def measure(self, setting: Setting, results: Sequence[TrainResult]) -> Measured:
        """The statistics of one setting's updates (docs/usage.md, "fedadamw probe")."""
        flat = [self.flatten(r) for r in results]
        updates = np.stack([u for u, _ in flat])
        decay = np.stack([d for _, d in flat])
        delta = updates.astype(np.float64)
        p = self.weights / self.weights.sum()
        div = divergence_stats(torch.from_numpy(updates), self.weights)
        norms = np.linalg.norm(delta, axis=1)
        mode = DECAY_MODES[setting.mode]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.linalg.norm(decay.astype(np.float64), axis=1) / norms
            on_decayed = delta[:, self.decayed]
            w_dec = self.w[self.decayed]
            w_norm = float(np.linalg.norm(w_dec))
            toward_zero = on_decayed @ -w_dec
            shrink_cos = toward_zero / (np.linalg.norm(on_decayed, axis=1) * w_norm)
            shrink_component = toward_zero / w_norm
        aggregate = self.w + p @ delta
        agg_change = [
            self._loss(aggregate, c.data) - base
            for c, base in zip(self.clients, self.base_losses, strict=True)
        ]
        own_change = [
            self._loss(self.w + delta[i], c.data) - self.base_losses[i]
            for i, c in enumerate(self.clients)
        ]
        shrink = []
        for c, r in zip(self.clients, results, strict=True):
            spec = setting_spec(c.spec, setting)
            steps = step_settings(len(c.data), spec, r.local_steps)
            shrink.append(sum(lr * wd for lr, wd in steps) if mode.client_decays else 0.0)
        stats = {
            "clients": len(results),
            "mean_pairwise_cosine": div["mean_pairwise_cosine"],
            "dispersion": div["dispersion"],
            "mean_update_norm": float(norms.mean()),
            "decay_share": float(share.mean()) if mode.client_decays else 0.0,
            "shrink_cosine": float(shrink_cos.mean()),
            "shrink_component": float(shrink_component.mean()),
            "aggregate_loss_change": float(p @ np.asarray(agg_change)),
            "client_loss_change": float(p @ np.asarray(own_change)),
            "total_shrink": float(np.mean(shrink)),
        }
        return Measured(setting, updates, decay, [len(c.data) for c in self.clients], stats)
