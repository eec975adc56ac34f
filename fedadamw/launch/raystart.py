"""Start Ray early and lean, for Flower's simulation engine; or join an existing cluster.

Flower's Ray backend starts Ray itself unless Ray is already running. Starting it here instead
saves seconds of every `fedadamw run` on a small machine:

- **Early.** `start()` runs `ray.init` in a background thread at the very start of the
  simulation process, while the main thread imports torch and prepares the data.
- **Lean.** A local head starts only what the simulation uses: GCS, the raylet (with its two
  agents, which it cannot run without) and the workers. Not started: the autoscaler monitor
  (nothing scales), the log monitor (actor logs are not forwarded unless `--verbose`) and the
  dashboard's API server (`include_dashboard=False` still starts it; nothing here reads it).
  On this 2-core machine that takes `ray.init` from ~11 s to ~7 s.
- **No runtime environment.** Flower's own start passes `runtime_env={"env_vars": ...}`, so
  its actors cannot use the workers Ray prestarts and each starts a fresh process (~5 s
  before the first actor answers, against ~1 s). The workers inherit this process's
  environment (PYTHONPATH included) from the raylet instead.

The tweaks touch private Ray internals (`RayParams`, `Node.start_api_server`): each is applied
only when the attribute exists, so another Ray version loses the saving, not the run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any


class RayStart:
    """A `ray.init` running in a thread of its own; `wait()` for it before using Ray."""

    def __init__(self, init_args: dict[str, Any], lean: bool) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        # Ray ties its processes to the thread that spawned them (PR_SET_PDEATHSIG fires when
        # that *thread* ends), so the thread stays alive, idle, for the life of the process.
        thread = threading.Thread(
            target=self._run, args=(init_args, lean), name="fedadamw-ray-start", daemon=True
        )
        thread.start()

    def _run(self, init_args: dict[str, Any], lean: bool) -> None:
        try:
            import ray

            # From a thread Ray cannot install its SIGTERM handler and says so; the simulation
            # process handles SIGTERM itself, and a bad-input run must print one line only.
            logging.getLogger("ray._private.worker").addFilter(_NotTheSigtermWarning())

            with _lean_head() if lean else contextlib.nullcontext():
                ray.init(**init_args)
        except BaseException as exc:  # handed to the thread that waits
            self._error = exc
        finally:
            self._done.set()
        threading.Event().wait()  # keep Ray's processes alive (see __init__)

    def wait(self) -> None:
        """Block until Ray is up; raise what `ray.init` raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error


class _NotTheSigtermWarning(logging.Filter):
    """Drops Ray's "SIGTERM handler is not set" warning (expected: Ray starts in a thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def start(temp_dir: str | None, verbose: bool, address: str | None = None) -> RayStart:
    """Start a local head in `temp_dir` (lean), or join the cluster at `address`."""
    init_args: dict[str, Any] = {
        "logging_level": "INFO" if verbose else "WARNING",
        # Client failures come back as error replies (recorded rejections), so the
        # actors' own logs stay out of the terminal unless asked for.
        "log_to_driver": verbose,
    }
    if address is not None:
        init_args["address"] = address
        return RayStart(init_args, lean=False)
    init_args["include_dashboard"] = False
    if temp_dir is not None:
        # Every Ray file of this run lives here, and the parent removes it at the end.
        init_args["_temp_dir"] = temp_dir
        init_args["_node_ip_address"] = "127.0.0.1"
    return RayStart(init_args, lean=not verbose)


@contextlib.contextmanager
def _lean_head() -> Iterator[None]:
    """Leave out of a new local head what a simulation does not use (see the module)."""
    from ray._private import node, parameter

    params_init = getattr(parameter.RayParams, "__init__", None)
    api_server = getattr(node.Node, "start_api_server", None)

    def lean_params(self: Any, *args: Any, **kwargs: Any) -> None:
        assert params_init is not None
        params_init(self, *args, **kwargs)
        if hasattr(self, "no_monitor"):
            self.no_monitor = True
        if hasattr(self, "include_log_monitor"):
            self.include_log_monitor = False

    def no_api_server(self: Any, **kwargs: Any) -> None:
        return None

    patched: list[tuple[Any, str, Any]] = []
    if params_init is not None:
        parameter.RayParams.__init__ = lean_params  # type: ignore[method-assign]
        patched.append((parameter.RayParams, "__init__", params_init))
    if api_server is not None:
        node.Node.start_api_server = no_api_server  # type: ignore[method-assign]
        patched.append((node.Node, "start_api_server", api_server))
    try:
        yield
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
