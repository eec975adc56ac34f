"""The server optimizers: Flower's own strategies, each under `DivergenceMixin` once.

Every class here is a Flower strategy with the mixin first in its bases and no body of its own:
what is measured and stored is the mixin's, what the server does with the aggregate is
Flower's (`flwr.serverapp.strategy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.run.recorder import RunRecorder
from server.strategy import DivergenceFedAvg, DivergenceMixin


class DivergenceFedAvgM(DivergenceMixin, FedAvgM):
    """FedAvgM: server momentum on the pseudo-gradient (Hsu et al. 2019), measured."""


class DivergenceFedAdam(DivergenceMixin, FedAdam):
    """FedAdam (Reddi et al. 2021), measured."""


class DivergenceFedYogi(DivergenceMixin, FedYogi):
    """FedYogi (Reddi et al. 2021), measured."""


class DivergenceFedAdagrad(DivergenceMixin, FedAdagrad):
    """FedAdagrad (Reddi et al. 2021), measured."""


class DivergenceFedProx(DivergenceMixin, FedProx):
    """FedProx (Li et al. 2020): FedAvg on the server, the proximal term on the clients."""


STRATEGIES: dict[str, type[DivergenceMixin]] = {
    "fedavg": DivergenceFedAvg,
    "fedavgm": DivergenceFedAvgM,
    "fedadam": DivergenceFedAdam,
    "fedyogi": DivergenceFedYogi,
    "fedadagrad": DivergenceFedAdagrad,
    "fedprox": DivergenceFedProx,
}


def server_optimizer_kwargs(cfg: Config) -> dict[str, Any]:
    """The Flower strategy's own arguments for `cfg.server_optimizer`."""
    name = cfg.server_optimizer
    if name == "fedavgm":
        return {
            "server_learning_rate": cfg.server_learning_rate,
            "server_momentum": cfg.server_momentum,
        }
    if name in ("fedadam", "fedyogi"):
        return {
            "eta": cfg.server_learning_rate,
            "eta_l": cfg.learning_rate,  # FedOpt only logs it
            "beta_1": cfg.server_beta1,
            "beta_2": cfg.server_beta2,
            "tau": cfg.server_tau,
        }
    if name == "fedadagrad":
        return {"eta": cfg.server_learning_rate, "eta_l": cfg.learning_rate, "tau": cfg.server_tau}
    if name == schema.FEDPROX:
        return {"proximal_mu": cfg.proximal_mu}
    return {}


def make_strategy(
    cfg: Config,
    recorder: RunRecorder,
    partitions: Mapping[int, int],
    clients_per_round: int,
    first_round: int = 0,
) -> DivergenceMixin:
    """The measured Flower strategy that `server-optimizer` names."""
    return STRATEGIES[cfg.server_optimizer](
        recorder,
        partitions,
        cfg.seed,
        clients_per_round,
        dropout_rate=cfg.dropout_rate,
        first_round=first_round,
        **server_optimizer_kwargs(cfg),
    )
