"""Figures, store reading and report export, on synthetic but schema-true stores (no Ray).

`write_synthetic_store` builds a results.db the way the real writer does (ResultStore,
RoundRecord, divergence statistics from `fedadamw.core.divergence.analyze` of real update vectors)
and returns the numbers it wrote, so tests compare figures against an independent numpy
reference. The dashboard tests import it too.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from fedadamw import cli
from fedadamw.config import Config, default_config
from fedadamw.core.divergence import analyze
from fedadamw.results.lock import WriterLock
from fedadamw.results.reader import EmptyStoreError, Store, StoreError, resolve_store_path
from fedadamw.results.summaries import ROUND_MEAN, config_diff, cosine_matrix
from fedadamw.results.writer import ResultStore, RoundRecord
from fedadamw.schema import STAT_NAMES
from fedadamw.viz import figures, style, views
from fedadamw.viz.commands import figures_command, report_command
from fedadamw.viz.html_report import render_html
from fedadamw.viz.labels import ClientLabels
from fedadamw.viz.stores import Stores
from fedadamw.viz.views import standard_sections
from tests import needs

# The parameter tensors of a small model: (name, size), in model order.
LAYERS = (
    ("conv1.weight", 24),
    ("conv1.bias", 4),
    ("conv2.weight", 24),
    ("conv2.bias", 4),
    ("linear.weight", 40),
    ("linear.bias", 10),
)
SHRINK = ("shrink_p5", "shrink_p50", "shrink_p95")
MODES = ("coupled", "decoupled")


@dataclass
class Synthetic:
    """What `write_synthetic_store` wrote: the reference values tests compare against."""

    path: Path
    run_ids: dict[tuple[str, int, str], str] = field(default_factory=dict)  # (mode, seed, setting)
    rounds: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    layers: dict[str, dict[int, dict[str, dict[str, float]]]] = field(default_factory=dict)
    updates: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (run, round)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)  # per run
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def dirichlet_histograms(num_clients: int, seed: int, classes: int = 10) -> np.ndarray:
    """Label counts of a skewed split, made with numpy (the fast stand-in for the real split)."""
    rng = np.random.default_rng(1000 + seed)
    props = rng.dirichlet(np.full(classes, 0.3), size=num_clients)
    sizes = rng.integers(80, 400, size=num_clients)
    return np.floor(props * sizes[:, None]).astype(np.int64) + 1


def write_synthetic_store(
    out: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    num_rounds: int = 6,
    num_clients: int = 8,
    experiment: str = "default",
    grid: Sequence[dict[str, Any]] = ({},),
    parts: bool = False,
    real_labels: bool = False,
    finish: bool = True,
) -> Synthetic:
    """Write a results.db as a real run would, with label-structured client updates."""
    path = out / "results.db"
    syn = Synthetic(path)
    with ResultStore(path) as store:
        _ensure_columns(path)
        for setting, overrides in enumerate(grid):
            for seed in seeds:
                for mode in MODES:
                    cfg = default_config().replace(
                        experiment=experiment,
                        num_clients=num_clients,
                        seed=seed,
                        num_server_rounds=max(1, num_rounds),
                        arms=mode,
                        out_dir=str(out),
                        **{k.replace("-", "_"): v for k, v in overrides.items()},
                    )
                    run_id = f"{experiment}:{mode}:s{seed}:g{setting}"
                    syn.run_ids[(mode, seed, str(setting))] = run_id
                    syn.configs[run_id] = cfg.to_dict()
                    store.start_run(run_id, experiment, mode, mode, cfg.weight_decay, cfg.to_json())
                    if real_labels:
                        from fedadamw.data.split import DataSpec, label_histogram

                        hist = label_histogram(DataSpec.from_config(cfg))
                    else:
                        hist = dirichlet_histograms(num_clients, seed)
                    syn.histograms[run_id] = hist
                    store.write_labels(run_id, hist)  # as a run does when it starts
                    _write_run(store, syn, run_id, mode, seed, setting, hist, num_rounds, parts)
                    if finish:
                        store.finish_run(run_id)
    return syn


# What track-decay adds (schema 2, issue 3): the columns a run with the decay split fills.
ROUND_PART_COLUMNS = (
    *(f"{p}{s}" for p in ("decay_", "data_") for s in STAT_NAMES),
    "decay_cosine_to_neg_weights",
    *SHRINK,
)
CLIENT_COLUMNS = {
    "batch_size": "INTEGER",
    "work_fraction": "REAL",
    "decay_norm": "REAL",
    "decay_cosine_to_neg_weights": "REAL",
    **dict.fromkeys(SHRINK, "REAL"),
}


def _ensure_columns(path: Path) -> None:
    """Give a store of an older writer the columns a schema-2 writer has (no-op on schema 2)."""
    conn = sqlite3.connect(path)
    for table, wanted in (
        ("rounds", dict.fromkeys(ROUND_PART_COLUMNS, "REAL")),
        ("clients", CLIENT_COLUMNS),
    ):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for col, kind in wanted.items():
            if col not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
    conn.commit()
    conn.close()


def _write_run(
    store: ResultStore,
    syn: Synthetic,
    run_id: str,
    mode: str,
    seed: int,
    setting: int,
    hist: np.ndarray,
    num_rounds: int,
    parts: bool,
) -> None:
    d = sum(size for _, size in LAYERS)
    rng = np.random.default_rng([seed, setting, MODES.index(mode)])
    label_dirs = np.random.default_rng(seed).normal(size=(hist.shape[1], d))
    weights_dir = np.random.default_rng(seed + 7).normal(size=d)
    props = hist / hist.sum(axis=1, keepdims=True)
    n = hist.sum(axis=1)
    segments = {}
    start = 0
    for name, size in LAYERS:
        segments[name] = slice(start, start + size)
        start += size
    syn.rounds[run_id], syn.layers[run_id] = {}, {}
    acc_gain = 0.62 if mode == "decoupled" else 0.55
    loss_scale = 1.0 if mode == "decoupled" else 1.1
    store.write_round(RoundRecord(run_id, 0, {"test_loss": 2.3, "test_accuracy": 0.1}))
    syn.rounds[run_id][0] = {"test_loss": 2.3, "test_accuracy": 0.1}
    for rnd in range(1, num_rounds + 1):
        data_part = (props @ label_dirs) * (1 + 0.1 * rnd) + 0.6 * rng.normal(size=(len(n), d))
        data_part += 2.0 * math.exp(-rnd / 3) * weights_dir
        # Decoupled decay shrinks every client's weights along the same direction; coupled
        # decay is rescaled per client and per weight (by its own √v̂), so it points its own way.
        scale = 1.0 if mode == "decoupled" else rng.uniform(0.1, 2.0, size=(len(n), d))
        decay_part = -0.8 * scale * np.ones((len(n), 1)) * weights_dir
        upd = data_part + decay_part
        whole, per_layer = analyze(upd, n, segments)
        values: dict[str, float | int | None] = dict(whole.stats)
        acc = 0.1 + acc_gain * (1 - math.exp(-rnd / 3)) + 0.02 * rng.normal()
        values |= {
            "test_accuracy": acc,
            "test_loss": loss_scale * (2.0 * math.exp(-rnd / 5) + 0.3) + 0.03 * rng.normal(),
            "train_loss": loss_scale * (1.9 * math.exp(-rnd / 4) + 0.2) + 0.03 * rng.normal(),
            "num_clients": len(n),
            "num_rejected": 0,
            "seconds": 0.5,
        }
        neg_w = -weights_dir / np.linalg.norm(weights_dir)
        decay_cos = decay_part @ neg_w / np.linalg.norm(decay_part, axis=1)
        # Per client, quantiles of |decay step| / (ηλ|w|): exactly 1 for decoupled decay.
        shrink = (
            np.ones((len(n), 3))
            if mode == "decoupled"
            else np.quantile(scale, [0.05, 0.5, 0.95], axis=1).T
        )
        if parts:
            data_stats, _ = analyze(data_part, n)
            decay_stats, _ = analyze(decay_part, n)
            values |= {f"data_{k}": v for k, v in data_stats.stats.items()}
            values |= {f"decay_{k}": v for k, v in decay_stats.stats.items()}
            values["decay_cosine_to_neg_weights"] = float(decay_cos.mean())
            values |= {q: float(np.median(shrink[:, i])) for i, q in enumerate(SHRINK)}
        pids = list(range(len(n)))
        work = [float(w) for w in np.round(rng.uniform(0.5, 1.0, size=len(n)), 2)]
        rec = RoundRecord(
            run_id,
            rnd,
            values,
            clients=[
                {
                    "partition_id": p,
                    "num_examples": int(n[p]),
                    "train_loss": 1.0 + 0.01 * p,
                    "local_steps": 2 * math.ceil(int(n[p]) / 32),
                    "update_norm": float(whole.norms[p]),
                    "cosine_to_aggregate": float(whole.cosine_to_aggregate[p]),
                    "batch_size": 32,
                    "work_fraction": work[p],
                }
                | (
                    {
                        "decay_norm": float(np.linalg.norm(decay_part[p])),
                        "decay_cosine_to_neg_weights": float(decay_cos[p]),
                    }
                    | {q: float(shrink[p, i]) for i, q in enumerate(SHRINK)}
                    if parts
                    else {}
                )
                for p in pids
            ],
            layers={name: div.stats for name, div in per_layer.items()},
            pairs=[(i, j, float(whole.cosine[i, j])) for i in pids for j in pids if i < j],
        )
        store.write_round(rec)
        syn.rounds[run_id][rnd] = {k: float(v) for k, v in values.items() if v is not None}
        syn.layers[run_id][rnd] = {name: dict(div.stats) for name, div in per_layer.items()}
        syn.updates[(run_id, rnd)] = upd


def decode(value: Any) -> np.ndarray:
    """A Plotly array as numpy: plain lists, or Plotly's base64 typed arrays (`bdata`)."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            arr = arr.reshape([int(s) for s in str(value["shape"]).split(",")])
        return arr
    return np.asarray(value, dtype=object if value and isinstance(value[0], str) else float)


