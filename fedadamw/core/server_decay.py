"""Server-side decoupled decay: the `server-decay` arm, whose decay step is shared by construction.

Clients train with Adam and no decay. After aggregation the server multiplies the decayed
tensors of the new global model (those `fedadamw.core.optim.decay_param_groups` decays) by the
factor that the clients' own decoupled decay would have applied to a weight with zero gradient:

    f = Σᵢ pᵢ (1 − ηλ)^τᵢ

with pᵢ = nᵢ/Σn the FedAvg weights and τᵢ the local steps client i took. With equal local work
(`local-steps`, no stragglers) every τᵢ = τ and f = (1 − ηλ)^τ. With `local-epochs`, clients of
different sizes take different τᵢ, and f is what FedAvg of their pure-decay updates gives (by
Jensen's inequality at least (1 − ηλ)^τ̄, τ̄ = Σ pᵢτᵢ). SGD with one client and zero gradient:
exactly client-side `sgd-decoupled`.

Measured as a client update, the server's decay is one step D = (f − 1)·w̄ (w̄ the aggregate
before decay, decayed tensors only) that every client shares: Δᵢ + D is client i's update and D
its decay part, and FedAvg of the Δᵢ + D is exactly the decayed aggregate. The effective shrink
per step is 1 − f^(1/τ̄): ηλ when every τᵢ = τ, as for client-side decoupled decay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ServerDecay:
    """The server-decay arm's setting: step size η, decay λ and the tensors that decay."""

    learning_rate: float
    weight_decay: float
    decayed: frozenset[str]

    def step_for(
        self,
        global_arrays: Mapping[str, np.ndarray],
        client_arrays: Sequence[Mapping[str, np.ndarray]],
        weights: Sequence[float],
        steps: Sequence[int],
    ) -> DecayStep:
        """This round's shared decay step, from the accepted clients' weights and local steps."""
        p = np.asarray(weights, dtype=np.float64)
        p = p / p.sum()
        tau = np.asarray(steps, dtype=np.float64)
        keep = 1.0 - self.learning_rate * self.weight_decay
        factor = float(p @ np.power(keep, tau))
        mean_steps = float(p @ tau)
        shrink = 1.0 - factor ** (1.0 / mean_steps) if mean_steps > 0 else math.nan
        step = {}
        for name in sorted(self.decayed & set(global_arrays)):
            mean = sum(
                w * np.asarray(a[name], np.float64) for w, a in zip(p, client_arrays, strict=True)
            )
            step[name] = (factor - 1.0) * np.asarray(mean, np.float64)
        return DecayStep(factor, shrink, step)


@dataclass(frozen=True)
class DecayStep:
    """One round of server decay: the factor f, the shrink per step, and D per decayed tensor."""

    factor: float
    shrink_per_step: float
    step: dict[str, np.ndarray]  # D = (f − 1)·w̄, float64

    def apply(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decayed tensors of the aggregate `arrays`, multiplied by f (dtype kept)."""
        return {
            name: (np.asarray(arrays[name], np.float64) * self.factor).astype(arrays[name].dtype)
            for name in self.step
            if name in arrays
        }
