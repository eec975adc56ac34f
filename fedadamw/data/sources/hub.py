"""CIFAR-10 and FEMNIST from the Hugging Face Hub through flwr-datasets' `FederatedDataset`.

The hub data is read once, from a local copy of the hub repository (`<cache>/hub/<name>`, the
folder `hf download <repo> --repo-type dataset --local-dir …` makes) or from the hub / its
Hugging Face cache, then converted to `.npy` files under `<cache>/<name>-v1/`. Train features
are memory-mapped from there, so Ray workers on one machine share one copy in the page cache
and each keeps only its own partition's rows in memory. Without network and without a copy,
loading stops with one line saying what to fetch and where to put it. Each data set's repository
and columns are the `hub` of its record in `fedadamw.data.registry`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedadamw.data.registry import DataSet, HubSource
from fedadamw.errors import ConfigError

SHUFFLE_SEED = 42  # FederatedDataset's default: the same row order on every machine
BATCH = 2048  # images decoded per step while converting


def local_copy(name: str, cache: Path) -> Path:
    """Where a downloaded copy of the hub repository of `name` is looked for."""
    return cache / "hub" / name


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection (no retries, no waiting)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _offline() -> bool:
    """Whether the user asked the Hugging Face libraries to use their cache only."""
    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def load(data: DataSet, cache: Path) -> dict[str, np.ndarray]:
    """The converted arrays of `data` (train features memory-mapped), converting once."""
    out = cache / f"{data.name}-v1"
    if not (out / "complete").is_file():
        _convert(data, _dataset_path(data, cache), cache, out)
    arrays = {p.stem: np.load(p) for p in out.glob("*.npy") if p.stem != "x"}
    arrays["x"] = np.load(out / "x.npy", mmap_mode="r")
    return arrays


def _source(data: DataSet) -> HubSource:
    if data.hub is None:
        raise ValueError(f"data set {data.name!r} has no hub source in its registry record")
    return data.hub


def _dataset_path(data: DataSet, cache: Path) -> str:
    """A local copy when there is one, else the hub id when the hub (or offline cache) can serve."""
    copy = local_copy(data.name, cache)
    if copy.is_dir():
        return str(copy)
    repo = _source(data).repo
    if _offline() or hub_reachable():
        return repo
    raise ConfigError(
        f"dataset: {data.name!r} needs the Hugging Face data set {repo}, and the hub cannot be "
        f"reached; {_fetch_hint(data, cache)}"
    )


def _fetch_hint(data: DataSet, cache: Path) -> str:
    repo, name = _source(data).repo, data.name
    return (
        f"on a machine with internet run `hf download {repo} --repo-type dataset --local-dir "
        f"{name}` and copy that folder to {local_copy(name, cache)}"
    )


def _convert(data: DataSet, path: str, cache: Path, out: Path) -> None:
    """Load `path` through FederatedDataset and write its arrays as .npy files into `out`."""
    from datasets import Image
    from flwr_datasets import FederatedDataset
    from flwr_datasets.preprocessor import Divider

    src = _source(data)
    kwargs: dict[str, Any] = {}
    if Path(path).is_dir():
        kwargs["cache_dir"] = str(cache / "hf-cache")  # keep a local copy's Arrow files beside it
    if src.test_fraction is not None:
        frac = src.test_fraction
        kwargs["preprocessor"] = Divider({"train": 1.0 - frac, "test": frac}, divide_split="train")
    fds = FederatedDataset(dataset=path, partitioners={}, shuffle=True, seed=SHUFFLE_SEED, **kwargs)
    try:
        train, test = fds.load_split("train"), fds.load_split("test")
    except (ConnectionError, FileNotFoundError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"dataset: cannot load {src.repo} from {path} ({first}); {_fetch_hint(data, cache)}"
        ) from None
    for split, needed in (
        (train, {src.image, src.label, src.group}),
        (test, {src.image, src.label}),
    ):
        missing = sorted(c for c in needed - set(split.column_names) if c is not None)
        if missing:
            raise ConfigError(
                f"dataset: {path} lacks columns {missing}; expected the schema of {src.repo}"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    x = _images(train.cast_column(src.image, Image(mode=src.mode)), src.image, tmp / "x.npy")
    x_test = _images(
        test.cast_column(src.image, Image(mode=src.mode)), src.image, tmp / "x_test.npy"
    )
    if src.standardize:
        # Per-channel statistics of the train split, applied to both splits.
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
        std = x.std(axis=(0, 2, 3), dtype=np.float64, keepdims=True) + 1e-8
        for arr in (x, x_test):
            for start in range(0, len(arr), BATCH):
                arr[start : start + BATCH] = (arr[start : start + BATCH] - mean) / std
    x.flush()
    x_test.flush()
    np.save(tmp / "y.npy", np.asarray(train[src.label], dtype=np.int64))
    np.save(tmp / "y_test.npy", np.asarray(test[src.label], dtype=np.int64))
    if src.group is not None:
        # Integer codes in sorted order of the ids: NaturalIdPartitioner numbers partitions in
        # the sorted order of the column, so the codes keep the mapping of the string ids.
        _, codes = np.unique(np.asarray(train[src.group]), return_inverse=True)
        np.save(tmp / "groups.npy", codes.astype(np.int64))
    (tmp / "complete").touch()
    _publish(tmp, out)


def _images(split: Any, column: str, path: Path) -> np.memmap[Any, np.dtype[np.float32]]:
    """(N, C, H, W) float32 in [0, 1], decoded batch by batch straight into a .npy file."""
    rows = split.select_columns([column]).with_format("numpy")
    out: np.memmap[Any, np.dtype[np.float32]] | None = None
    for start in range(0, len(rows), BATCH):
        batch = np.asarray(rows[start : start + BATCH][column], dtype=np.float32) / 255.0
        batch = batch[:, None] if batch.ndim == 3 else batch.transpose(0, 3, 1, 2)
        if out is None:
            shape = (len(rows), *batch.shape[1:])
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        out[start : start + len(batch)] = batch
    if out is None:
        raise ConfigError(f"dataset: {column!r} column of an empty split; nothing to train on")
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place: concurrent processes never see half a data set."""
    if out.exists() and not (out / "complete").is_file():
        shutil.rmtree(out, ignore_errors=True)  # left by a conversion that was killed
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its copy
