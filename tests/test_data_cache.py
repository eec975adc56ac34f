"""The splits kept on disk: a private folder per test session, keyed by the split code's version."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedadamw.config import Config
from fedadamw.data import split as data


def _spec() -> data.DataSpec:
    cfg = Config.from_mapping({"num-clients": 4, "partitioner": "dirichlet", "seed": 3})
    return data.DataSpec.from_config(cfg)


def test_the_session_uses_its_own_cache_folder() -> None:
    folder = data.cache_dir()
    assert folder != Path.home() / ".cache" / "fedadamw"
    assert os.environ["FEDADAMW_CACHE"] == str(folder)


def test_a_new_split_version_splits_again_instead_of_reading_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDADAMW_CACHE", str(tmp_path))
    spec = _spec()
    calls: list[data.DataSpec] = []
    real_split = data._split_partitions

    def counting_split(s: data.DataSpec) -> tuple[np.ndarray, ...]:
        calls.append(s)
        return real_split(s)

    monkeypatch.setattr(data, "_split_partitions", counting_split)

    def fresh() -> tuple[np.ndarray, ...]:
        data.partition_indices.cache_clear()  # only the disk may answer, not this process
        return data.partition_indices(spec)

    try:
        first = fresh()
        files_v1 = set(tmp_path.glob("partitions-*.npz"))
        assert len(calls) == 1 and len(files_v1) == 1
        again = fresh()
        assert len(calls) == 1  # the same version: read back from disk
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)

        # The split code changes: it puts every row in reverse order. A stale cache would go
        # on answering with the old split; the new version must run the new code.
        monkeypatch.setattr(data, "SPLIT_VERSION", data.SPLIT_VERSION + 1)
        monkeypatch.setattr(
            data, "_split_partitions", lambda s: tuple(p[::-1] for p in counting_split(s))
        )
        changed = fresh()
        assert len(calls) == 2
        assert set(tmp_path.glob("partitions-*.npz")) - files_v1  # a file under a new key
        for old, new in zip(first, changed, strict=True):
            np.testing.assert_array_equal(new, old[::-1])
    finally:
        data.partition_indices.cache_clear()
