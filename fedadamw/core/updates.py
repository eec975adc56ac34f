"""Client updates as deltas, Δᵢ = wᵢ − w_global, computed and checked in this one place.

A reply is aggregated only when it has every expected tensor with the global model's shape,
a floating dtype, finite values and the numeric metrics of `fedadamw.core.wire`; anything else
becomes a recorded rejection with a one-line reason, never a crash of the round.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedadamw import schema
from fedadamw.core.divergence import Divergence, analyze
from fedadamw.core.server_decay import DecayStep, ServerDecay


@dataclass(frozen=True)
class ClientReply:
    """One client's answer, already out of its Flower message."""

    node_id: int
    partition_id: int | None
    arrays: Mapping[str, np.ndarray] | None
    metrics: Mapping[str, Any]
    error: str | None = None
    decay: Mapping[str, np.ndarray] | None = None  # Δ_decay per parameter, with track-decay


@dataclass(frozen=True)
class PartsMeasurement:
    """Divergence of the decay parts and of the data parts (Δ_data = Δ − Δ_decay)."""

    decay: Divergence
    data: Divergence
    decay_layers: dict[str, Divergence]
    data_layers: dict[str, Divergence]
    # (K,) cos(Δ_decay,i, −w_global) on decayed tensors; NaN for a zero decay part
    decay_cosine_to_neg_weights: np.ndarray


@dataclass
class RoundMeasurement:
    """The accepted replies of a round and how far their updates diverged."""

    accepted: list[ClientReply]
    rejections: list[tuple[int | None, int | None, str]]
    whole: Divergence | None = None
    layers: dict[str, Divergence] = field(default_factory=dict)
    parts: PartsMeasurement | None = None  # when every accepted reply carried its decay part
    server_decay: DecayStep | None = None  # the server-decay arm's shared step of this round
    # Σ|decay step| / Σ|w| over decayed weights and steps: the round's (summed over clients,
    # so exact) and each accepted client's; None where clients did not report the sums.
    effective_shrink: float | None = None
    client_shrink: list[float | None] = field(default_factory=list)

    @property
    def partition_ids(self) -> list[int]:
        """Partition ids of the accepted clients (measure_round accepts only known ones)."""
        return [r.partition_id for r in self.accepted if r.partition_id is not None]

    @property
    def num_examples(self) -> list[int]:
        """Example counts of the accepted clients (their aggregation weights)."""
        return [int(r.metrics[schema.NUM_EXAMPLES]) for r in self.accepted]

    def train_loss(self) -> float | None:
        """Example-weighted mean training loss of the accepted clients."""
        if not self.accepted:
            return None
        n = np.asarray(self.num_examples, dtype=np.float64)
        losses = np.asarray([float(r.metrics[schema.TRAIN_LOSS]) for r in self.accepted])
        return float((n * losses).sum() / n.sum())


def check_reply(reply: ClientReply, reference: Mapping[str, np.ndarray]) -> str | None:
    """Why `reply` cannot be aggregated, or None when it can."""
    if reply.error is not None:
        return f"error reply: {reply.error}"
    if reply.arrays is None:
        return "reply carries no arrays"
    missing = sorted(set(reference) - set(reply.arrays))
    extra = sorted(set(reply.arrays) - set(reference))
    if missing or extra:
        return f"array keys differ from the global model (missing {missing}, unexpected {extra})"
    for name, ref in reference.items():
        arr = reply.arrays[name]
        if arr.shape != ref.shape:
            return f"array {name!r} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if not np.issubdtype(ref.dtype, np.floating):
            if arr.dtype != ref.dtype:  # an integer buffer, e.g. BatchNorm's step counter
                return f"array {name!r} has dtype {arr.dtype}, expected {ref.dtype}"
            continue
        if not np.issubdtype(arr.dtype, np.floating):
            return f"array {name!r} has dtype {arr.dtype}, expected a floating dtype"
        if not np.all(np.isfinite(arr)):
            return f"array {name!r} has non-finite values"
    for name, part in (reply.decay or {}).items():
        expected = reference.get(name)
        if (
            expected is None
            or part.shape != expected.shape
            or not np.issubdtype(part.dtype, np.floating)
        ):
            return f"decay part {name!r} does not match a floating tensor of the global model"
        if not np.all(np.isfinite(part)):
            return f"decay part {name!r} has non-finite values"
    for key in schema.REPLY_METRICS:
        value = reply.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {key!r} is missing or not a number ({value!r})"
        if not math.isfinite(float(value)):
            return f"metric {key!r} is not finite ({value!r})"
    if reply.metrics[schema.NUM_EXAMPLES] <= 0:
        return f"metric 'num-examples' must be > 0, got {reply.metrics[schema.NUM_EXAMPLES]!r}"
    return None


