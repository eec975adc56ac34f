"""Session-wide test setup: no test reads or writes the user's data cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point FEDADAMW_CACHE at a fresh folder for the whole session.

    Every data set and split is then made by this session's code, not read back from
    ~/.cache/fedadamw, where an older split may lie. Set in os.environ, so that the processes
    tests start (Ray workers, Flower's SuperNodes, the dashboard) use the same folder.
    """
    folder = tmp_path_factory.mktemp("fedadamw-cache")
    old = os.environ.get("FEDADAMW_CACHE")
    os.environ["FEDADAMW_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FEDADAMW_CACHE", None)
        else:
            os.environ["FEDADAMW_CACHE"] = old


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny tensors (faster, and spares shared cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
