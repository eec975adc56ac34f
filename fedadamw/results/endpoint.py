"""The primary endpoint an experiment declares before it runs: its `[endpoint]` table.

An experiment file may name the one statistic its comparisons test, the rounds it is read over
and the comparisons tested together (the Holm family)::

    [endpoint]
    primary = "mean_pairwise_cosine"              # the default
    secondary = ["dispersion", "test_accuracy"]   # reported, Holm-adjusted in their own family
    window = "last-20%"                           # or "last-N", "all", "matched-loss:0.35"
    family = ["coupled-decoupled", "decoupled-none", "coupled-none"]   # A − B, tuned vs tuned
    descriptive = ["decay_dispersion"]            # reported, labelled, never tested

`fedadamw run` keeps the declared endpoint in the output folder (`ENDPOINT_FILE`), so
`fedadamw compare OUT` reads it without the experiment file. A folder without one (older runs,
files without `[endpoint]`) is compared as before the endpoint existed.

The window is one window for every measure, accuracy included: the last p% or N trained rounds
of each run, all of them, or the single round at which the run's train loss first reaches a
threshold (`matched-loss:X`; a run that never reaches it is reported and left out of pairs).
Decay-part statistics are descriptive by default: under decoupled decay the decay part is
−ηλw for every client, so they agree across clients by construction and a test of them says
nothing about the clients.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedadamw.errors import ConfigError
from fedadamw.fileio import read_toml
from fedadamw.schema import DECAY_MODES

ENDPOINT_FILE = "endpoint.json"  # in the output folder, written by `fedadamw run`
# What compare can read per run (the stored round columns behind them).
ENDPOINT_MEASURES = (
    "mean_pairwise_cosine",
    "dispersion",
    "test_accuracy",
    "decay_dispersion",
    "data_dispersion",
    "decay_mean_pairwise_cosine",
    "data_mean_pairwise_cosine",
)
KEYS = ("primary", "secondary", "window", "family", "descriptive")
DEFAULT_FAMILY = ("coupled-decoupled", "decoupled-none", "coupled-none")
WINDOW_FORMS = '"last-20%", "last-N" rounds, "all" or "matched-loss:0.35"'
_WINDOW = re.compile(r"^(?:last-(\d+)(%?)|all|matched-loss:(.+))$")


@dataclass(frozen=True)
class Window:
    """The rounds a run's statistics are read over."""

    kind: str  # "percent", "last", "all" or "matched-loss"
    value: float = math.nan  # the percentage, the round count or the train-loss threshold

    @property
    def text(self) -> str:
        if self.kind == "percent":
            return f"last-{self.value:g}%"
        if self.kind == "last":
            return f"last-{self.value:g}"
        if self.kind == "matched-loss":
            return f"matched-loss:{self.value:g}"
        return "all"

    def describe(self) -> str:
        """The window in words, for the notes of a table."""
        if self.kind == "percent":
            return f"the last {self.value:g}% of each run's trained rounds (rounded up)"
        if self.kind == "last":
            return f"the last {self.value:g} trained rounds of each run"
        if self.kind == "matched-loss":
            return (
                f"the first round at which each run's train loss is ≤ {self.value:g} "
                "(runs that never reach it are left out of pairs)"
            )
        return "every trained round of each run"

    def rounds(self, trained: int) -> int:
        """How many of a run's last `trained` rounds a last-p%/last-N/all window reads."""
        if self.kind == "percent":
            return max(1, -(-trained * int(self.value) // 100))  # ceil without float error
        if self.kind == "last":
            return min(trained, int(self.value))
        return trained


def parse_window(text: Any, where: str = "[endpoint] window") -> Window:
    """A window written as `last-20%`, `last-10`, `all` or `matched-loss:0.35`; ConfigError else."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    bad = f"{where}: {text!r} is not allowed; expected {WINDOW_FORMS}"
    if match is None:
        raise ConfigError(bad)
    count, percent, loss = match.groups()
    if count is not None:
        n = int(count)
        if n < 1 or (percent and n > 100):
            raise ConfigError(bad)
        return Window("percent" if percent else "last", float(n))
    if loss is not None:
        try:
            threshold = float(loss)
        except ValueError:
            raise ConfigError(bad) from None
        if not math.isfinite(threshold) or threshold <= 0:
            raise ConfigError(bad)
        return Window("matched-loss", threshold)
    return Window("all")


def parse_comparison(text: Any, where: str) -> tuple[str, str]:
    """A comparison written `A-B` of two different decay modes; ConfigError else."""
    modes = ", ".join(DECAY_MODES)
    parts = text.split("-") if isinstance(text, str) else []
    # Modes may hold a dash themselves (server-decay): split where both sides are modes.
    for i in range(1, len(parts)):
        a, b = "-".join(parts[:i]), "-".join(parts[i:])
        if a in DECAY_MODES and b in DECAY_MODES and a != b:
            return a, b
    raise ConfigError(
        f"{where}: {text!r} is not allowed; expected A-B of two different modes ({modes}), "
        "e.g. 'coupled-none'"
    )


@dataclass(frozen=True)
class Endpoint:
    """A declared endpoint: the tested statistic, its window, family and descriptive rows."""

    primary: str = "mean_pairwise_cosine"
    secondary: tuple[str, ...] = ("dispersion", "test_accuracy")
    window: Window = Window("percent", 20.0)
    family: tuple[tuple[str, str], ...] = tuple(
        parse_comparison(c, "family") for c in DEFAULT_FAMILY
    )
    descriptive: tuple[str, ...] = ("decay_dispersion",)  # measures or comparisons "A-B"

    @property
    def measures(self) -> tuple[str, ...]:
        """Every measure compare reports: primary, secondary, then descriptive measures."""
        extra = tuple(d for d in self.descriptive if d in ENDPOINT_MEASURES)
        return tuple(dict.fromkeys((self.primary, *self.secondary, *extra)))

    @property
    def comparisons(self) -> tuple[tuple[str, str], ...]:
        """The family's comparisons, then descriptive-only comparisons."""
        extra = tuple(
            parse_comparison(d, "descriptive")
            for d in self.descriptive
            if d not in ENDPOINT_MEASURES
        )
        return tuple(dict.fromkeys((*self.family, *extra)))

    def role(self, measure: str, comparison: tuple[str, str]) -> str:
        """'primary', 'secondary' or 'descriptive' for one measure of one comparison."""
        if measure in self.descriptive or comparison not in self.family:
            return "descriptive"
        return "primary" if measure == self.primary else "secondary"

    def to_dict(self) -> dict[str, Any]:
        """The `[endpoint]` table this endpoint is (what ENDPOINT_FILE holds)."""
        return {
            "primary": self.primary,
            "secondary": list(self.secondary),
            "window": self.window.text,
            "family": [f"{a}-{b}" for a, b in self.family],
            "descriptive": list(self.descriptive),
        }


def _measure(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in ENDPOINT_MEASURES:
        raise ConfigError(
            f"{where}: {value!r} is not allowed; expected one of {', '.join(ENDPOINT_MEASURES)}"
        )
    return value


def _strings(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {value!r} is not allowed; expected a list of strings")
    return value


def parse_endpoint(table: Any, where: str = "[endpoint]") -> Endpoint:
    """The `[endpoint]` table of an experiment file (defaults for absent keys); ConfigError else."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, e.g. [endpoint] with primary = ...")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: key {unknown[0]!r} is not allowed; expected one of {', '.join(KEYS)}"
        )
    default = Endpoint()
    primary = _measure(table.get("primary", default.primary), f"{where} primary")
    secondary = tuple(
        _measure(v, f"{where} secondary")
        for v in _strings(table.get("secondary", list(default.secondary)), f"{where} secondary")
    )
    window = parse_window(table.get("window", default.window.text), f"{where} window")
    raw_family = _strings(table.get("family", list(DEFAULT_FAMILY)), f"{where} family")
    family = tuple(parse_comparison(v, f"{where} family") for v in raw_family)
    if not family:
        raise ConfigError(f"{where} family: [] is not allowed; expected at least one A-B")
    descriptive = tuple(
        v if v in ENDPOINT_MEASURES else "-".join(parse_comparison(v, f"{where} descriptive"))
        for v in _strings(
            table.get("descriptive", list(default.descriptive)), f"{where} descriptive"
        )
    )
    for name, values in (
        ("secondary", secondary),
        ("family", family),
        ("descriptive", descriptive),
    ):
        if len(set(values)) != len(values):
            raise ConfigError(f"{where} {name}: names an entry twice; list each once")
    if primary in secondary:
        raise ConfigError(f"{where} secondary: {primary!r} is the primary; list it once")
    if primary in descriptive or set(secondary) & set(descriptive):
        raise ConfigError(
            f"{where} descriptive: a tested measure cannot also be descriptive "
            f"({sorted({primary, *secondary} & set(descriptive))[0]!r})"
        )
    tested = {f"{a}-{b}" for a, b in family}
    if tested & set(descriptive):
        raise ConfigError(
            f"{where} descriptive: {sorted(tested & set(descriptive))[0]!r} is in the family; "
            "a comparison is tested or descriptive, not both"
        )
    return Endpoint(primary, secondary, window, family, descriptive)


def read_endpoint(out_dir: Path) -> Endpoint | None:
    """The endpoint `fedadamw run` kept in `out_dir`, or None when it has none (older runs)."""
    path = Path(out_dir) / ENDPOINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as an endpoint ({exc})") from None
    return parse_endpoint(data, str(path))


def endpoint_from_file(path: str | Path) -> Endpoint:
    """The `[endpoint]` of an experiment file (compare --endpoint: stores run before it)."""
    p = Path(path)
    data = read_toml(p, "--endpoint")
    if "endpoint" not in data:
        raise ConfigError(f"--endpoint {str(p)!r}: has no [endpoint] table")
    return parse_endpoint(data["endpoint"], f"--endpoint {str(p)!r}: [endpoint]")


def endpoint_text(endpoint: Endpoint) -> str:
    """ENDPOINT_FILE's text: the table as JSON (stable, so a rerun can tell it is the same)."""
    return json.dumps(endpoint.to_dict(), indent=1) + "\n"
