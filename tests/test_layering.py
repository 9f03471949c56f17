"""The package's layers, checked on the source: ``core`` (the library) imports nothing above it,
no module imports another module's private (``_name``) names, and no import circle exists.

Layers, bottom up: ``demp.errors`` and ``demp.core``; ``demp.integrations`` (core only);
``demp.app``; ``demp.experiments``; ``demp.cli`` and the facade ``demp/__init__.py`` (which
exposes core only).  Imports inside functions count (they are still dependencies).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "demp"
RANK = {"demp.errors": 0, "demp.core": 0, "demp.integrations": 1, "demp.app": 2, "demp.experiments": 3,
        "demp.cli": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``import``/``from ... import`` of demp in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("demp") and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("demp")]
    return out


def layer(module: str) -> str:
    return next((k for k in sorted(RANK, key=len, reverse=True) if module == k or module.startswith(k + ".")), "demp")


def resolve(module: str, name: str) -> str:
    """``from demp.core import surgery`` imports the module demp.core.surgery."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def test_layers_import_downwards_only():
    wrong = []
    for name, path in MODULES.items():
        if name == "demp":
            continue
        for target, _ in imports(path):
            if RANK.get(layer(target), 0) > RANK.get(layer(name), 5):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_core_and_integrations_and_the_facade_use_only_core():
    wrong = [f"{name} imports {target}" for name, path in MODULES.items()
             if name == "demp" or layer(name) in ("demp.core", "demp.integrations")
             for target, _ in imports(path) if layer(target) not in ("demp.core", "demp.errors")]
    facade = (PACKAGE / "__init__.py").read_text()
    exposed = ast.literal_eval(facade.split("_PUBLIC = ", 1)[1].split("\n}\n", 1)[0] + "\n}")
    wrong += [f"demp.{k} comes from {v}" for k, v in exposed.items() if layer(v) not in ("demp.core", "demp.errors")]
    assert not wrong, wrong


def test_no_private_names_across_modules():
    wrong = []
    for name, path in MODULES.items():
        for target, names in imports(path):
            wrong += [f"{name} imports {target}.{n}" for n in names
                      if n.startswith("_") and resolve(target, n) != name]
    assert not wrong, wrong


def test_no_import_circles():
    graph = defaultdict(set)
    for name, path in MODULES.items():
        for target, names in imports(path):
            for t in ([resolve(target, n) for n in names] or [target]):
                if t in MODULES and t != name and not name.startswith(t + ".") and t != "demp":
                    graph[name].add(t)
    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(MODULES):
        if node not in state:
            visit(node, [node])
    assert not circles, circles