def flatten_updates(
    global_arrays: Mapping[str, np.ndarray],
    replies: Sequence[ClientReply],
    device: torch.device | str = "cpu",
    only: Collection[str] | None = None,
) -> tuple[torch.Tensor, dict[str, slice]]:
    """(K, d) float32 matrix of Δᵢ = wᵢ − w_global, and the column slice of each tensor.

    `only` limits the columns to those tensors (the model's parameters: BatchNorm's running
    statistics are averaged by FedAvg but are not something an optimizer stepped).
    """
    names = [
        n
        for n, a in global_arrays.items()
        if np.issubdtype(a.dtype, np.floating) and (only is None or n in only)
    ]
    segments: dict[str, slice] = {}
    offset = 0
    for name in names:
        size = int(global_arrays[name].size)
        segments[name] = slice(offset, offset + size)
        offset += size
    out = torch.empty(len(replies), offset, dtype=torch.float32, device=device)
    arrays: list[Mapping[str, np.ndarray]] = []
    for reply in replies:
        assert reply.arrays is not None  # checked by check_reply
        arrays.append(reply.arrays)
    for name in names if arrays else []:
        # One tensor for all clients at a time (thousands of clients: few, large operations);
        # the difference is taken in float64 and rounded once to float32.
        rows = np.stack([np.asarray(a[name], dtype=np.float64).reshape(-1) for a in arrays])
        delta = rows - np.asarray(global_arrays[name], dtype=np.float64).reshape(-1)
        out[:, segments[name]] = torch.from_numpy(delta.astype(np.float32)).to(device)
    return out, segments


