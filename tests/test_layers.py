"""Layers, one direction: the import graph of m2f_core, training, app and launch.py, read from the source.

Every import counts, at module level or inside a function (a cycle hidden in a function is still a
cycle). The layers are listed once, here (docs/architecture.md draws them); a module takes the layer of
its longest listed prefix, and a module that matches none fails the test, so a new module is placed
on purpose. Imports within a layer are allowed but must be acyclic; imports to a higher layer fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("m2f_core", "training", "app")
ROOT_PACKAGE = "m2f_core"  # its __init__ is the lazy public API (load_model, Predictor, ...): layer 6, exact

LAYERS: dict[str, int] = {
    # 1 base: errors, file I/O and atomic writes, small utilities, config
    "m2f_core.errors": 1,
    "m2f_core.atomic": 1,
    "m2f_core.images": 1,
    "m2f_core.cli": 1,
    "m2f_core.config": 1,
    "m2f_core.parallel": 1,  # torchrun process groups, chunks and resume for the programs and the evaluation
    # 2 model: ops, backbones, decoders, the model; losses and matcher beside it
    "m2f_core.ops": 2,
    "m2f_core.backbone": 2,
    "m2f_core.layers": 2,
    "m2f_core.pixel_decoder": 2,
    "m2f_core.transformer_decoder": 2,
    "m2f_core.model": 2,
    "m2f_core.criterion": 2,
    "m2f_core.matcher": 2,
    "m2f_core.point_sampling": 2,
    # 3 weights: checkpoint formats, HF / Detectron2 conversion, ONNX export, the acceleration conversion
    "m2f_core.checkpoint": 3,
    "m2f_core.hf_convert": 3,
    "m2f_core.convert": 3,
    "m2f_core.onnx_backend": 3,
    "m2f_core.accelerate": 3,
    # 4 inference: predictor, prediction (task views), result structures, resizing, visualisation
    "m2f_core.predictor": 4,
    "m2f_core.prediction": 4,
    "m2f_core.structures": 4,
    "m2f_core.resize": 4,
    "m2f_core.runtime": 4,
    "m2f_core.visualize": 4,
    # 5 data + eval: dataset readers / writers, training data, the synthetic generator, metrics
    "m2f_core.data": 5,
    "m2f_core.metrics": 5,
    # 6 programs: CLIs, the trainer, the app, the launcher, the public facade
    "m2f_core.predict": 6,
    "m2f_core.evaluate": 6,
    "training": 6,
    "app": 6,
    "launch": 6,
    ROOT_PACKAGE: 6,
}


def _modules() -> dict[str, Path]:
    mods = {"launch": REPO / "launch.py"}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import of ``name`` executes (its longest prefix that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, source: str | None = None) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement of ``module``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [_resolve(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` runs pkg/__init__
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else _resolve(base) for a in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in targets if t is not None and t != module]
    return found


def layer_of(module: str) -> int | None:
    if module == ROOT_PACKAGE:
        return LAYERS[ROOT_PACKAGE]
    prefixes = [p for p in LAYERS if p != ROOT_PACKAGE and (module == p or module.startswith(p + "."))]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        for target, line in targets:
            if layer_of(target) > layer_of(module):
                problems.append(f"{MODULES[module].relative_to(REPO)}:{line}: {module} (layer {layer_of(module)}) "
                                f"imports {target} (layer {layer_of(target)})")
    return problems


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges = {m: sorted({t for t, _ in targets}) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int]]]:
    return {m: imports_of(m, f) for m, f in MODULES.items()}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules with no layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_import_goes_up_a_layer(graph):
    problems = upward_imports(graph)
    assert not problems, "imports to a higher layer:\n" + "\n".join(problems)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_package_does_not_import_its_public_facade(graph):
    """``m2f_core/__init__`` exposes the public API to users; the library imports defining modules."""
    inside = [f"{m} (line {line})" for m, targets in graph.items() if m.startswith(ROOT_PACKAGE + ".")
              for t, line in targets if t == ROOT_PACKAGE]
    assert not inside, inside


def test_no_private_name_crosses_modules():
    """``from x import _name`` between project modules (tools/ included): make the name public or move the code."""
    files = list(MODULES.values()) + sorted((REPO / "tools").glob("*.py"))
    problems = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in
                                                     (*PACKAGES, "tools")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {private}")
    assert not problems, "private names imported from another module:\n" + "\n".join(problems)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks themselves: a model module importing the predictor is both an upward import and a cycle."""
    path = MODULES["m2f_core.model"]
    source = path.read_text(encoding="utf-8") + "\n\ndef _probe():\n    from .predictor import Predictor\n"
    graph = {m: imports_of(m, f) for m, f in MODULES.items()}
    graph["m2f_core.model"] = imports_of("m2f_core.model", path, source)
    assert any("m2f_core.model (layer 2) imports m2f_core.predictor (layer 4)" in p for p in upward_imports(graph))
    assert any({"m2f_core.model", "m2f_core.predictor"} <= set(c) for c in cycles(graph))