def spec(fig: go.Figure) -> dict[str, Any]:
    """The JSON a browser receives for `fig` (typed arrays and all)."""
    return dict(json.loads(fig.to_json()))


def traces(fig: go.Figure, **match: Any) -> list[dict[str, Any]]:
    """The traces of `fig` whose keys equal `match`."""
    return [t for t in spec(fig)["data"] if all(t.get(k) == v for k, v in match.items())]


def numpy_cosines(upd: np.ndarray) -> np.ndarray:
    """Pairwise cosines in float64 numpy, the reference for the stored matrix."""
    u = upd / np.linalg.norm(upd, axis=1, keepdims=True)
    return np.asarray(u @ u.T)


def no_labels(_: str) -> ClientLabels:
    return ClientLabels(None, "label histograms unavailable (test); partition order")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return write_synthetic_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def store(synthetic: Synthetic) -> Stores:
    return Stores([synthetic.path.parent])


def labels_of(syn: Synthetic) -> Any:
    by_config = {json.dumps(c, sort_keys=True): syn.histograms[r] for r, c in syn.configs.items()}
    return lambda text: ClientLabels(by_config[json.dumps(json.loads(text), sort_keys=True)])


# -- statistics helpers ---------------------------------------------------------------------
def test_band_stats_ci_matches_closed_form_t_quantiles() -> None:
    # Student t with 2 degrees of freedom has a closed-form quantile; two seeds fall back to
    # their min-max (a t-interval of two values is +-12.7 SDs), one seed has no band.
    p = 0.975
    t2 = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    df = pd.DataFrame({"g": ["a", "a", "b", "b", "b", "c"], "v": [1.0, 2.0, 0.5, 1.5, 4.0, 7.0]})
    out = figures.band_stats(df, ["g"], "v", band="ci").set_index("g")
    x = np.asarray([0.5, 1.5, 4.0])
    half = t2 * x.std(ddof=1) / math.sqrt(len(x))
    assert out.loc["b", "mean"] == pytest.approx(x.mean())
    assert out.loc["b", "lo"] == pytest.approx(x.mean() - half, rel=1e-9)
    assert out.loc["b", "hi"] == pytest.approx(x.mean() + half, rel=1e-9)
    assert out.loc["b", "band"] == "ci"
    assert (out.loc["a", "lo"], out.loc["a", "hi"], out.loc["a", "band"]) == (1.0, 2.0, "minmax")
    assert out.loc["c", "n"] == 1 and math.isnan(out.loc["c", "lo"])  # one seed: no interval


