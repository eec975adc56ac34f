"""The update-divergence dashboard (a Streamlit app over one or more results stores).

Started by `fedadamw dashboard OUT [OUT …]` (`fedadamw.viz.serve`), which runs `streamlit run`
on this file with the stores in the ``FEDADAMW_STORE`` environment variable. Every figure comes
from `fedadamw.viz.views`, so the page shows exactly what the HTML report and the paper figures
show. Several stores are overlaid (`fedadamw.viz.stores.Stores`): runs are grouped by setting
whatever folder holds them.

Keeping up with a run: the data-driven part of the page is one fragment that re-reads the
stores every few seconds while a run is live (a process holds a store's writer lock). A second,
tiny fragment watches every `WATCH_S` seconds whether that changes — a store appears, a run
starts in a finished store, the last run ends — and then redraws the page, so auto-refresh
switches itself on and off. A store that is missing, empty, half-written or from an older
schema gives a one-line message in the page, never a traceback.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from fedadamw.results.reader import EmptyStoreError, StoreError, resolve_store_path
from fedadamw.results.summaries import (
    ROUND_MEAN,
    config_diff,
    setting_labels,
    shared_config,
    varying_keys,
)
from fedadamw.schema import RUNNING
from fedadamw.viz import figures, views
from fedadamw.viz.figures import BANDS, band_note
from fedadamw.viz.labels import ClientLabels, stored_labels
from fedadamw.viz.serve import STORE_ENV, stores_from_env
from fedadamw.viz.stores import Stores, is_live, store_state
from fedadamw.viz.style import stat_label

ALL_SETTINGS = "__all__"
ALL_EXPERIMENTS = "__all_experiments__"
REFRESH_CHOICES = (2, 5, 10, 30, 60)
WATCH_S = 2.0  # how often the page checks whether a run started, ended or a store appeared
PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


@st.cache_data(max_entries=64, show_spinner="Reading the clients' label counts…")
def _labels_at(paths: tuple[str, ...], config_json: str) -> ClientLabels:
    # Stored with the run; an older store's split is rebuilt (seconds), so keep the answer.
    return stored_labels(Stores(paths))(config_json)


def _labels(store: Stores) -> Callable[[str], ClientLabels]:
    return functools.partial(_labels_at, tuple(str(p) for p in store.paths))


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# -- the page -------------------------------------------------------------------------------
def _header(store: Stores, runs: pd.DataFrame, live: str | None, refresh: str) -> None:
    running = int((runs["status"] == RUNNING).sum())
    experiments = runs["experiment"].nunique()
    where = f" in {_count(len(store.paths), 'store')}" if len(store.paths) > 1 else ""
    st.caption(
        "Coupled (Adam + L2) vs decoupled (AdamW) weight decay across non-IID clients · "
        f"{_count(len(runs), 'run')} in {_count(experiments, 'experiment')}{where}"
        + ("" if running or live else " · no run is live")
        + f" · read at {time.strftime('%H:%M:%S')} · {refresh}"
    )
    if live:
        st.markdown(live)
    for warning in store.warnings:
        st.warning(warning)


def _controls(store: Stores, runs: pd.DataFrame) -> dict[str, Any]:
    """The selectors every view shares, in one row above the figures."""
    experiments = list(dict.fromkeys(runs["experiment"]))
    c1, c2, c3, c4, c5 = st.columns([1.1, 1.5, 1.5, 1.1, 0.8])
    experiment = c1.selectbox(
        "Experiment",
        [*experiments, ALL_EXPERIMENTS] if len(experiments) > 1 else experiments,
        format_func=lambda e: "all experiments" if e == ALL_EXPERIMENTS else str(e),
        key="experiment",
    )
    in_experiment = (
        runs if experiment == ALL_EXPERIMENTS else runs[runs["experiment"] == experiment]
    )
    # Figures compare modes at one setting (the config values a sweep varies besides the mode).
    settings = setting_labels(in_experiment)
    setting = c2.selectbox(
        "Setting",
        [*settings, ALL_SETTINGS] if len(settings) > 1 else list(settings),
        index=informative_setting(in_experiment, list(settings)),
        format_func=lambda k: "all settings" if k == ALL_SETTINGS else settings[k],
        disabled=len(settings) == 1,
        key="setting",
        help="the config values a sweep varies; every figure but the sweep shows one setting",
    )
    chosen = (
        in_experiment
        if setting == ALL_SETTINGS or setting not in settings
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


def _overview(store: Stores, runs: pd.DataFrame) -> None:
    st.subheader("Runs")
    rounds = store.rounds(list(runs["run_id"]))
    swept = [k for k in varying_keys(runs) if k != "mode"]
    st.caption(
        "One row per run: "
        + (f"the swept keys ({', '.join(swept)}), " if swept else "")
        + "seed, status and progress; final values are from the last trained round"
    )
    st.dataframe(
        views.runs_table(runs, rounds),
        hide_index=True,
        width="stretch",
        column_config={
            "arm": st.column_config.TextColumn(width="medium", pinned=True),
            "status": st.column_config.TextColumn(width="medium"),
            "final test acc (%)": st.column_config.NumberColumn(format="%.1f"),
            "final mean pairwise cos": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    left, right = st.columns([1.35, 1])
    with left:
        st.markdown("**Config difference between arms**")
        # One row per condition: its whole label stays readable however many there are.
        diff = config_diff(runs).T.rename_axis("condition").reset_index()
        st.dataframe(
            diff,
            hide_index=True,
            width="stretch",
            column_config={"condition": st.column_config.TextColumn(width="medium")},
        )
    with right, st.expander("Shared config"):
        st.json(shared_config(runs), expanded=True)


def _layers(store: Stores, sel: dict[str, Any]) -> None:
    st.subheader("Layers")
    stat = sel["stat"]
    st.caption(
        f"Which layers diverge most: {stat_label(stat)} per parameter tensor, mean over rounds; "
        f"{band_note(sel['runs'], sel['band']).replace('bands:', 'error bars:')}"
    )
    _chart(
        views.layers_figure(store, sel["runs"], stat, sel["band"]),
        "layers",
        f"The store holds no per-layer {stat_label(stat)}.",
    )


def _divergence(store: Stores, sel: dict[str, Any]) -> None:
    """The chosen statistic over rounds (with its data / decay parts where stored)."""
    runs, stat, layer = sel["runs"], sel["stat"], sel["layer"]
    where = f"layer `{layer}`" if layer else "whole model"
    parts = store.statistics("layers" if layer else "rounds").parts_of(stat)
    st.subheader("Divergence over rounds")
    st.caption(
        f"{stat_label(stat)} · {where} · lines: mean across seeds · {band_note(runs, sel['band'])}"
        + (" · panels: whole update, data part, decay part" if len(parts) > 1 else "")
        + (
            " · λ = 0 here: there is no decay, so the decay-part panel stays empty"
            if len(parts) > 1 and _no_decay(runs)
            else ""
        )
    )
    _chart(
        views.divergence_figure(store, runs, stat, layer, band=sel["band"]),
        "divergence",
        f"No trained round with {stat_label(stat)} yet.",
    )


def informative_setting(runs: pd.DataFrame, settings: Sequence[str]) -> int:
    """Where the setting selector opens: the setting that tells the modes apart best.

    λ = 0 is left for last (coupled and decoupled decay are then the same optimizer, and their
    lines lie on top of each other); among the rest, the one with the most trained rounds
    over its runs, then the largest λ.
    """
    if len(settings) < 2 or "setting" not in runs:
        return 0
    decay = pd.to_numeric(runs.get("weight_decay", pd.Series(0.0, index=runs.index)))
    done = pd.to_numeric(runs.get("rounds_done", pd.Series(0, index=runs.index))).fillna(0)
    frame = pd.DataFrame({"setting": runs["setting"], "decay": decay, "done": done})
    per = frame.groupby("setting").agg(decay=("decay", "min"), done=("done", "sum"))

    def rank(i: int) -> tuple[bool, float, float, int]:
        if settings[i] not in per.index:
            return (True, 0.0, 0.0, i)
        decay, done = float(per.at[settings[i], "decay"]), float(per.at[settings[i], "done"])
        return (not decay > 0, -done, -decay, i)

    return min(range(len(settings)), key=rank)


def _no_decay(runs: pd.DataFrame) -> bool:
    """Whether every run of a selection has λ = 0 (no decay: decay views have nothing)."""
    decay = pd.to_numeric(runs.get("weight_decay", pd.Series(dtype=float)))
    return bool(len(decay)) and bool((decay == 0).all())


def _shrink(store: Stores, sel: dict[str, Any]) -> None:
    fig = views.shrink_figure(store, sel["runs"])
    if fig is None:
        return  # track-decay was off: nothing to show, and nothing missing
    st.subheader("Decay shrink ratio")
    if _no_decay(sel["runs"]):
        st.info(
            "λ = 0 in this setting: no weight decay, so there is no decay step to measure "
            "and this panel stays empty. Choose a setting with λ > 0 above."
        )
        return
    st.caption(
        "Per weight, |decay step| / (ηλ|w|): line = median weight, band = p5 to p95, means over "
        "seeds. 1 everywhere means uniform decay (AdamW); coupled decay divides λw by √v̂."
    )
    _chart(fig, "shrink", "")


def _training(store: Stores, sel: dict[str, Any]) -> None:
    st.subheader("Accuracy and loss")
    st.caption(
        "Global model on the test split after each round; train loss as the clients report it; "
        + band_note(sel["runs"], sel["band"])
    )
    _chart(
        views.accuracy_figure(store, sel["runs"], sel["band"]),
        "accuracy",
        "No evaluated round yet.",
    )


def _clients(store: Stores, sel: dict[str, Any]) -> None:
    runs, seed = sel["runs"], sel["seed"]
    st.subheader("Clients in one round")
    done = runs[runs["seed"] == seed]["rounds_done"]
    last = int(done.max()) if len(done) else 0
    if last < 1:
        st.info("No trained round yet for this seed.")
        return
    c1, c2, c3 = st.columns([1.5, 2.5, 1.3])
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
    choices = views.color_choices(store)
    color_by = str(
        c3.selectbox("Colour clients by", choices, format_func=stat_label, key="color_by")
    )
    fig, notes = views.heatmap_figure(store, runs, seed, rnd, _labels(store))
    st.caption(
        f"Pairwise cosine of client updates, round {rnd}, seed {seed}; clients ordered "
        "by dominant label, shown as client (label); where several clients share a label, "
        "lines separate the groups." + ("".join(f" {n}." for n in notes))
    )
    _chart(fig, "heatmap", "No pairwise cosines stored for this round.")
    scatter = views.scatter_figure(store, runs, seed, rnd, color_by, _labels(store))
    # Two conditions share a row with the label chart; more get the page's width.
    wide = runs["condition"].nunique() > 2
    left, right = (st.container(), st.container()) if wide else st.columns([1.15, 1])
    with left:
        st.markdown("**Update norm vs cosine to the aggregate**")
        _chart(scatter, "scatter", "No per-client rows for this round.")
    with right:
        st.markdown("**Label distribution per client**")
        lfig, note = views.labels_figure(runs, seed, _labels(store))
        _chart(lfig, "labels", note or "No label histogram.")


def _trajectories(store: Stores, sel: dict[str, Any]) -> None:
    runs, seed = sel["runs"], sel["seed"]
    st.subheader("Clients over rounds")
    chosen = views.seed_runs(runs, seed)
    rows = store.clients(list(chosen["run_id"]))
    ids = sorted({int(p) for p in rows["partition_id"]}) if len(rows) else []
    if not ids:
        st.info("No per-client rows yet for this seed.")
        return
    picked = st.multiselect(
        "Clients",
        ids,
        default=ids if len(ids) <= 12 else ids[:8],
        # Keyed by the clients on offer: another federation starts from its own default.
        key=f"clients-{len(ids)}-{ids[0]}-{ids[-1]}",
        help="the clients whose trajectories are drawn",
    )
    shown = runs["condition"].nunique()
    st.caption(
        f"Each client's update norm, cosine to the aggregate and local train loss per round, "
        f"seed {seed}; one row per condition, one colour per client"
        + (f"; showing the first 4 of {shown} conditions." if shown > 4 else ".")
    )
    _chart(
        views.trajectories_figure(store, runs, seed, picked) if picked else None,
        "trajectories",
        "Pick at least one client.",
    )


def _rejections(store: Stores, sel: dict[str, Any]) -> None:
    st.subheader("Dropped and rejected clients")
    table = views.rejections_table(store, sel["runs"])
    if table.empty:
        st.info("No client reply was dropped or rejected in these runs.")
        return
    st.caption(
        f"{_count(len(table), 'reply')} not aggregated: seeded dropouts, and replies that failed "
        "the checks (non-finite values, wrong shapes, a dead client); the full text is in "
        "failures.log next to the store."
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={"reason": st.column_config.TextColumn(width="large")},
    )


def _sweep(store: Stores, sel: dict[str, Any]) -> None:
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


def _probes(store: Stores, sel: dict[str, Any]) -> None:
    """`fedadamw probe`'s statistics against λ at the chosen setting, or how to get them."""
    st.subheader("Probes: one round re-run from a checkpoint")
    stats = views.probe_stats(store)
    if not stats:
        st.info(views.NO_PROBES + ".")
        return
    runs = sel["runs"]
    probes = views.probed_runs(store, runs)
    if probes.empty:
        st.info(
            "No run of this setting was probed; choose another setting above, or run "
            "`fedadamw probe DIR` on its checkpoints."
        )
        return
    c1, _ = st.columns([1.5, 3])
    stat = str(c1.selectbox("Probe statistic", stats, format_func=stat_label, key="probe_stat"))
    rounds = ", ".join(str(int(r)) for r in sorted(probes["round"].unique()))
    st.caption(
        f"{stat_label(stat)} against λ: the same global model (after round {rounds}), the same "
        "clients and batches, only the optimizer, η and λ varied; one line per mode (colour) "
        "and checkpoint round (dash), one row of panels per probed arm, one column per η; "
        f"lines: mean over the probed runs · {figures.probe_band_note(probes, sel['band'])}; "
        "λ = 0 at its own tick '0'."
    )
    _chart(
        views.probe_figure(store, runs, stat, sel["band"]),
        "probe",
        f"The probes of this setting hold no {stat_label(stat)}.",
    )


