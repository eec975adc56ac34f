"""Arrays in Flower's messages, written and read by both apps with each header built once.

Flower's `Array` holds `np.save`'s bytes; `Array(tensor)` and `Array.numpy()` format and parse
(`ast.literal_eval`) a `.npy` header per array. A 100-client vmap round sends and reads a few
thousand of them, which took longer than the training itself. These helpers give the same
records and the same values (`fedadamw.core.wire.npy_bytes` / `from_npy_bytes`), and fall back
to `Array.numpy()` for any bytes they did not write (another numpy's header, a malformed reply),
so what a remote client sends is read exactly as Flower reads it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedadamw.core import wire


def array_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """`tensors` as the ArrayRecord that `ArrayRecord(tensors)` makes."""
    record = ArrayRecord()  # filled in place: ArrayRecord(dict) would copy every Array again
    for name, tensor in tensors.items():
        a = tensor.detach().cpu().numpy()
        record[name] = Array(str(a.dtype), tuple(a.shape), wire.NPY, wire.npy_bytes(a))
    return record


def to_numpy(array: Array) -> np.ndarray:
    """`array.numpy()`, read-only when it is bytes `array_record` wrote (no copy)."""
    if array.stype == wire.NPY:
        fast = wire.from_npy_bytes(array.dtype, array.shape, array.data)
        if fast is not None:
            return fast
    return array.numpy()


def numpy_dict(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of `record`, by name (see `to_numpy`)."""
    return {name: to_numpy(a) for name, a in record.items()}


class _Decoded(Array):
    """An Array whose ndarray was already read: `numpy()` returns it without parsing."""

    decoded: np.ndarray

    def numpy(self) -> np.ndarray:
        return self.decoded


def keep_decoded(record: ArrayRecord, arrays: Mapping[str, np.ndarray]) -> None:
    """Make `record[k].numpy()` return `arrays[k]`, the values already read from its bytes (the
    server reads a reply once for its measurement; FedAvg then reads the same arrays)."""
    for name, array in list(record.items()):
        decoded = _Decoded.__new__(_Decoded)  # the same fields and bytes, nothing re-encoded
        decoded.__dict__.update(array.__dict__)
        decoded.decoded = arrays[name]
        record[name] = decoded


def state_dict(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    """`record.to_torch_state_dict()`: writable tensors of their own."""
    return OrderedDict(
        (name, torch.from_numpy(np.array(to_numpy(a)))) for name, a in record.items()
    )
