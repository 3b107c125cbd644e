"""The packages import in one direction (README, "Architecture"): models <- search <-
the front ends (search/app: the CLI, its commands, the Python API); tracking depends on
models and on search's public event and error contract only; no module imports itself
back through others, not even through a function-level import."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

CONTRACT = {"cnnsearch.search.events", "cnnsearch.search.errors"}


def _modules() -> dict[str, set[str]]:
    """Every module of the package -> the cnnsearch modules it imports (anywhere in it)."""
    found = {}
    for path in sorted(REPO.glob("*/**/*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[0] not in ("models", "search", "tracking"):
            continue
        name = ".".join(("cnnsearch", *parts)).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        found[name] = imported
    known = set(found)
    return {name: {i for i in imports if i in known and i != name}
            for name, imports in found.items()}


MODULES = _modules()


def _allowed(module: str, imported: str) -> bool:
    if module.startswith("cnnsearch.models"):
        return imported.startswith("cnnsearch.models")
    if module.startswith("cnnsearch.tracking"):
        return imported.startswith(("cnnsearch.tracking", "cnnsearch.models")) \
            or imported in CONTRACT
    if module.startswith("cnnsearch.search.app"):
        return True
    return imported.startswith(("cnnsearch.search", "cnnsearch.models")) \
        and not imported.startswith("cnnsearch.search.app")


def test_the_modules_were_found():
    assert {"cnnsearch.models.cnn", "cnnsearch.search.sweep", "cnnsearch.search.app.cli",
            "cnnsearch.tracking.runs"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module):
    wrong = sorted(i for i in MODULES[module] if not _allowed(module, i))
    assert not wrong, f"{module} imports {wrong}"


def test_no_import_cycles():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in MODULES.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(m for m in MODULES if m in reach(m))
    assert not cycles, f"modules that import themselves back: {cycles}"