def _page(paths: Sequence[str], band: str, refresh: str) -> None:
    """Everything drawn from the stores; re-run alone by the auto-refresh timer."""
    if not paths:
        st.info(
            f"No results store chosen: enter an OUT folder in the sidebar, or start with "
            f"`fedadamw dashboard OUT` (or set {STORE_ENV})."
        )
        return
    if not any(resolve_store_path(p).is_file() for p in paths):
        shown = ", ".join(str(resolve_store_path(p)) for p in paths)
        st.info(
            f"no results store at {shown} yet: the page shows the run as soon as it creates "
            f"its store ({refresh})."
        )
        return
    try:
        store = Stores(paths)
        runs = store.runs()
    except EmptyStoreError as exc:
        st.info(f"{exc}. The page shows the run as soon as it writes ({refresh}).")
        return
    except StoreError as exc:
        st.error(str(exc))
        return
    live = views.live_status(runs, store.rounds(list(runs[runs["status"] == RUNNING]["run_id"])))
    _header(store, runs, live, refresh)
    sel: dict[str, Any] | None = None
    with _guard("The selectors"):
        sel = _controls(store, runs)
    if sel is None:
        return
    sel["band"] = band
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
    with _guard("The client trajectories"):
        _trajectories(store, sel)
    with _guard("The rejections view"):
        _rejections(store, sel)
    # Full width each: half a page cuts a sweep's legend entries and axis titles.
    with _guard("The layer view"):
        _layers(store, sel)
    with _guard("The sweep view"):
        _sweep(store, sel)
    with _guard("The probe view"):
        _probes(store, sel)


