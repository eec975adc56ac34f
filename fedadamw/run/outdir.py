"""Where a submitted run may write: its `out-dir`, kept under the results root.

A run submitted with `flwr run` chooses its own run config, `out-dir` included, and its
ServerApp writes there with the rights of the server process. So the server takes `out-dir`
only under one folder, the results root:

- `FEDADAMW_RESULTS_ROOT` when set (docker-compose.yml sets it for the `serverapp` service);
- else `/app/fedadamw-runs` when that folder exists (the containers' results volume);
- else `~/fedadamw-runs` (`flwr run` on the local simulation).

A relative `out-dir` (or none: the experiment name) is taken under the root; an absolute one
must lie under it. The check is made on the resolved path, so `..` and symlinks cannot leave it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedadamw.errors import ConfigError

RESULTS_ROOT_ENV = "FEDADAMW_RESULTS_ROOT"
CONTAINER_ROOT = Path("/app/fedadamw-runs")


def results_root() -> Path:
    """The folder every submitted run writes under (see the module docstring), resolved."""
    env = os.environ.get(RESULTS_ROOT_ENV)
    if env:
        root = Path(env).expanduser()
    elif CONTAINER_ROOT.is_dir():
        root = CONTAINER_ROOT
    else:
        root = Path.home() / "fedadamw-runs"
    return root.resolve()


def resolve_under_root(out_dir: str, experiment: str, root: Path | None = None) -> Path:
    """The resolved folder of a submitted run; ConfigError when it would leave the root."""
    base = (root if root is not None else results_root()).expanduser().resolve()
    given = out_dir or experiment
    path = Path(given).expanduser()
    # resolve() follows every symlink that exists and folds `..`: what is checked is where
    # the files would really land.
    try:
        resolved = (path if path.is_absolute() else base / path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a symlink loop
        raise ConfigError(f"out-dir: {given!r} is not a usable path ({exc})") from None
    if base not in resolved.parents:
        raise ConfigError(
            f"out-dir: {given!r} resolves to {str(resolved)!r}, which is not a folder under the "
            f"results root {str(base)!r}; give a relative path (taken under it) or set "
            f"{RESULTS_ROOT_ENV} on the server"
        )
    return resolved