def flatten_decay_parts(
    segments: Mapping[str, slice],
    replies: Sequence[ClientReply],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(K, d) float32 matrix of Δ_decay in `flatten_updates`' column layout (0 elsewhere)."""
    d = max((s.stop for s in segments.values()), default=0)
    out = torch.zeros(len(replies), d, dtype=torch.float32, device=device)
    for i, reply in enumerate(replies):
        for name, part in (reply.decay or {}).items():
            if name not in segments:
                continue  # a tensor left out of the measurement (see flatten_updates' `only`)
            # A copy: replies are read-only views of their message's bytes (fedadamw.core.records).
            out[i, segments[name]] = torch.from_numpy(np.array(part, np.float32).reshape(-1)).to(
                device
            )
    return out


def measure_parts(
    global_arrays: Mapping[str, np.ndarray],
    updates: torch.Tensor,
    segments: Mapping[str, slice],
    replies: Sequence[ClientReply],
    weights: Sequence[int],
    shared: torch.Tensor | None = None,
) -> PartsMeasurement:
    """Divergence of decay parts and data parts, and each decay part's cosine with −w_global.

    `shared` is a decay step every client's decay part also holds (the server-decay arm's D).
    """
    decay = flatten_decay_parts(segments, replies, updates.device)
    if shared is not None:
        decay += shared
    decay_whole, decay_layers = analyze(decay, weights, segments)
    data_whole, data_layers = analyze(updates - decay, weights, segments)
    # Only tensors some client decayed: biases (never decayed) would only dilute the cosine.
    decayed = [s for n, s in segments.items() if bool(decay[:, s].abs().sum() > 0)]
    cos = np.full(len(replies), np.nan)  # a zero decay part has no direction
    if decayed:
        dd = torch.cat([decay[:, s] for s in decayed], dim=1).to(torch.float64)
        w = torch.cat(
            [
                torch.from_numpy(np.array(global_arrays[n], np.float64).reshape(-1))
                for n, s in segments.items()
                if s in decayed
            ]
        ).to(dd.device)
        norms = dd.norm(dim=1) * w.norm()
        found = torch.where(norms > 0, (dd @ -w) / norms.clamp_min(1e-300), torch.nan)
        cos = found.cpu().numpy()
    return PartsMeasurement(decay_whole, data_whole, decay_layers, data_layers, cos)


def measure_round(
    global_arrays: Mapping[str, np.ndarray],
    replies: Sequence[ClientReply],
    device: torch.device | str = "cpu",
    only: Collection[str] | None = None,
    server_decay: ServerDecay | None = None,
) -> RoundMeasurement:
    """Check every reply, then measure the divergence of the accepted clients' updates.

    Every array is checked; divergence is measured over the tensors in `only` (default: all).
    With `server_decay` (the server-decay arm) the round's shared decay step D is computed from
    the accepted replies, every update is measured as Δᵢ + D and every decay part as D plus the
    client's own (`fedadamw.core.server_decay`); the caller decays the aggregate with it.
    """
    accepted: list[ClientReply] = []
    rejections: list[tuple[int | None, int | None, str]] = []
    seen: set[int] = set()
    for reply in replies:
        pid = reply.partition_id
        reason = check_reply(reply, global_arrays)
        if reason is None and pid is None:
            reason = f"node {reply.node_id} holds none of this run's partitions"
        elif reason is None and pid in seen:
            reason = f"duplicate reply for partition {pid}"
        if reason is None and pid is not None:
            accepted.append(reply)
            seen.add(pid)
        else:
            rejections.append((pid, reply.node_id, reason or ""))
    # Partition order everywhere downstream: the store's rows, and the order FedAvg sums the
    # float32 updates in, so a run is reproducible bit for bit whatever order replies arrive.
    accepted.sort(key=lambda r: r.partition_id or 0)  # all set: unknown ones were rejected
    result = RoundMeasurement(accepted=accepted, rejections=rejections)
    if not accepted:
        return result
    updates, segments = flatten_updates(global_arrays, accepted, device, only)
    shared = None
    if server_decay is not None:
        steps = [int(r.metrics[schema.LOCAL_STEPS]) for r in accepted]
        arrays = [r.arrays for r in accepted if r.arrays is not None]  # all: checked above
        result.server_decay = server_decay.step_for(
            global_arrays, arrays, result.num_examples, steps
        )
        shared = torch.zeros(updates.shape[1], dtype=torch.float32, device=updates.device)
        for name, step in result.server_decay.step.items():
            if name in segments:
                shared[segments[name]] = torch.from_numpy(step.reshape(-1)).to(shared)
        updates += shared  # every client's update carries the same decay step
    result.whole, result.layers = analyze(updates, result.num_examples, segments)
    if all(r.decay is not None for r in accepted):
        result.parts = measure_parts(
            global_arrays, updates, segments, accepted, result.num_examples, shared
        )
    result.effective_shrink, result.client_shrink = effective_shrink(accepted, result.server_decay)
    return result


def effective_shrink(
    accepted: Sequence[ClientReply], server: DecayStep | None = None
) -> tuple[float | None, list[float | None]]:
    """The round's Σ|decay step| / Σ|w| (sums over clients) and each client's; NaN for 0/0.

    In the server-decay arm both are the server's shrink per step (the shared step is every
    client's decay); otherwise the clients' reported sums (track-decay), None without them.
    """
    if server is not None:
        return server.shrink_per_step, [server.shrink_per_step] * len(accepted)
    sums = [_sums(r.metrics) for r in accepted]
    per_client = [None if s is None else _ratio(*s) for s in sums]
    if not sums or any(s is None for s in sums):
        return None, per_client
    num = sum(s[0] for s in sums if s is not None)
    den = sum(s[1] for s in sums if s is not None)
    return _ratio(num, den), per_client


def _sums(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    values = [metrics.get(schema.DECAY_STEP_SUM), metrics.get(schema.WEIGHT_SUM)]
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != 2 or not all(math.isfinite(v) and v >= 0 for v in numbers):
        return None
    return numbers[0], numbers[1]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan
