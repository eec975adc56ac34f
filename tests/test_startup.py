"""Lean start-up: what `fedadamw run`'s processes import before the work starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> dict[str, bool]:
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'flwr', 'ray', 'pandas')}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result: dict[str, bool] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_run_command_and_the_simulation_module_import_no_torch_flower_or_ray() -> None:
    # The CLI process only supervises: ~2.5 s of torch import there would be pure waiting.
    # The simulation process starts Ray first and imports torch while Ray comes up.
    assert _modules_after("import fedadamw.cli, fedadamw.launch.supervisor") == {
        "torch": False,
        "flwr": False,
        "ray": False,
        "pandas": False,
    }
    assert (
        _modules_after("import fedadamw.launch.simulate, fedadamw.launch.raystart")["torch"]
        is False
    )
    # The console display (progress bar, closing table) imports the recorder's report types:
    # the parent prints the closing table without importing torch.
    assert _modules_after("import fedadamw.run.recorder, fedadamw.run.progress")["torch"] is False
