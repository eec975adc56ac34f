"""fedadamw.core.records: the ArrayRecords both apps send, against Flower's own conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedadamw.core.models import build_model
from fedadamw.core.records import array_record, numpy_dict, state_dict, to_numpy


def _state() -> dict[str, torch.Tensor]:
    # A model with BatchNorm: float weights and the 0-d int64 num_batches_tracked.
    model = build_model("resnet20", (3, 32, 32), 10, seed=0, norm="batch")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_array_record_is_the_record_flower_makes_from_a_state_dict() -> None:
    state = _state()
    ours, flowers = array_record(state), ArrayRecord(state)
    assert list(ours) == list(flowers)
    for name in state:
        a, b = ours[name], flowers[name]
        assert (a.dtype, a.shape, a.stype, a.data) == (b.dtype, b.shape, b.stype, b.data)


def test_reading_gives_flowers_values_and_writable_tensors() -> None:
    state = _state()
    record = ArrayRecord(state)
    want = record.to_torch_state_dict()
    got = state_dict(record)
    assert list(got) == list(want)
    for name, tensor in got.items():
        assert tensor.dtype == want[name].dtype and torch.equal(tensor, want[name])
        tensor.add_(1)  # its own memory: load_state_dict and optimizers may write to it
    for name, a in numpy_dict(record).items():
        np.testing.assert_array_equal(a, record[name].numpy())


def test_bytes_it_did_not_write_are_read_as_flower_reads_them() -> None:
    fortran = Array(np.asfortranarray(np.arange(6.0).reshape(2, 3)))  # fortran_order: True
    np.testing.assert_array_equal(to_numpy(fortran), fortran.numpy())
    forged = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=b"not npy")
    with pytest.raises(ValueError) as flowers:
        forged.numpy()
    with pytest.raises(ValueError) as ours:
        to_numpy(forged)
    assert str(ours.value) == str(flowers.value)
