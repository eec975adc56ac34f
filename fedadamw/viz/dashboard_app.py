"""The update-divergence dashboard (a Streamlit app over one results store).

Started by `fedadamw dashboard OUT` (`fedadamw.viz.serve`), which runs `streamlit run` on this
file with the store in the ``FEDADAMW_STORE`` environment variable. Every figure comes from
`fedadamw.viz.views`, so the page shows exactly what the HTML report and the paper figures show.
The data-driven part of the page is one fragment that re-reads the store every few seconds while
auto-refresh is on, so a running experiment fills the page round by round. A store that is
missing, empty, half-written or from an older schema gives a one-line message in the page, never
a traceback.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from fedadamw.results.reader import (
    ROUND_MEAN,
    EmptyStoreError,
    Store,
    StoreError,
    config_diff,
    setting_labels,
    shared_config,
    varying_keys,
)
from fedadamw.schema import RUNNING
from fedadamw.viz import views
from fedadamw.viz.labels import ClientLabels, stored_labels
from fedadamw.viz.serve import STORE_ENV
from fedadamw.viz.style import stat_label

ALL_SETTINGS = "__all__"
REFRESH_CHOICES = (2, 5, 10, 30, 60)
PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


@st.cache_data(max_entries=64, show_spinner="Reading the clients' label counts…")
def _labels_at(path: str, config_json: str) -> ClientLabels:
    # Stored with the run; an older store's split is rebuilt (seconds), so keep the answer.
    return stored_labels(Store(path))(config_json)


def _labels(store: Store) -> Callable[[str], ClientLabels]:
    return functools.partial(_labels_at, str(store.path))


@contextmanager
def _guard(view: str) -> Iterator[None]:
    """One view that cannot be drawn says so in one line; the rest of the page stays."""
    try:
        yield
    except StoreError as exc:
        st.error(str(exc))
    except Exception as exc:  # the page must never show a traceback
        st.error(f"{view} could not be drawn: {type(exc).__name__}: {exc}")


def _chart(fig: go.Figure | None, key: str, empty: str) -> None:
    if fig is None:
        st.info(empty)
    else:
        # theme=None: the house style of fedadamw.viz.style, as in the report and paper figures.
        st.plotly_chart(fig, theme=None, config=PLOT_CONFIG, key=key)


def _runs_table(runs: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    last = rounds.sort_values("round").groupby("run_id").tail(1).set_index("run_id")
    trained = (
        rounds[rounds["round"] >= 1].dropna(subset=["mean_pairwise_cosine"])
        if "mean_pairwise_cosine" in rounds
        else rounds.iloc[0:0]
    )
    final_cos = trained.sort_values("round").groupby("run_id").tail(1).set_index("run_id")
    return pd.DataFrame(
        {
            "arm": runs["mode"].to_numpy(),
            "seed": runs["seed"].to_numpy(),
            "status": runs["status"].to_numpy(),
            "rounds": [
                f"{d}/{p}" if p else str(d)
                for d, p in zip(runs["rounds_done"], runs["planned_rounds"], strict=True)
            ],
            "final test acc (%)": [
                100 * last["test_accuracy"].get(r, float("nan"))
                if "test_accuracy" in last
                else float("nan")
                for r in runs["run_id"]
            ],
            "final mean pairwise cos": [
                final_cos["mean_pairwise_cosine"].get(r, float("nan"))
                if len(final_cos)
                else float("nan")
                for r in runs["run_id"]
            ],
            "run id": runs["run_id"].to_numpy(),
        }
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _header(store: Store, runs: pd.DataFrame) -> None:
    running = int((runs["status"] == RUNNING).sum())
    experiments = runs["experiment"].nunique()
    # The store's path is in the sidebar; the caption says what is in it and how fresh it is.
    st.caption(
        "Coupled (Adam + L2) vs decoupled (AdamW) weight decay across non-IID clients · "
        f"{_count(len(runs), 'run')} in {_count(experiments, 'experiment')}"
        + (f" · **{running} running**" if running else "")
        + f" · read at {time.strftime('%H:%M:%S')}"
    )
    for warning in store.warnings:
        st.warning(warning)


def _controls(store: Store, runs: pd.DataFrame) -> dict[str, Any]:
    """The selectors every view shares, in one row above the figures."""
    experiments = list(dict.fromkeys(runs["experiment"]))
    c1, c2, c3, c4, c5 = st.columns([1.1, 1.5, 1.5, 1.1, 0.8])
    experiment = c1.selectbox("Experiment", experiments, key="experiment")
    in_experiment = runs[runs["experiment"] == experiment]
    # Figures compare modes at one setting (the config values a sweep varies besides the mode).
    settings = setting_labels(in_experiment)
    setting = c2.selectbox(
        "Setting",
        [*settings, ALL_SETTINGS] if len(settings) > 1 else list(settings),
        format_func=lambda k: "all settings" if k == ALL_SETTINGS else settings[k],
        disabled=len(settings) == 1,
        key="setting",
        help="the config values a sweep varies; every figure but the sweep shows one setting",
    )
    chosen = (
        in_experiment
        if setting == ALL_SETTINGS
        else in_experiment[in_experiment["setting"] == setting]
    )
    layers = store.layer_names()
    scope = c4.selectbox(
        "Scope",
        ["whole model", *layers],
        key="scope",
        help="the whole flattened update, or one parameter tensor",
    )
    layer = None if scope == "whole model" else str(scope)
    stats = store.statistics("layers" if layer else "rounds").all()
    if not stats:
        stats = store.statistics("rounds").all()
    stat = c3.selectbox(
        "Statistic",
        stats,
        format_func=stat_label,
        key="stat",
        help="every statistic of docs/design.md the store holds, with its data / "
        "decay parts where stored",
    )
    seeds = sorted(int(s) for s in chosen["seed"].unique())
    seed = c5.selectbox("Seed", seeds, key="seed", help="the replicate the per-client views show")
    return {
        "experiment": experiment,
        "all_runs": in_experiment,
        "runs": chosen,
        "layer": layer,
        "stat": stat,
        "seed": seed,
    }


def _overview(store: Store, runs: pd.DataFrame) -> None:
    st.subheader("Runs")
    left, right = st.columns([1.35, 1])
    rounds = store.rounds(list(runs["run_id"]))
    with left:
        st.dataframe(
            _runs_table(runs, rounds),
            hide_index=True,
            width="stretch",
            column_config={
                "final test acc (%)": st.column_config.NumberColumn(format="%.1f"),
                "final mean pairwise cos": st.column_config.NumberColumn(format="%.3f"),
            },
        )
    with right:
        st.markdown("**Config difference between arms**")
        st.dataframe(config_diff(runs), width="stretch")
        with st.expander("Shared config"):
            st.json(shared_config(runs), expanded=True)


def _layers(store: Store, sel: dict[str, Any]) -> None:
    st.subheader("Layers")
    stat = sel["stat"]
    st.caption(
        f"Which layers diverge most: {stat_label(stat)} per parameter tensor, "
        "mean over rounds ± 95% CI across seeds"
    )
    _chart(
        views.layers_figure(store, sel["runs"], stat),
        "layers",
        f"The store holds no per-layer {stat_label(stat)}.",
    )


def _divergence(store: Store, sel: dict[str, Any]) -> None:
    """The chosen statistic over rounds (with its data / decay parts where stored)."""
    runs, stat, layer = sel["runs"], sel["stat"], sel["layer"]
    where = f"layer `{layer}`" if layer else "whole model"
    parts = store.statistics("layers" if layer else "rounds").parts_of(stat)
    st.subheader("Divergence over rounds")
    st.caption(
        f"{stat_label(stat)} · {where} · lines: mean across seeds, bands: 95% CI"
        + (" · panels: whole update, data part, decay part" if len(parts) > 1 else "")
    )
    _chart(
        views.divergence_figure(store, runs, stat, layer),
        "divergence",
        f"No trained round with {stat_label(stat)} yet.",
    )


def _shrink(store: Store, sel: dict[str, Any]) -> None:
    fig = views.shrink_figure(store, sel["runs"])
    if fig is None:
        return  # track-decay was off: nothing to show, and nothing missing
    st.subheader("Decay shrink ratio")
    st.caption(
        "Per weight, |decay step| / (ηλ|w|): line = median weight, band = p5 to p95, means over "
        "seeds. 1 everywhere means uniform decay (AdamW); coupled decay divides λw by √v̂."
    )
    _chart(fig, "shrink", "")


def _training(store: Store, sel: dict[str, Any]) -> None:
    st.subheader("Accuracy and loss")
    st.caption(
        "Global model on the test split after each round; train loss as the clients report it"
    )
    _chart(views.accuracy_figure(store, sel["runs"]), "accuracy", "No evaluated round yet.")


def _clients(store: Store, sel: dict[str, Any]) -> None:
    runs, seed = sel["runs"], sel["seed"]
    st.subheader("Clients in one round")
    done = runs[runs["seed"] == seed]["rounds_done"]
    last = int(done.max()) if len(done) else 0
    if last < 1:
        st.info("No trained round yet for this seed.")
        return
    c1, c2, c3 = st.columns([1, 3, 1.3])
    follow = c1.toggle(
        "Follow latest round",
        value=True,
        key="follow",
        help="keep showing the newest round while a run writes",
    )
    if follow or last == 1:
        rnd = last
        c2.markdown(f"round **{rnd}** of {last}")
    else:
        rnd = int(c2.slider("Round", 1, last, last, key="round"))
    color_by = c3.selectbox(
        "Colour clients by",
        views.color_choices(store),
        format_func=stat_label,
        key="color_by",
    )
    fig, notes = views.heatmap_figure(store, runs, seed, rnd, _labels(store))
    st.caption(
        f"Pairwise cosine of client updates, round {rnd}, seed {seed}; clients ordered "
        "by dominant label, shown as client (label); where several clients share a label, "
        "lines separate the groups." + ("".join(f" {n}." for n in notes))
    )
    _chart(fig, "heatmap", "No pairwise cosines stored for this round.")
    left, right = st.columns([1.15, 1])
    with left:
        st.markdown("**Update norm vs cosine to the aggregate**")
        _chart(
            views.scatter_figure(store, runs, seed, rnd, color_by, _labels(store)),
            "scatter",
            "No per-client rows for this round.",
        )
    with right:
        st.markdown("**Label distribution per client**")
        lfig, note = views.labels_figure(runs, seed, _labels(store))
        _chart(lfig, "labels", note or "No label histogram.")


def _sweep(store: Store, sel: dict[str, Any]) -> None:
    runs = sel["all_runs"]
    st.subheader("Sweep")
    keys = [k for k in varying_keys(runs) if k != "mode"]
    if not keys:
        st.info(
            "This experiment varies no config key besides the mode. Runs of one "
            "experiment over a grid (e.g. several learning-rate × weight-decay values) "
            "fill this view."
        )
        return
    c1, c2, c3 = st.columns(3)
    x_key = c1.selectbox("x", keys, key="sweep_x")
    y_options = ["(none)", *[k for k in keys if k != x_key]]
    y_key = c2.selectbox("y", y_options, index=min(1, len(y_options) - 1), key="sweep_y")
    metrics = ["final_accuracy", *[ROUND_MEAN + s for s in store.statistics("rounds").all()]]
    metric = c3.selectbox("Value", metrics, format_func=stat_label, key="sweep_metric")
    st.caption("Mean over seeds (and over keys not on an axis); one panel per mode, one scale.")
    _chart(
        views.sweep_figure(store, runs, x_key, None if y_key == "(none)" else y_key, metric),
        "sweep",
        "No finished round to summarise yet.",
    )


def _page(path: str) -> None:
    """Everything drawn from the store; re-run alone by the auto-refresh timer."""
    if not path:
        st.info(
            f"No results store chosen: enter an OUT folder in the sidebar, or start with "
            f"`fedadamw dashboard OUT` (or set {STORE_ENV})."
        )
        return
    try:
        store = Store(path)
        runs = store.runs()
    except EmptyStoreError as exc:
        st.info(f"{exc}. The page refreshes while auto-refresh is on.")
        return
    except StoreError as exc:
        st.error(str(exc))
        return
    _header(store, runs)
    sel: dict[str, Any] | None = None
    with _guard("The selectors"):
        sel = _controls(store, runs)
    if sel is None:
        return
    with _guard("The runs overview"):
        _overview(store, sel["all_runs"])
    with _guard("The divergence view"):
        _divergence(store, sel)
    with _guard("The shrink-ratio view"):
        _shrink(store, sel)
    with _guard("The accuracy view"):
        _training(store, sel)
    with _guard("The client views"):
        _clients(store, sel)
    left, right = st.columns(2)
    with left, _guard("The layer view"):
        _layers(store, sel)
    with right, _guard("The sweep view"):
        _sweep(store, sel)


def _any_running(path: str) -> bool:
    # Store.runs() says "running" only while a writer holds the folder's lock: a crashed run
    # reads as interrupted, and the page stops refreshing for it.
    try:
        return bool((Store(path).runs()["status"] == RUNNING).any())
    except EmptyStoreError:
        return True  # waiting for a run to start writing
    except StoreError:
        return False


def main() -> None:
    """Lay out the page: sidebar settings, then the auto-refreshing body."""
    st.set_page_config(page_title="fedadamw · update divergence", layout="wide")
    st.title("Update divergence")
    with st.sidebar:
        st.header("fedadamw")
        path = st.text_input(
            "Results store",
            value=os.environ.get(STORE_ENV, ""),
            help="an OUT folder of `fedadamw run`, or its results.db",
            key="store",
        ).strip()
        auto = st.toggle(
            "Auto-refresh",
            value=_any_running(path) if path else False,
            key="auto",
            help="re-read the store while a run writes it",
        )
        every = st.select_slider(
            "Refresh every (s)", options=REFRESH_CHOICES, value=5, disabled=not auto, key="every"
        )
        with st.expander("Statistics"):
            st.markdown(
                "K clients, updates Δᵢ, uᵢ = Δᵢ/‖Δᵢ‖, weights pᵢ ∝ examples, Δ̄ = Σ pᵢΔᵢ.\n\n"
                "- **mean / min pairwise cosine**: over i < j of uᵢ·uⱼ\n"
                "- **resultant length R**: ‖(1/K) Σ uᵢ‖; **dispersion** 1 − R\n"
                "- **mean cosine to aggregate**: Σ pᵢ uᵢ·Δ̄/‖Δ̄‖\n"
                "- **relative drift**: Σ pᵢ‖Δᵢ − Δ̄‖² / ‖Δ̄‖²\n"
                "- **gradient diversity**: Σ‖Δᵢ‖² / ‖Σ Δᵢ‖²\n"
                "- **decay / data part**: the same statistic of each update's decay or data "
                "component, where the store holds them"
            )

    @st.fragment(run_every=float(every) if auto else None)
    def body() -> None:
        _page(path)

    body()


main()
