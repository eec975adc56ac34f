"""Data sets: digits, FedProx's Synthetic(α, β) against its recipe, and the hub loaders offline."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedadamw.config import Config
from fedadamw.data.registry import REGISTRY, DataSet
from fedadamw.data.sources import hub, synthetic
from fedadamw.data.split import DataSpec, load_splits, partition_indices
from fedadamw.errors import ConfigError


def test_digits_is_sklearns_set_split_80_20_and_scaled_to_unit_range() -> None:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    train, test = load_splits("digits")
    assert (len(train), len(test)) == (1437, 360)  # 1,797 images
    assert train.x.shape[1:] == REGISTRY["digits"].shape == (1, 8, 8)
    assert train.x.min() >= 0.0 and train.x.max() == 1.0
    raw = load_digits()
    # The two splits hold exactly sklearn's images, each with its label.
    pairs = sorted(
        (row.tobytes(), int(t)) for row, t in zip(raw.data / 16.0, raw.target, strict=True)
    )
    both = np.concatenate([train.x, test.x]).reshape(-1, 64).astype(np.float64)
    ours = sorted(
        (row.tobytes(), int(t))
        for row, t in zip(both, np.concatenate([train.y, test.y]), strict=True)
    )
    assert ours == pairs
    # Stratified: every class is split 80/20 up to rounding.
    assert np.abs(np.bincount(test.y) - 0.2 * np.bincount(raw.target)).max() <= 1.0


def _generate(k: int, alpha: float, beta: float, iid: bool, seed: int = 3) -> dict[str, np.ndarray]:
    return synthetic.generate(k, alpha, beta, iid, seed)


def _per_client(arrays: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    train = np.bincount(arrays["groups"], minlength=k)
    test = np.bincount(arrays["groups_test"], minlength=k)
    return train, test


def test_synthetic_sizes_are_lognormal_plus_50_split_90_10() -> None:
    k = 200
    arrays = _generate(k, 1.0, 1.0, iid=False)
    train, test = _per_client(arrays, k)
    n = train + test
    assert n.min() >= 50
    np.testing.assert_array_equal(train, np.floor(0.9 * n).astype(np.int64))
    # ⌊lognormal(4, 2)⌋ has median e⁴ ≈ 54.6: about half the clients hold more than 50 + e⁴.
    assert abs(float(np.mean(n - 50 > np.exp(4))) - 0.5) < 0.1
    assert arrays["x"].shape[1] == 60 and set(np.unique(arrays["y"])) <= set(range(10))


def test_synthetic_features_have_covariance_diag_j_to_the_minus_1_2_within_a_client() -> None:
    k = 60
    arrays = _generate(k, 0.5, 0.5, iid=False)
    x, g = arrays["x"].astype(np.float64), arrays["groups"]
    centred = x - np.stack([x[g == c].mean(0) for c in range(k)])[g]
    cov = centred.T @ centred / (len(x) - k)
    expected = np.arange(1, 61, dtype=np.float64) ** -1.2
    np.testing.assert_allclose(np.diag(cov), expected, rtol=0.1)
    off = cov / np.sqrt(np.outer(expected, expected)) - np.eye(60)
    assert np.abs(off).max() < 0.1  # independent coordinates


@pytest.mark.parametrize("beta", [0.0, 2.0])
def test_synthetic_client_means_spread_as_one_plus_beta_squared(beta: float) -> None:
    # v_k ~ N(B_k, 1) with B_k ~ N(0, β): across clients Var(v_kj) = 1 + β².
    k = 150
    x, g = (a for a in (_generate(k, 0.0, beta, iid=False, seed=5)[n] for n in ("x", "groups")))
    means = np.stack([x[g == c].mean(0) for c in range(k)]).astype(np.float64)
    assert means.var() == pytest.approx(1.0 + beta**2, rel=0.25)


def test_synthetic_iid_centres_every_client_at_zero_and_shares_the_labelling() -> None:
    k = 30
    iid = _generate(k, 1.0, 1.0, iid=True)
    x, g = iid["x"].astype(np.float64), iid["groups"]
    means = np.stack([x[g == c].mean(0) for c in range(k)])
    n = np.bincount(g, minlength=k)
    # Each client mean has standard error √(Σ_jj / n_k) around v = 0.
    z = means / np.sqrt(np.outer(1.0 / n, np.arange(1, 61) ** -1.2))
    assert np.abs(z).max() < 5.0

    def label_spread(a: dict[str, np.ndarray]) -> float:
        pooled = np.bincount(a["y"], minlength=10) / len(a["y"])
        per = [np.bincount(a["y"][a["groups"] == c], minlength=10) for c in range(k)]
        return float(np.mean([0.5 * np.abs(h / h.sum() - pooled).sum() for h in per]))

    # One shared W, b: clients' label mixes match the pooled one; per-client W_k skew them.
    assert label_spread(iid) < 0.2 < 0.4 < label_spread(_generate(k, 1.0, 1.0, iid=False))


def test_synthetic_is_seeded_and_split_by_natural_id_one_client_per_partition() -> None:
    a, b = _generate(5, 1.0, 1.0, False, seed=7), _generate(5, 1.0, 1.0, False, seed=7)
    assert all(np.array_equal(a[key], b[key]) for key in a)
    assert not np.array_equal(a["x"], _generate(5, 1.0, 1.0, False, seed=8)["x"])
    cfg = Config.from_mapping(
        {"dataset": "synthetic", "model": "logreg", "partitioner": "natural-id", "num-clients": 6}
    )
    spec = DataSpec.from_config(cfg)
    train, test = load_splits(spec)
    parts = partition_indices(spec)
    for client, idx in enumerate(parts):
        np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(train.groups == client))
    assert test.groups is not None and set(np.unique(test.groups)) == set(range(6))


def test_synthetic_needs_its_generator_keys() -> None:
    with pytest.raises(ConfigError, match="synthetic-alpha"):
        load_splits("synthetic")


# --- hub data sets, tested on small local copies with the hub repositories' schema ------------


def _image_rows(n: int, shape: tuple[int, ...], labels: list[int]) -> list[Any]:
    from PIL import Image as PILImage

    # Image i is filled with the value 3·i + 5 (plus a little noise), so after loading, the
    # image's mean tells which row it was and whether its label travelled with it.
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = np.full(shape, 3 * i + 5, dtype=np.int16) + rng.integers(-1, 2, shape)
        rows.append(PILImage.fromarray(pixels.clip(0, 255).astype(np.uint8)))
    return rows


def _write_cifar10(root: Path, n_train: int = 40, n_test: int = 12) -> None:
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"img": Image(), "label": ClassLabel(names=[str(c) for c in range(10)])})
    folder = root / "hub" / "cifar10" / "plain_text"  # the layout of uoft-cs/cifar10
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [i % 10 for i in range(n)]
        rows = {"img": _image_rows(n, (32, 32, 3), labels), "label": labels}
        Dataset.from_dict(rows, features=features).to_parquet(
            folder / f"{split}-00000-of-00001.parquet"
        )


def _write_femnist(root: Path, n: int = 60) -> list[str]:
    from datasets import ClassLabel, Dataset, Features, Image, Value

    writers = [f"f{w:04d}_00" for w in (3, 1, 2, 0)]
    features = Features(
        {
            "image": Image(),
            "writer_id": Value("string"),
            "hsf_id": Value("int64"),
            "character": ClassLabel(names=[str(c) for c in range(62)]),
        }
    )
    labels = [(7 * i) % 62 for i in range(n)]
    rows = {
        "image": _image_rows(n, (28, 28), labels),
        "writer_id": [writers[i % 4] for i in range(n)],
        "hsf_id": [i % 8 for i in range(n)],
        "character": labels,
    }
    folder = root / "hub" / "femnist" / "data"  # the layout of flwrlabs/femnist (train only)
    folder.mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(folder / "train-00000-of-00001.parquet")
    return writers


def _row_of(images: np.ndarray) -> np.ndarray:
    """Which fixture row each loaded image was: its mean pixel is (3·row + 5)/255 up to noise."""
    means = images.reshape(len(images), -1).mean(1)
    rows: np.ndarray = np.rint((means * 255 - 5) / 3).astype(int)
    return rows


def test_cifar10_loads_through_federated_dataset_from_a_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDADAMW_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "hub_reachable", lambda: pytest.fail("a local copy needs no network"))
    _write_cifar10(tmp_path)
    train, test = load_splits("cifar10")
    assert train.x.shape == (40, *REGISTRY["cifar10"].shape) and test.x.shape == (12, 3, 32, 32)
    assert train.x.dtype == np.float32 and REGISTRY["cifar10"].num_classes == 10
    # Standardized per channel with the train split's statistics.
    np.testing.assert_allclose(train.x.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.x.std(axis=(0, 2, 3)), 1.0, atol=1e-3)
    # Undo the standardization with the raw pixel statistics: each image keeps its label.
    raw_values = np.array([3 * i + 5 for i in range(40)], dtype=np.float64) / 255
    mean, std = raw_values.mean(), raw_values.std()
    rows = _row_of(train.x * std + mean)
    assert sorted(rows.tolist()) == list(range(40))  # shuffled (seeded), nothing lost
    np.testing.assert_array_equal(train.y, rows % 10)
    # Converted once: a second process reads the memory-mapped arrays.
    assert isinstance(hub.load(REGISTRY["cifar10"], tmp_path)["x"], np.memmap)


def test_femnist_splits_by_writer_with_the_natural_id_partitioner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDADAMW_CACHE", str(tmp_path))
    writers = _write_femnist(tmp_path)
    train, test = load_splits("femnist")
    assert (len(train), len(test)) == (54, 6)  # the hub set has no test split: 90 / 10
    assert train.x.shape[1:] == REGISTRY["femnist"].shape == (1, 28, 28)
    rows = _row_of(np.concatenate([train.x, test.x]))
    assert sorted(rows.tolist()) == list(range(60))
    np.testing.assert_array_equal(np.concatenate([train.y, test.y]), (7 * rows) % 62)
    # groups are writer codes in sorted order of the writer ids.
    assert train.groups is not None
    ranks = {w: r for r, w in enumerate(sorted(writers))}
    np.testing.assert_array_equal(train.groups, [ranks[writers[r % 4]] for r in rows[:54]])
    cfg = Config.from_mapping(
        {
            "dataset": "femnist",
            "model": "cnn",
            "partitioner": "natural-id",
            "num-clients": 3,
            "min-partition-size": 0,
        }
    )
    parts = partition_indices(DataSpec.from_config(cfg))
    for code, idx in enumerate(parts):  # the first three writers in sorted order
        np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(train.groups == code))


def test_hub_data_set_offline_without_a_copy_says_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDADAMW_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(ConfigError) as info:
        load_splits("cifar10")
    message = str(info.value)
    assert "\n" not in message
    assert "hf download uoft-cs/cifar10 --repo-type dataset" in message
    assert str(tmp_path / "hub" / "cifar10") in message


# --- the registry: one record per data set ----------------------------------------------------


def test_registry_records_name_config_and_split_inputs() -> None:
    config_fields = {f.name for f in fields(Config)}
    spec_fields = {f.name for f in fields(DataSpec)}
    assert spec_fields <= config_fields  # DataSpec.from_config copies fields by name
    for name, data in REGISTRY.items():
        assert data.name == name
        assert set(data.generator_keys) <= spec_fields  # the split's inputs include them
    for name, data in REGISTRY.items():  # the config accepts exactly the registered data sets
        partitioner = "natural-id" if data.generated_per_client else "iid"
        model = "transformer" if data.tokens else "mlp"
        cfg = Config.from_mapping({"dataset": name, "model": model, "partitioner": partitioner})
        assert cfg.dataset == name
        if not data.natural_clients:
            with pytest.raises(ConfigError, match="which has no client column"):
                Config.from_mapping({"dataset": name, "model": model, "partitioner": "natural-id"})
    with pytest.raises(ConfigError, match="dataset: 'mnist2d' is not allowed; expected one of"):
        Config.from_mapping({"dataset": "mnist2d"})


def test_a_new_record_with_its_loader_is_a_data_set_and_must_match_its_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Registering = one record; its loader module builds it, the split checks it against it.
    monkeypatch.setitem(REGISTRY, "digits-flat", DataSet("digits-flat", 10, (1, 8, 8), "digits"))
    train, _ = load_splits("digits-flat")
    assert len(train) == 1437
    monkeypatch.setitem(REGISTRY, "digits-wrong", DataSet("digits-wrong", 10, (64,), "digits"))
    with pytest.raises(ConfigError, match=r"shape \(1, 8, 8\); its registry record says \(64,\)"):
        load_splits("digits-wrong")
    monkeypatch.setitem(REGISTRY, "digits-few", DataSet("digits-few", 5, (1, 8, 8), "digits"))
    with pytest.raises(ConfigError, match=r"labels span 0\.\.9; its registry record says 5"):
        load_splits("digits-few")