def test_client_order_groups_by_dominant_label_then_share() -> None:
    hist = np.array(
        [
            [0, 9, 1],  # 0: label 1, share .9
            [5, 0, 5],  # 1: tie 0/2 → argmax picks label 0, share .5
            [1, 8, 1],  # 2: label 1, share .8
            [0, 1, 9],  # 3: label 2
            [7, 2, 1],
        ]
    )  # 4: label 0, share .7
    labels = ClientLabels(hist)
    assert labels.order(range(5)) == [4, 1, 0, 2, 3]
    assert labels.dominant_share(2) == pytest.approx(0.8)
    assert ClientLabels(None, "why").order([3, 1, 2]) == [1, 2, 3]


# -- store reading --------------------------------------------------------------------------
def test_runs_hold_configs_seeds_and_progress(store: Stores, synthetic: Synthetic) -> None:
    runs = store.runs()
    assert len(runs) == 6 and set(runs["seed"]) == {0, 1, 2}
    assert set(runs["rounds_done"]) == {6}
    # seeds are replicates: one condition per mode
    assert runs.groupby("mode")["condition"].nunique().to_dict() == {"coupled": 1, "decoupled": 1}
    diff = config_diff(runs)
    assert list(diff.columns) == ["coupled", "decoupled"]
    assert diff.loc["seeds", "coupled"] == "0, 1, 2"


def test_cosine_matrix_matches_numpy(store: Stores, synthetic: Synthetic) -> None:
    run = synthetic.run_ids[("coupled", 1, "0")]
    ids, mat = cosine_matrix(store.pairs(run, 3))
    assert ids == list(range(8))
    np.testing.assert_allclose(mat, numpy_cosines(synthetic.updates[(run, 3)]), atol=1e-12)


def test_missing_store_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store at"):
        Store(tmp_path / "nothing")
    assert resolve_store_path(tmp_path) == tmp_path / "results.db"


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (b"", EmptyStoreError, "no tables yet"),
        (b"SQLite format 3\x00" + b"\x00" * 40, StoreError, "half-written or damaged"),
        (b"this is not a database at all" * 200, StoreError, "not a readable SQLite"),
    ],
    ids=["zero-bytes", "torn-header", "not-sqlite"],
)
def test_empty_or_damaged_files_are_clear_errors(
    tmp_path: Path, content: bytes, error: type[Exception], message: str
) -> None:
    (tmp_path / "results.db").write_bytes(content)
    with pytest.raises(error, match=message):
        Store(tmp_path)


def test_store_without_runs_is_empty(tmp_path: Path) -> None:
    ResultStore(tmp_path / "results.db").close()
    with pytest.raises(EmptyStoreError, match="holds no run yet"):
        Store(tmp_path)


def test_older_schema_names_what_is_missing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "results.db")
    conn.execute("CREATE TABLE runs (run_id TEXT, experiment TEXT, arm TEXT, status TEXT)")
    conn.execute("CREATE TABLE rounds (run_id TEXT, round INTEGER, test_accuracy REAL)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"lacks mode, config_json .*older fedadamw"):
        Store(tmp_path)


def test_half_written_run_gives_no_figure_and_no_error(tmp_path: Path) -> None:
    with WriterLock(tmp_path), ResultStore(tmp_path / "results.db") as rs:
        rs.start_run("e:coupled:x", "e", "coupled", "coupled", 0.01, default_config().to_json())
        store = Stores([tmp_path])
        runs = store.runs()  # read while the writer lives: its run is running
    assert runs["rounds_done"].tolist() == [0] and runs["status"].tolist() == ["running"]
    assert views.divergence_figure(store, runs, "mean_pairwise_cosine") is None
    assert views.accuracy_figure(store, runs) is None
    assert views.layers_figure(store, runs, "mean_pairwise_cosine") is None
    assert views.heatmap_figure(store, runs, 0, 1, no_labels)[0] is None
    assert views.scatter_figure(store, runs, 0, 1, "local_steps", no_labels) is None


def test_new_columns_are_found_and_grouped_by_part(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, parts=True)
    groups = Store(tmp_path).statistics("rounds")
    assert groups.whole == STAT_NAMES
    assert groups.data == tuple(f"data_{s}" for s in STAT_NAMES)
    assert groups.decay == tuple(f"decay_{s}" for s in STAT_NAMES)
    assert groups.other == ("decay_cosine_to_neg_weights", *SHRINK)
    assert groups.parts_of("dispersion") == ("dispersion", "data_dispersion", "decay_dispersion")
    assert groups.parts_of("decay_dispersion") == groups.parts_of("dispersion")


def test_empty_part_columns_stay_hidden(store: Stores) -> None:
    # the columns exist (a schema-2 writer makes them) but track-decay was off: all NULL
    assert "decay_dispersion" in store.columns("rounds")
    groups = store.statistics("rounds")
    assert groups.all() == STAT_NAMES
    assert groups.parts_of("relative_drift") == ("relative_drift",)
    assert views.color_choices(store) == [
        "dominant_share",
        "local_steps",
        "work_fraction",
        "num_examples",
        "batch_size",
        "train_loss",
    ]
    assert views.shrink_figure(store, store.runs()) is None


# -- figures --------------------------------------------------------------------------------
def test_divergence_lines_and_bands_are_seed_means_and_t_intervals(
    store: Stores, synthetic: Synthetic
) -> None:
    runs = store.runs()
    fig = views.divergence_figure(store, runs, "relative_drift")
    assert fig is not None
    for mode in MODES:
        ids = [synthetic.run_ids[(mode, s, "0")] for s in (0, 1, 2)]
        ref = np.array(
            [[synthetic.rounds[r][k]["relative_drift"] for k in range(1, 7)] for r in ids]
        )
        (line,) = traces(fig, name=f"{mode} (3 seeds)")
        assert line["line"]["color"] == style.MODE_COLORS[mode]
        np.testing.assert_allclose(decode(line["y"]), ref.mean(axis=0), rtol=1e-12)
        (band,) = [t for t in traces(fig, fill="toself") if t["legendgroup"] == line["legendgroup"]]
        t2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)  # t quantile, 2 degrees of freedom
        hi = ref.mean(axis=0) + t2 * ref.std(axis=0, ddof=1) / math.sqrt(3)
        np.testing.assert_allclose(decode(band["y"])[:6], hi, rtol=1e-9)


