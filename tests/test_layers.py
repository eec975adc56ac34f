"""The layout's rules, read from the source with `ast`, and what the read side imports at run time.

Layers, bottom to top (docs/design.md):

0. `errors`, `schema`, `fileio`, `text`, `config`, `data.registry`, `data.sources` — names,
   validation and raw data, nothing heavier than numpy;
1. `data` — splits and label views;
2. `core` (torch: optimizers, training, divergence) and `results` (the store; never torch);
3. `run` — experiments, the recorder, the supervised simulation;
4. `viz` — figures, report, dashboard;
5. `cli`, `deploy`.

A module imports only from its own layer or below (imports inside functions included), `results`
and `viz` never import `core`, and only `launch.simulate` hands the apps in `server/` and `clients/`
to Flower's simulation.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fedadamw"

RANKS = {
    "fedadamw.errors": 0,
    "fedadamw.schema": 0,
    "fedadamw.fileio": 0,
    "fedadamw.text": 0,
    "fedadamw.config": 0,
    "fedadamw.data.registry": 0,
    "fedadamw.data.sources": 0,
    "fedadamw.data": 1,
    "fedadamw.core": 2,
    "fedadamw.results": 2,
    "fedadamw.run": 3,
    "fedadamw.viz": 4,
    "fedadamw.launch": 5,
    "fedadamw.cli": 6,
    "fedadamw.deploy": 6,
    "fedadamw": 0,  # the package's own __init__
}
NEVER = {  # importer prefix -> what it must never import (the read side stays free of torch)
    "fedadamw.results": ("fedadamw.core", "fedadamw.data", "fedadamw.run", "fedadamw.viz"),
    "fedadamw.viz": ("fedadamw.core", "fedadamw.run"),
}
APPS = ("server", "clients")
ALLOWED_APP_IMPORTERS = {"fedadamw.launch.simulate"}


def _rank(module: str) -> int:
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[best]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(module: str, path: Path) -> list[str]:
    """Every module `module` imports, at top level or inside functions, absolute."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.append(base)
            # `from fedadamw.core import wire` imports fedadamw.core.wire
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        assert any(module == p or module.startswith(p + ".") for p in RANKS), module


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    modules = _modules()
    violations = []
    for module, path in modules.items():
        for imported in _imports(module, path):
            if imported not in modules:
                continue
            if _rank(imported) > _rank(module):
                violations.append(f"{module} (layer {_rank(module)}) imports {imported}")
            for prefix, banned in NEVER.items():
                if module.startswith(prefix) and imported.startswith(banned):
                    violations.append(f"{module} imports {imported}")
    assert violations == []


def test_only_the_simulation_hands_the_apps_to_flower() -> None:
    importers = {
        module
        for module, path in _modules().items()
        for imported in _imports(module, path)
        if imported.split(".")[0] in APPS
    }
    assert importers <= ALLOWED_APP_IMPORTERS


def test_the_flower_apps_stay_thin() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "server").glob("*.py")}
    sizes |= {
        f"clients/{p.name}": len(p.read_text().splitlines())
        for p in (ROOT / "clients").glob("*.py")
    }
    assert all(n < 250 for n in sizes.values()), sizes


def _loaded_after(argv: list[str], cwd: Path) -> dict[str, object]:
    """Run `fedadamw ARGV` in a fresh interpreter; whether torch / flwr got imported."""
    code = (
        "import json, sys\n"
        "from fedadamw import cli\n"
        "try:\n"
        f"    code = cli.main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules,"
        " 'flwr': any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_figures import write_synthetic_store

    out = tmp_path_factory.mktemp("layers") / "run"
    write_synthetic_store(out, seeds=(0, 1), num_rounds=2, num_clients=3)
    return out


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--set", "color=blue"],
        ["run", "--set", "weight-decay=-1"],
        ["compare", "STORE"],
        ["report", "STORE", "--html", "REPORT"],
        ["export", "STORE", "--dir", "REPORT"],
    ],
    ids=["help", "unknown-key", "bad-value", "compare", "report", "export"],
)
def test_the_read_side_and_bad_input_import_neither_torch_nor_flower(
    argv: list[str], store_dir: Path, tmp_path: Path
) -> None:
    argv = [
        str(store_dir) if a == "STORE" else str(tmp_path / "r.html") if a == "REPORT" else a
        for a in argv
    ]
    result = _loaded_after(argv, tmp_path)
    assert result["code"] in (0, 2), result
    assert result == {"code": result["code"], "torch": False, "flwr": False}
