"""scikit-learn's shipped handwritten digits (UCI optdigits test set): 1,797 images of 8×8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedadamw.data.registry import DataSet

SPLIT_SEED = 0  # a fixed train/test split, whatever the run's `seed` (like MNIST-1D's data seed)
TEST_FRACTION = 0.2


def load(data: DataSet, cache: Path) -> dict[str, np.ndarray]:
    """80/20 stratified split; pixels scaled from 0..16 to [0, 1], shaped (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return {"x": x_train, "y": y_train, "x_test": x_test, "y_test": y_test}