def test_divergence_of_a_layer_reads_the_layer_rows(store: Stores, synthetic: Synthetic) -> None:
    runs = store.runs()
    run = synthetic.run_ids[("decoupled", 0, "0")]
    fig = views.divergence_figure(store, runs[runs["run_id"] == run], "dispersion", "conv2.bias")
    assert fig is not None
    (line,) = traces(fig, name="decoupled")
    ref = [synthetic.layers[run][k]["conv2.bias"]["dispersion"] for k in range(1, 7)]
    np.testing.assert_allclose(decode(line["y"]), ref, rtol=1e-12)


def test_parts_get_one_panel_each(tmp_path: Path) -> None:
    syn = write_synthetic_store(tmp_path, seeds=(0,), num_rounds=3, parts=True)
    store = Stores([tmp_path])
    fig = views.divergence_figure(store, store.runs(), "dispersion")
    assert fig is not None
    titles = [a["text"] for a in spec(fig)["layout"]["annotations"]]
    assert titles == [
        "dispersion 1 − R",
        "data part: dispersion 1 − R",
        "decay part: dispersion 1 − R",
    ]
    run = syn.run_ids[("decoupled", 0, "0")]
    (decay,) = [t for t in traces(fig, name="decoupled") if t["xaxis"] == "x3"]
    ref = [syn.rounds[run][k]["decay_dispersion"] for k in (1, 2, 3)]
    # one global λ: every decoupled client's decay part points the same way, dispersion 0
    np.testing.assert_allclose(decode(decay["y"]), ref, atol=1e-12)
    np.testing.assert_allclose(ref, 0.0, atol=1e-9)


def test_shrink_ratios_are_seed_means_of_the_quantiles(tmp_path: Path) -> None:
    syn = write_synthetic_store(tmp_path, seeds=(0, 1), num_rounds=3, parts=True)
    store = Stores([tmp_path])
    fig = views.shrink_figure(store, store.runs())
    assert fig is not None
    for mode in MODES:
        ids = [syn.run_ids[(mode, s, "0")] for s in (0, 1)]
        ref = {
            q: np.mean([[syn.rounds[r][k][q] for k in (1, 2, 3)] for r in ids], axis=0)
            for q in SHRINK
        }
        (line,) = traces(fig, name=f"{mode} (2 seeds)")
        np.testing.assert_allclose(decode(line["y"]), ref["shrink_p50"], rtol=1e-12)
        (band,) = [t for t in traces(fig, fill="toself") if t["legendgroup"] == line["legendgroup"]]
        np.testing.assert_allclose(decode(band["y"])[:3], ref["shrink_p95"], rtol=1e-12)
        np.testing.assert_allclose(decode(band["y"])[3:], ref["shrink_p5"][::-1], rtol=1e-12)
    decoupled = [syn.rounds[syn.run_ids[("decoupled", 0, "0")]][1][q] for q in SHRINK]
    assert decoupled == [1.0, 1.0, 1.0]  # uniform decay


def test_heatmap_orders_clients_by_dominant_label(store: Stores, synthetic: Synthetic) -> None:
    runs = store.runs()
    fig, notes = views.heatmap_figure(store, runs, 1, 4, labels_of(synthetic))
    assert fig is not None and notes == []
    for col, mode in enumerate(MODES, start=1):
        run = synthetic.run_ids[(mode, 1, "0")]
        hist = synthetic.histograms[run]
        dominant = hist.argmax(axis=1)
        share = hist.max(axis=1) / hist.sum(axis=1)
        order = sorted(range(len(hist)), key=lambda p: (dominant[p], -share[p], p))
        ref = numpy_cosines(synthetic.updates[(run, 4)])[np.ix_(order, order)]
        heat = [
            t for t in traces(fig, type="heatmap") if t["xaxis"] == f"x{'' if col == 1 else col}"
        ]
        np.testing.assert_allclose(decode(heat[0]["z"]), ref, atol=1e-12)
        assert list(heat[0]["x"]) == [f"{p} ({dominant[p]})" for p in order]
    assert spec(fig)["layout"]["coloraxis"]["cmin"] == -1


def test_heatmap_without_labels_says_so_and_keeps_partition_order(
    store: Stores, synthetic: Synthetic
) -> None:
    fig, notes = views.heatmap_figure(store, store.runs(), 0, 2, no_labels)
    assert fig is not None and any("partition order" in n for n in notes)
    (first, _) = traces(fig, type="heatmap")
    assert list(first["x"]) == [str(p) for p in range(8)]


def test_scatter_shows_each_clients_norm_and_cosine(store: Stores, synthetic: Synthetic) -> None:
    runs = store.runs()
    fig = views.scatter_figure(store, runs, 2, 5, "dominant_share", labels_of(synthetic))
    assert fig is not None
    run = synthetic.run_ids[("coupled", 2, "0")]
    upd = synthetic.updates[(run, 5)]
    n = synthetic.histograms[run].sum(axis=1)
    agg = (n[:, None] * upd).sum(axis=0) / n.sum()
    (pts,) = traces(fig, name="coupled")
    np.testing.assert_allclose(decode(pts["y"]), np.linalg.norm(upd, axis=1), rtol=1e-12)
    cos_agg = upd @ agg / (np.linalg.norm(upd, axis=1) * np.linalg.norm(agg))
    np.testing.assert_allclose(decode(pts["x"]), cos_agg, rtol=1e-9)
    hist = synthetic.histograms[run]
    np.testing.assert_allclose(decode(pts["marker"]["color"]), hist.max(1) / hist.sum(1))


