"""Writing files so that a reader never sees half of one; reading a TOML file with one-line
errors."""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from fedadamw.errors import ConfigError


def read_toml(path: str | Path, flag: str = "--config") -> dict[str, Any]:
    """The TOML file at `path` as a dict, or ConfigError with one line naming `flag` and why."""
    p = Path(path)
    where = f"{flag} {str(p)!r}"
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8: binary or another encoding
        raise ConfigError(
            f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason}); a TOML file is UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600: give it a normal file's mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text, ending with a newline."""
    return atomic_write_bytes(path, (text if text.endswith("\n") else text + "\n").encode())
