"""A server optimizer's state as named arrays, for the resume checkpoint (and back).

Flower's strategies keep their state in attributes: FedOpt's (FedAdam, FedYogi, FedAdagrad)
moments `m_t`, `v_t` per array name, FedAvgM's `momentum_vector` as a list in array order.
They are stored as "attribute/name" arrays (npz, no pickle) beside the global model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_DICT_STATE = ("m_t", "v_t")
_LIST_STATE = ("momentum_vector",)


def optimizer_state(strategy: object) -> dict[str, np.ndarray]:
    """The strategy's state as named arrays ("m_t/conv.weight"); empty for FedAvg."""
    out: dict[str, np.ndarray] = {}
    for attr in _DICT_STATE:
        value = getattr(strategy, attr, None)
        if value:
            out.update({f"{attr}/{k}": np.array(v) for k, v in value.items()})
    for attr in _LIST_STATE:
        value = getattr(strategy, attr, None)
        if value:
            out.update({f"{attr}/{i}": np.array(v) for i, v in enumerate(value)})
    return out


def restore_optimizer_state(strategy: object, state: Mapping[str, np.ndarray]) -> None:
    """Set the strategy's state from `optimizer_state`'s arrays; refuse a foreign one."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        attr, _, name = key.partition("/")
        if attr not in _DICT_STATE + _LIST_STATE or not hasattr(strategy, attr):
            raise ValueError(
                f"checkpoint holds server state {key!r} that {type(strategy).__name__} lacks"
            )
        parts.setdefault(attr, {})[name] = np.array(value)
    for attr, arrays in parts.items():
        if attr in _LIST_STATE:
            setattr(strategy, attr, [arrays[str(i)] for i in range(len(arrays))])
        else:
            setattr(strategy, attr, arrays)