def test_layer_bars_are_round_means_across_seeds(store: Stores, synthetic: Synthetic) -> None:
    fig = views.layers_figure(store, store.runs(), "mean_pairwise_cosine")
    assert fig is not None
    (bars,) = traces(fig, name="decoupled (3 seeds)")
    assert list(bars["y"]) == [name for name, _ in LAYERS]  # model order
    per_seed = np.array(
        [
            [
                np.mean(
                    [
                        synthetic.layers[synthetic.run_ids[("decoupled", s, "0")]][k][name][
                            "mean_pairwise_cosine"
                        ]
                        for k in range(1, 7)
                    ]
                )
                for name, _ in LAYERS
            ]
            for s in (0, 1, 2)
        ]
    )
    np.testing.assert_allclose(decode(bars["x"]), per_seed.mean(axis=0), rtol=1e-12)


def test_sweep_cells_are_seed_means_per_mode(tmp_path: Path) -> None:
    grid = [{"learning-rate": lr, "weight-decay": wd} for lr in (0.001, 0.01) for wd in (0.0, 0.1)]
    syn = write_synthetic_store(tmp_path, seeds=(0, 1), num_rounds=3, experiment="sweep", grid=grid)
    store = Stores([tmp_path])
    fig = views.sweep_figure(store, store.runs(), "learning-rate", "weight-decay", "final_accuracy")
    assert fig is not None
    heat = traces(fig, type="heatmap")
    assert [spec(fig)["layout"]["annotations"][i]["text"] for i in (0, 1)] == list(MODES)
    for col, mode in enumerate(MODES):
        z = decode(heat[col]["z"])
        for g, cell in enumerate(grid):
            ref = np.mean(
                [syn.rounds[syn.run_ids[(mode, s, str(g))]][3]["test_accuracy"] for s in (0, 1)]
            )
            row = (0.0, 0.1).index(cell["weight-decay"])
            column = (0.001, 0.01).index(cell["learning-rate"])
            assert z[row, column] == pytest.approx(100 * ref, rel=1e-12)
    disp = views.sweep_figure(store, store.runs(), "weight-decay", None, ROUND_MEAN + "dispersion")
    assert disp is not None
    (first, _) = traces(disp, type="heatmap")
    ref = np.mean(
        [
            [syn.rounds[syn.run_ids[("coupled", s, str(g))]][k]["dispersion"] for k in (1, 2, 3)]
            for s in (0, 1)
            for g in (0, 2)
        ]
    )
    assert decode(first["z"])[0, 0] == pytest.approx(ref, rel=1e-12)


def test_label_distribution_draws_the_counts(synthetic: Synthetic) -> None:
    hist = next(iter(synthetic.histograms.values()))
    fig = figures.label_distribution(ClientLabels(hist), range(len(hist)))
    bars = traces(fig, type="bar")
    assert len(bars) == hist.shape[1]
    order = ClientLabels(hist).order(range(len(hist)))
    for label, bar in enumerate(bars):
        np.testing.assert_array_equal(decode(bar["x"]), hist[order, label])


def test_modes_keep_their_colour_in_every_figure(store: Stores, synthetic: Synthetic) -> None:
    runs, labels = store.runs(), labels_of(synthetic)
    figs = [
        views.divergence_figure(store, runs, "dispersion"),
        views.accuracy_figure(store, runs),
        views.layers_figure(store, runs, "dispersion"),
        views.heatmap_figure(store, runs, 0, 2, labels)[0],
        views.scatter_figure(store, runs, 0, 2, "local_steps", labels),
    ]
    for fig in figs:
        assert fig is not None
        for trace in spec(fig)["data"]:
            name = str(trace.get("name", ""))
            mode = next((m for m in MODES if name.startswith(m)), None)
            color = (
                (trace.get("line") or {}).get("color")
                or (trace.get("marker") or {}).get("line", {}).get("color")
                or (trace.get("marker") or {}).get("color")
            )
            if mode and isinstance(color, str):
                assert color == style.MODE_COLORS[mode], (name, color)
        for ann in spec(fig)["layout"].get("annotations", []):
            if ann["text"].split(" ")[0] in MODES:
                assert ann["font"]["color"] == style.MODE_COLORS[ann["text"].split(" ")[0]]


