"""A server optimizer's state as named arrays, for the resume checkpoint (and back).

Flower's strategies keep their state in attributes: FedOpt's (FedAdam, FedYogi, FedAdagrad)
moments `m_t`, `v_t` per array name, FedAvgM's `momentum_vector` as a list in array order.
They are stored as "attribute/name" arrays (npz, no pickle) beside the global model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Message

from fedadamw import schema
from fedadamw.core.records import numpy_dict

# avg_v: optimizer-state server-averaged, the clients' mean second moments (and step count).
_DICT_STATE = ("m_t", "v_t", "avg_v")
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


def pop_moments(replies: Sequence[Message]) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Take each reply's second moments out (FedAvg wants one ArrayRecord); with its weight."""
    moments: list[dict[str, np.ndarray]] = []
    weights: list[float] = []
    for m in replies:
        if schema.ADAM_V in m.content.array_records:
            record = m.content.array_records[schema.ADAM_V]
            moments.append(numpy_dict(record))
            metrics = next(iter(m.content.metric_records.values()))
            weights.append(float(metrics[schema.NUM_EXAMPLES]))  # type: ignore[arg-type]
            del m.content[schema.ADAM_V]
    return moments, weights


def average_moments(
    records: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """FedAdamW's server step: the clients' v (and step counts) weighted like the model.

    Summed in float64 in the order given (partition order), cast back to each array's dtype;
    the step count is the weighted mean, rounded.
    """
    p = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    out: dict[str, np.ndarray] = {}
    for key in records[0]:
        total = sum(
            w * np.asarray(r[key], dtype=np.float64) for w, r in zip(p, records, strict=True)
        )
        mean = np.asarray(total)
        dtype = np.asarray(records[0][key]).dtype
        out[key] = np.asarray(np.round(mean) if key == "step" else mean).astype(dtype)
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
