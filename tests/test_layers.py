"""The layout's rules, read from the source with `ast`, and what the read side imports at run time.

Layers, bottom to top (docs/design.md):

0. `errors`, `schema`, `fileio`, `text`, `config`, `data.registry`, `data.sources` — names,
   validation and raw data, nothing heavier than numpy;
1. `data` — splits and label views;
2. `core` (torch: optimizers, training, divergence, the apps' array codec) and `results` (the
   store, its readers and the trackers; never torch);
3. `run` — experiments, the recorder, the failure texts, output folders, the console display;
4. `viz` — figures, report, dashboard;
5. `clients` — the ClientApp;
6. `server` — the ServerApp, its strategies and grids (the vmap engine answers train messages
   with the ClientApp's own functions, so the server may import the clients, never back);
7. `launch` — the supervisor, the simulation process, Ray's start, cluster sweeps: it hands
   the apps to Flower;
8. `cli`, `deploy`.

A module imports only from its own layer or below (imports inside functions included), `results`
and `viz` never import `core`, the apps import only base/data/core/run (never `results`, `viz`
or `launch`: what they store goes through `run.recorder`), nothing but `cli` imports `launch`,
and the package-level import graph has no cycle. `python -m tests.test_layers --graph` prints
that graph (package -> the packages it imports).
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
APPS = ("server", "clients")

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
    "clients": 5,
    "server": 6,
    "fedadamw.launch": 7,
    "fedadamw.cli": 8,
    "fedadamw.deploy": 8,
    "fedadamw.docgen": 8,
    "fedadamw": 0,  # the package's own __init__
}
NEVER = {  # importer prefix -> what it must never import (the read side stays free of torch)
    "fedadamw.results": ("fedadamw.core", "fedadamw.data", "fedadamw.run", "fedadamw.viz"),
    "fedadamw.viz": ("fedadamw.core", "fedadamw.run"),
    "clients": ("fedadamw.results", "fedadamw.viz", "fedadamw.launch", "server"),
    "server": ("fedadamw.results", "fedadamw.viz", "fedadamw.launch"),
}
LAUNCH_IMPORTERS = ("fedadamw.launch", "fedadamw.cli")  # who may import fedadamw.launch


def _rank(module: str) -> int:
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[best]


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the library and of both apps: dotted name -> file."""
    found = {}
    for top in ("fedadamw", *APPS):
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
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


def package_of(module: str) -> str:
    """The unit of the package graph: `fedadamw.X` (a subpackage or a top module), or an app."""
    parts = module.split(".")
    if parts[0] in APPS:
        return parts[0]
    if parts[:2] == ["fedadamw", "data"] and len(parts) > 2 and parts[2] in ("registry", "sources"):
        return "fedadamw.data." + parts[2]  # layer 0, below the rest of `data`
    return ".".join(parts[:2])


def package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Package -> the other packages its modules import (inside functions included)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {package_of(m): set() for m in modules}
    for module, path in modules.items():
        for imported in _imports(module, path):
            # `from fedadamw import schema` names the (empty) package itself, too: not an edge.
            if imported not in modules or imported == "fedadamw":
                continue
            if package_of(imported) != package_of(module):
                graph[package_of(module)].add(package_of(imported))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def format_graph(graph: dict[str, set[str]]) -> str:
    """One line per package, lowest layer first: `package -> imported, ...`."""
    lines = []
    for package in sorted(graph, key=lambda p: (_rank(p), p)):
        lines.append(f"{package} -> {', '.join(sorted(graph[package])) or '-'}")
    found = cycles(graph)
    lines.append("cycles: " + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))
    return "\n".join(lines)


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
                if (module == prefix or module.startswith(prefix + ".")) and imported.startswith(
                    banned
                ):
                    violations.append(f"{module} imports {imported}")
    assert violations == []


def test_only_the_launch_layer_imports_the_apps_and_only_the_cli_imports_it() -> None:
    modules = _modules()
    app_importers, launch_importers = set(), set()
    for module, path in modules.items():
        for imported in _imports(module, path):
            if imported.split(".")[0] in APPS and module.split(".")[0] not in APPS:
                app_importers.add(module)
            if imported.startswith("fedadamw.launch") and not module.startswith(LAUNCH_IMPORTERS):
                launch_importers.add(module)
    assert {m.rsplit(".", 1)[0] for m in app_importers} <= {"fedadamw.launch"}, app_importers
    assert launch_importers == set()


def test_the_package_graph_has_no_cycle() -> None:
    graph = package_graph()
    assert cycles(graph) == []
    # The detector itself, on a graph with a known cycle and a known acyclic part.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


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


if __name__ == "__main__":
    if sys.argv[1:2] != ["--graph"]:
        sys.exit("usage: python -m tests.test_layers --graph [ROOT]")
    print(format_graph(package_graph(Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT)))