# -- report and paper figures ---------------------------------------------------------------
def test_report_is_one_self_contained_file(
    store: Stores, synthetic: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "sub" / "report.html"
    assert report_command(synthetic.path.parent, target) == 0
    text = target.read_text(encoding="utf-8")
    assert "<script src=" not in text and "<link " not in text  # nothing fetched when opened
    titles = [
        "Update divergence over rounds",
        "Test accuracy and loss",
        "Pairwise cosine",
        "Per-client update norm",
        "Which layers diverge most",
        "Label distribution",
    ]
    assert all(f"<h4>{t}" in text for t in titles)
    assert text.count("Plotly.newPlot(") == len(titles)  # each drawn once, nothing else
    assert "plotly.js v" in text  # the library itself, inlined once
    assert "report:" in capsys.readouterr().out
    html = render_html(store, standard_sections(store, labels_of(synthetic)))
    assert "Config difference between arms" in html and "Pairwise cosine" in html


def test_report_of_missing_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_command(tmp_path, tmp_path / "r.html") == 2
    err = capsys.readouterr().err
    assert err.startswith("fedadamw: error: no results store at") and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def test_figures_are_written_as_png_and_pdf(tmp_path: Path) -> None:
    needs.kaleido()
    syn = write_synthetic_store(tmp_path / "run", seeds=(0,), num_rounds=2, num_clients=4)
    assert figures_command(syn.path.parent, tmp_path / "figs") == 0
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    stems = {
        "default-divergence",
        "default-accuracy",
        "default-cosine-heatmap",
        "default-clients",
        "default-layers",
    }
    assert {f"{s}.png" for s in stems} | {f"{s}.pdf" for s in stems} <= set(written)
    import pypdf

    pdf = pypdf.PdfReader(tmp_path / "figs" / "default-divergence.pdf")
    assert pdf.metadata is not None and pdf.metadata.title == "Update divergence over rounds"
    png = (tmp_path / "figs" / "default-divergence.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert width == 2000  # 1000 px at scale 2, for print
    assert (tmp_path / "figs" / "default-divergence.pdf").read_bytes()[:5] == b"%PDF-"
    # A second export over the first one is refused; --force (through the CLI) rewrites it.
    (tmp_path / "figs" / "default-divergence.png").write_bytes(b"edited by hand")
    assert figures_command(syn.path.parent, tmp_path / "figs") == 2
    assert (tmp_path / "figs" / "default-divergence.png").read_bytes() == b"edited by hand"
    args = ["figures", str(syn.path.parent), "--dir", str(tmp_path / "figs"), "--force"]
    assert cli.main(args) == 0
    assert (tmp_path / "figs" / "default-divergence.png").read_bytes()[:8] == png[:8]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == written


def test_figures_refuse_to_overwrite_a_file_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    syn = write_synthetic_store(tmp_path / "run", seeds=(0,), num_rounds=1, num_clients=3)
    figs = tmp_path / "figs"
    figs.mkdir()
    mine = figs / "default-accuracy.pdf"
    mine.write_bytes(b"a figure someone made by hand")
    (figs / "default-layers.png").symlink_to(tmp_path / "nowhere.png")  # dangling: still taken
    assert figures_command(syn.path.parent, figs) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"fedadamw: error: --dir {str(figs)!r}: 2 of the ") and err.count("\n") == 1
    )
    assert "pass --force" in err
    # Nothing was written, the existing file is untouched, the link still points nowhere.
    assert mine.read_bytes() == b"a figure someone made by hand"
    assert sorted(p.name for p in figs.iterdir()) == ["default-accuracy.pdf", "default-layers.png"]
    assert not (tmp_path / "nowhere.png").exists()


def test_names_that_slug_alike_still_get_one_file_each(tmp_path: Path) -> None:
    out = tmp_path / "run"
    experiments = ("a.b", "a-b", "A-B")  # all three slug to a-b (or A-B)
    for name in experiments:
        write_synthetic_store(out, seeds=(0,), num_rounds=1, num_clients=3, experiment=name)
    sections = standard_sections(Stores([out]))
    names = [item.name for s in sections for item in s.items]
    # One file per figure, also on a disk that ignores case.
    assert len({n.casefold() for n in names}) == len(names)
    per = {s.experiment: [i.name for i in s.items] for s in sections}
    assert set(per) == set(experiments)
    assert len({len(v) for v in per.values()}) == 1  # every experiment keeps all its figures
    for names_of in per.values():
        assert all(n.casefold().startswith("a-b-") for n in names_of)
    # The names are a function of the store: reading it again gives the same ones.
    assert names == [item.name for s in standard_sections(Stores([out])) for item in s.items]


def test_export_without_a_browser_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    syn = write_synthetic_store(tmp_path / "run", seeds=(0,), num_rounds=1, num_clients=3)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium-here"))
    assert figures_command(syn.path.parent, tmp_path / "figs") == 2
    err = capsys.readouterr().err
    assert err.startswith("fedadamw: error: PNG/PDF export needs Chromium") and err.count("\n") == 1


# -- honest bands ---------------------------------------------------------------------------
# Per seed, values at the edges of each statistic's range: a t-band around their mean leaves it.
EXTREMES = {
    0: {
        "test_accuracy": 0.02,
        "mean_pairwise_cosine": -0.98,
        "dispersion": 0.01,
        "relative_drift": 0.001,
        "mean_cosine_to_aggregate": 0.99,
        "train_loss": 0.01,
    },
    1: {
        "test_accuracy": 0.98,
        "mean_pairwise_cosine": 0.97,
        "dispersion": 0.99,
        "relative_drift": 50.0,
        "mean_cosine_to_aggregate": -0.95,
        "train_loss": 9.0,
    },
    2: {
        "test_accuracy": 0.5,
        "mean_pairwise_cosine": 0.0,
        "dispersion": 0.5,
        "relative_drift": 1.0,
        "mean_cosine_to_aggregate": 0.0,
        "train_loss": 1.0,
    },
}


def extreme_store(out: Path, seeds: Sequence[int] = (0, 1, 2)) -> Synthetic:
    """A store whose seeds sit at the edges of every statistic's range."""
    syn = write_synthetic_store(out, seeds=seeds, num_rounds=3, num_clients=4)
    conn = sqlite3.connect(syn.path)
    for (_, seed, _), run_id in syn.run_ids.items():
        for column, value in EXTREMES[seed].items():
            conn.execute(f"UPDATE rounds SET {column}=? WHERE run_id=?", (value, run_id))
            if column in ("mean_pairwise_cosine", "dispersion", "relative_drift"):
                conn.execute(f"UPDATE layers SET {column}=? WHERE run_id=?", (value, run_id))
    conn.commit()
    conn.close()
    return syn


def band_violations(fig: go.Figure) -> list[str]:
    """Band traces (meta names their statistic) whose values leave the statistic's range."""
    bad = []
    for trace in spec(fig)["data"]:
        meta = trace.get("meta")
        if not isinstance(meta, dict) or "band" not in meta:
            continue
        lo, hi = style.stat_range(meta["stat"])
        scale = float(meta["scale"])
        if trace["type"] == "bar":
            x = decode(trace["x"])
            err = trace["error_x"]
            up, down = decode(err["array"]), decode(err["arrayminus"])
            values = np.concatenate([x + up, x - down])
        else:
            values = decode(trace["y"])
        values = values[np.isfinite(values)] / scale
        if len(values) and (values.min() < lo - 1e-12 or values.max() > hi + 1e-12):
            bad.append(f"{trace.get('name')}: [{values.min()}, {values.max()}] not in [{lo}, {hi}]")
    return bad


