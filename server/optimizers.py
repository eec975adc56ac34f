"""The server optimizers: Flower's own strategies, each under `MeasuredStrategy` once.

Every class here is a Flower strategy with `MeasuredStrategy` first in its bases and no body of
its own: what is measured and stored is `MeasuredStrategy`'s, what the server does with the
aggregate is Flower's (`flwr.serverapp.strategy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core.optim import decayed_names
from server.strategy import MeasuredFedAvg, MeasuredStrategy

if TYPE_CHECKING:
    import torch
    from torch import nn


class MeasuredFedAvgM(MeasuredStrategy, FedAvgM):
    """FedAvgM: server momentum on the pseudo-gradient (Hsu et al. 2019), measured."""


class MeasuredFedAdam(MeasuredStrategy, FedAdam):
    """FedAdam (Reddi et al. 2021), measured."""


class MeasuredFedYogi(MeasuredStrategy, FedYogi):
    """FedYogi (Reddi et al. 2021), measured."""


class MeasuredFedAdagrad(MeasuredStrategy, FedAdagrad):
    """FedAdagrad (Reddi et al. 2021), measured."""


class MeasuredFedProx(MeasuredStrategy, FedProx):
    """FedProx (Li et al. 2020): FedAvg on the server, the proximal term on the clients."""


STRATEGIES: dict[str, type[MeasuredStrategy]] = {
    "fedavg": MeasuredFedAvg,
    "fedavgm": MeasuredFedAvgM,
    "fedadam": MeasuredFedAdam,
    "fedyogi": MeasuredFedYogi,
    "fedadagrad": MeasuredFedAdagrad,
    "fedprox": MeasuredFedProx,
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
    arm: str,
    model: nn.Module,
    partitions: Mapping[int, int],
    clients_per_round: int,
    first_round: int = 0,
    device: torch.device | str = "cpu",
) -> MeasuredStrategy:
    """The measured Flower strategy that `server-optimizer` names, for `arm` of `cfg` on `model`
    (its parameter names, and the decayed ones for the server-decay arm)."""
    return STRATEGIES[cfg.server_optimizer](
        partitions,
        cfg.seed,
        clients_per_round,
        parameter_names=[n for n, _ in model.named_parameters()],
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        device=device,
        server_decay_names=(
            decayed_names(model) if schema.DECAY_MODES[arm].server_decays else None
        ),
        average_moments=cfg.optimizer_state == schema.SERVER_AVERAGED,
        dropout_rate=cfg.dropout_rate,
        first_round=first_round,
        **server_optimizer_kwargs(cfg),
    )
