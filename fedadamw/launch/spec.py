"""What `fedadamw run`'s parent hands the simulation process, and the codes it exits with.

Torch-free and Flower-free: the CLI, the supervisor, the cluster driver and the simulation
child all import it, so none of them imports another for these names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedadamw.errors import EXIT_BAD_INPUT

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "EXIT_STOPPED", "EXIT_WORKER_LOST", "Spec"]

EXIT_OK, EXIT_FAILED, EXIT_WORKER_LOST, EXIT_STOPPED = 0, 1, 75, 130  # bad input: errors.py


@dataclass(frozen=True)
class Spec:
    """What the parent hands the simulation process (as JSON)."""

    configs: list[dict[str, Any]]
    out_dir: str
    client_cpus: float
    client_gpus: float | None  # None: 0.25 when CUDA is available, else 0
    verbose: bool
    restart: bool
    ray_temp_dir: str | None  # None: no Ray of our own (engine=vmap, or a cluster's address)
    parent_pid: int
    ray_address: str | None = None  # an existing Ray cluster to run on (--ray-address)
    # torch threads of this process. One by default: on a machine whose cores are busy (Ray's
    # actors, other jobs), more threads than free cores spin and wait; measured on 2 shared
    # cores, a vmap round took 15–25 s with 2 threads against 1.6 s with 1.
    threads: int = 1
    # engine = grid: at most this many runs trained together; 0: as many as memory allows.
    max_batch_runs: int = 0

    def write(self, path: Path) -> None:
        """Save as JSON."""
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> Spec:
        """Load from JSON."""
        return cls(**json.loads(path.read_text()))