@pytest.mark.parametrize("band", list(figures.BANDS))
def test_bands_never_leave_the_statistics_range(tmp_path: Path, band: str) -> None:
    syn = extreme_store(tmp_path)
    store = Stores([tmp_path])
    runs = store.runs()
    figs = [item.figure for s in standard_sections(store, labels_of(syn), band) for item in s.items]
    figs += [views.divergence_figure(store, runs, stat, band=band) for stat in STAT_NAMES]
    figs += [views.layers_figure(store, runs, s, band) for s in ("dispersion", "relative_drift")]
    checked = 0
    for fig in figs:
        assert fig is not None
        assert band_violations(fig) == []
        checked += sum(isinstance(t.meta, dict) for t in fig.data)
    assert checked > 20
    # the t-band of three seeds at the edges does leave [0, 1] before clipping: the test bites
    acc = np.array([EXTREMES[s]["test_accuracy"] for s in (0, 1, 2)])
    t2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
    assert acc.mean() + t2 * acc.std(ddof=1) / math.sqrt(3) > 1.0


def test_a_three_seed_ci_band_is_the_clipped_t_interval(tmp_path: Path) -> None:
    extreme_store(tmp_path)
    store = Stores([tmp_path])
    fig = views.accuracy_figure(store, store.runs(), "ci")
    assert fig is not None
    (band,) = [t for t in traces(fig, fill="toself") if t["name"].startswith("coupled")][:1]
    acc = np.array([EXTREMES[s]["test_accuracy"] for s in (0, 1, 2)])
    t2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
    half = t2 * acc.std(ddof=1) / math.sqrt(3)
    y = decode(band["y"])  # upper edge rounds 0..3, then the lower edge back to round 0
    np.testing.assert_allclose(y[1:4], 100 * min(1.0, acc.mean() + half))
    np.testing.assert_allclose(y[4:7], 100 * max(0.0, acc.mean() - half))
    assert band["meta"]["band"] == "ci"


def test_two_seeds_get_their_min_max_and_a_caption_that_says_so(tmp_path: Path) -> None:
    extreme_store(tmp_path, seeds=(0, 2))
    store = Stores([tmp_path])
    runs = store.runs()
    fig = views.divergence_figure(store, runs, "relative_drift", band="ci")
    assert fig is not None
    (band,) = [t for t in traces(fig, fill="toself") if t["name"].startswith("decoupled")]
    assert band["meta"]["band"] == "minmax"
    y = decode(band["y"])
    np.testing.assert_allclose(y[:3], EXTREMES[2]["relative_drift"])  # the larger seed
    np.testing.assert_allclose(y[3:], EXTREMES[0]["relative_drift"])
    assert "min–max of the 2 seeds" in figures.band_note(runs, "ci")
    assert figures.band_note(runs[runs["seed"] == 0], "ci").startswith("one seed")


def test_sd_band_is_mean_plus_minus_one_sd(tmp_path: Path) -> None:
    extreme_store(tmp_path)
    store = Stores([tmp_path])
    fig = views.divergence_figure(store, store.runs(), "relative_drift", band="sd")
    assert fig is not None
    (band,) = [t for t in traces(fig, fill="toself") if t["name"].startswith("coupled")]
    x = np.array([EXTREMES[s]["relative_drift"] for s in (0, 1, 2)])
    y = decode(band["y"])
    np.testing.assert_allclose(y[:3], x.mean() + x.std(ddof=1))
    np.testing.assert_allclose(y[3:], max(0.0, x.mean() - x.std(ddof=1)))  # drift ≥ 0


# -- layout ---------------------------------------------------------------------------------
def test_sweep_colours_are_symmetric_for_cosines_and_name_their_range(tmp_path: Path) -> None:
    grid = [{"weight-decay": wd} for wd in (0.0, 0.1)]
    write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, experiment="sweep", grid=grid)
    store = Stores([tmp_path])
    runs = store.runs()
    cos = views.sweep_figure(store, runs, "weight-decay", None, ROUND_MEAN + "mean_pairwise_cosine")
    assert cos is not None
    axis = spec(cos)["layout"]["coloraxis"]
    z = np.concatenate([decode(t["z"]).ravel() for t in traces(cos, type="heatmap")])
    assert axis["cmin"] == -axis["cmax"] == pytest.approx(-np.abs(z).max())
    disp = views.sweep_figure(store, runs, "weight-decay", None, ROUND_MEAN + "dispersion")
    assert disp is not None
    axis = spec(disp)["layout"]["coloraxis"]
    z = np.concatenate([decode(t["z"]).ravel() for t in traces(disp, type="heatmap")])
    assert (axis["cmin"], axis["cmax"]) == (z.min(), z.max())
    assert f"colours span {z.min():.3g} – {z.max():.3g}" in axis["colorbar"]["title"]["text"]


def test_many_conditions_wrap_into_rows_with_titles_apart(tmp_path: Path) -> None:
    grid = [{"learning-rate": lr, "weight-decay": wd} for lr in (0.001, 0.01) for wd in (0.0, 0.1)]
    syn = write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2, grid=grid, experiment="g")
    store = Stores([tmp_path])
    runs = store.runs()
    heat, notes = views.heatmap_figure(store, runs, 0, 2, labels_of(syn))
    scatter = views.scatter_figure(store, runs, 0, 2, "local_steps", labels_of(syn))
    assert heat is not None and scatter is not None
    assert "showing the first 4 of 8 conditions" in notes
    for fig, cols in ((heat, 2), (scatter, 4)):
        layout = spec(fig)["layout"]
        titles = layout["annotations"]
        # rows of at most `cols` panels; in a row, each title sits over its own panel
        rows: dict[float, list[float]] = {}
        for ann in titles:
            rows.setdefault(round(ann["y"], 6), []).append(ann["x"])
        assert max(len(xs) for xs in rows.values()) <= cols and len(rows) == 2
        for ann in titles:
            assert all(len(line) <= 34 for line in ann["text"].split("<br>"))
        # the x axes of a row do not overlap
        domains = sorted(layout[k]["domain"] for k in layout if k.startswith("xaxis"))
        for (a0, a1), (b0, b1) in itertools.pairwise(domains):
            assert a1 <= b0 or (a0, a1) == (b0, b1)
    # the heatmaps show whole comparisons: both modes of the first two settings
    modes = [a["text"].split(" · ")[0] for a in spec(heat)["layout"]["annotations"]]
    assert modes == ["coupled", "decoupled", "coupled", "decoupled"]