def _sidebar() -> tuple[list[str], bool, int, str]:
    """The stores, auto-refresh and band settings."""
    st.header("fedadamw")
    given = stores_from_env(st.session_state.get("env_stores", "")) or []
    text = st.text_area(
        "Results stores",
        value="\n".join(given),
        help="OUT folders of `fedadamw run` (or their results.db), one per line; "
        "several are overlaid, runs grouped by setting",
        key="store",
    )
    paths = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(paths) > 1:
        paths = st.multiselect(
            "Stores shown",
            paths,
            default=paths,
            key=f"shown-{hash(tuple(paths))}",
            help="overlay these stores; runs are grouped by setting across them",
        )
    auto = st.toggle(
        "Auto-refresh",
        value=True,
        key="auto",
        help="re-read the stores while a run writes one, and notice when a run starts or ends",
    )
    every = st.select_slider(
        "Refresh every (s)", options=REFRESH_CHOICES, value=5, disabled=not auto, key="every"
    )
    band = st.radio(
        "Bands",
        list(BANDS),
        format_func=lambda k: {
            "ci": "95% CI (t; min–max below 3 seeds)",
            "sd": "± 1 SD",
            "minmax": "min–max",
        }[k],
        key="band",
        help="what the band around a mean over seeds shows; always clipped to the "
        "statistic's range",
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
    return paths, bool(auto), int(every), str(band)


def main() -> None:
    """Lay out the page: sidebar settings, the auto-refreshing body and its watcher."""
    import os

    st.set_page_config(page_title="fedadamw · update divergence", layout="wide")
    st.session_state.setdefault("env_stores", os.environ.get(STORE_ENV, ""))
    st.title("Update divergence")
    with st.sidebar:
        paths, auto, every, band = _sidebar()
    drawn = store_state(paths)
    live = is_live(drawn)
    refresh = (
        f"auto-refresh every {every} s while a run is live"
        if auto and live
        else "auto-refresh when a run starts"
        if auto
        else "auto-refresh off"
    )

    @st.fragment(run_every=WATCH_S if auto else None)
    def watch() -> None:
        # A store appeared, a run started or the last one ended: redraw the whole page, which
        # switches the body's refresh timer on or off.
        if store_state(paths) != drawn:
            st.rerun()

    @st.fragment(run_every=float(every) if auto and live else None)
    def body() -> None:
        _page(paths, band, refresh)

    watch()
    body()


main()
