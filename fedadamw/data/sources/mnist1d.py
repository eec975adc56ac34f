"""MNIST-1D, generated locally by the `mnist1d` package with its authors' standard recipe."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedadamw.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from fedadamw.data.registry import DataSet

DATA_SEED = 42  # the MNIST-1D authors' seed: the standard data set, whatever the run's `seed`


def load(data: DataSet, cache: Path) -> dict[str, np.ndarray]:
    """The arrays from the disk cache, generated (~3.5 s) when absent or torn."""
    path = cache / f"mnist1d-seed{DATA_SEED}-v1.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                return {k: npz[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass  # a torn or foreign file: regenerate it
    arrays = generate()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    atomic_write_bytes(path, buffer.getvalue())  # concurrent Ray workers never see half a file
    return arrays


def generate() -> dict[str, np.ndarray]:
    """5,000 samples split 80/20 (4,000 train / 1,000 test) of length 40, ten classes."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = DATA_SEED
    # make_dataset seeds numpy's global RNG; keep the caller's global state untouched.
    state = np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(state)
    return {
        "x": raw["x"].astype(np.float32),
        "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.int64),
    }