def test_the_report_repeats_no_panel(tmp_path: Path) -> None:
    syn = write_synthetic_store(tmp_path, seeds=(0, 1), num_rounds=2, parts=True)
    (section,) = standard_sections(Stores([tmp_path]), labels_of(syn))
    panels = [
        (a["text"], item.figure.layout.yaxis.title.text)
        for item in section.items
        if item.name.endswith(("divergence", "mean_pairwise_cosine", "dispersion"))
        for a in spec(item.figure)["layout"].get("annotations", [])
    ]
    assert len(panels) == len(set(panels)) and len(panels) >= 6
    names = [i.name for i in section.items]
    assert "default-parts-mean_pairwise_cosine" in names


def test_pdf_title_update_is_read_by_pypdf() -> None:
    import io

    import pypdf

    from fedadamw.viz.export import pdf_with_title

    # a minimal classic-xref PDF like Chromium's (Info object 1, catalog 2, one empty page 3)
    objects = [
        "<</Title (Kaleido-fier)>>",
        "<</Type /Catalog /Pages 3 0 R>>",
        "<</Type /Pages /Kids [4 0 R] /Count 1>>",
        "<</Type /Page /Parent 3 0 R /MediaBox [0 0 10 10]>>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<</Size {len(objects) + 1}\n/Root 2 0 R\n/Info 1 0 R>>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    titled = pdf_with_title(out, "Pairwise cosine · λ = 0.1 · Δ")
    assert titled.startswith(out)  # an incremental update: the original bytes stay
    reader = pypdf.PdfReader(io.BytesIO(titled), strict=True)
    assert reader.metadata is not None and reader.metadata.title == "Pairwise cosine · λ = 0.1 · Δ"
    assert len(reader.pages) == 1


# -- tables ---------------------------------------------------------------------------------
def test_runs_table_shows_swept_keys_status_and_no_final_before_round_one(tmp_path: Path) -> None:
    grid = [{"weight-decay": wd} for wd in (0.0, 0.1)]
    syn = write_synthetic_store(tmp_path, seeds=(0, 1), num_rounds=2, grid=grid)
    with ResultStore(tmp_path / "results.db") as rs:
        first = syn.configs[syn.run_ids[("decoupled", 0, "0")]]
        cfg = Config.from_mapping(first).replace(seed=5)
        rs.start_run(
            "default:decoupled:new", "default", "decoupled", "decoupled", 0.01, cfg.to_json()
        )
        rs.write_round(RoundRecord("default:decoupled:new", 0, {"test_accuracy": 0.1}))
    store = Stores([tmp_path])
    runs = store.runs()
    table = views.runs_table(runs, store.rounds())
    assert list(table.columns[:4]) == ["arm", "weight-decay", "seed", "status"]
    assert set(table["weight-decay"]) == {"0", "0.1"}
    new = table[table["run id"] == "default:decoupled:new"].iloc[0]
    assert new["status"] == "interrupted"  # marked running, but no live writer holds the folder
    assert math.isnan(new["final test acc (%)"])  # round 0 is the initial model, not a result
    done = table[table["run id"] != "default:decoupled:new"]
    assert done["final test acc (%)"].notna().all()


def test_rejections_table_names_round_client_and_reason(tmp_path: Path) -> None:
    syn = write_synthetic_store(tmp_path, seeds=(0,), num_rounds=2)
    run = syn.run_ids[("coupled", 0, "0")]
    conn = sqlite3.connect(syn.path)
    conn.execute("INSERT INTO rejections VALUES (?, 2, 5, '123', 'dropped (dropout-rate)')", (run,))
    conn.commit()
    conn.close()
    store = Stores([tmp_path])
    table = views.rejections_table(store, store.runs())
    assert table.to_dict("records") == [
        {
            "run": "coupled · seed 0",
            "round": 2,
            "client": 5,
            "node": "123",
            "reason": "dropped (dropout-rate)",
        }
    ]


# -- several stores -------------------------------------------------------------------------
def test_two_stores_overlay_grouped_by_setting(tmp_path: Path) -> None:
    a = write_synthetic_store(tmp_path / "a" / "run", seeds=(0, 1), num_rounds=2, num_clients=4)
    b = write_synthetic_store(tmp_path / "b" / "run", seeds=(2,), num_rounds=2, num_clients=4)
    store = Stores([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert store.tags == ["a/run", "b/run"]
    runs = store.runs()
    assert len(runs) == 6 and runs["run_id"].is_unique
    # the same setting in both folders is one condition per mode, the seeds its replicates
    assert runs.groupby("mode")["condition"].nunique().to_dict() == {"coupled": 1, "decoupled": 1}
    fig = views.divergence_figure(store, runs, "dispersion")
    assert fig is not None
    (line,) = traces(fig, name="coupled (3 seeds)")
    ref = np.mean(
        [
            [syn.rounds[syn.run_ids[("coupled", s, "0")]][k]["dispersion"] for k in (1, 2)]
            for syn, s in ((a, 0), (a, 1), (b, 2))
        ],
        axis=0,
    )
    np.testing.assert_allclose(decode(line["y"]), ref, rtol=1e-12)
    table = views.runs_table(runs, store.rounds())
    assert list(table["store"]) == ["a/run"] * 4 + ["b/run"] * 2
    # a run id two folders share stays two runs
    pairs = store.pairs(runs["run_id"].iloc[-1], 1)
    assert len(pairs) == 6


def test_stores_that_cannot_be_shown_become_warnings(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path / "ok", seeds=(0,), num_rounds=1, num_clients=3)
    store = Stores([tmp_path / "ok", tmp_path / "missing"])
    assert len(store.runs()) == 2
    assert any("no results store at" in w for w in store.warnings)
    with pytest.raises(StoreError, match="no results store at"):
        Stores([tmp_path / "missing"])
