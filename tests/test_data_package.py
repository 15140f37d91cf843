"""The data package's layout: no import circle among its modules, run-time loaders that do not pull in
the offline builder, and a ``f3ocus-build-medvqa`` command that points at a real function."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import f3ocus_core.data

PACKAGE = Path(f3ocus_core.data.__file__).parent
ROOT = PACKAGE.parents[1]


def _imports() -> dict[str, set[str]]:
    """Module of the data package -> the modules of the package it imports, anywhere in its code.

    Imports inside functions count too: a deferred import hides a circle, it does not break it.
    """
    names = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        module = "__init__" if path.stem == "__init__" else path.stem
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "f3ocus_core.data":
                edges |= {alias.name for alias in node.names if alias.name in names} or {"__init__"}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("f3ocus_core.data."):
                edges.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                inside = (alias.name for alias in node.names if alias.name.startswith("f3ocus_core.data."))
                edges |= {name.split(".")[2] for name in inside}
        graph[module] = edges - {module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` as a path of modules, or [] if there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"easy_vqa": {"tasks"}, "tasks": {"easy_vqa"}}) == ["easy_vqa", "tasks", "easy_vqa"]
    assert _cycle({"easy_vqa": {"partition"}, "tasks": {"easy_vqa"}}) == []


def test_no_import_circle_in_the_data_package():
    graph = _imports()
    assert {"tasks", "easy_vqa", "medvqa", "medvqa_build"} <= set(graph)
    assert "easy_vqa" in graph["tasks"]
    assert _cycle(graph) == []


def test_run_time_modules_do_not_import_the_builder():
    graph = _imports()
    importers = {module for module, targets in graph.items() if "medvqa_build" in targets}
    assert importers == set()
    assert "medvqa" in graph["medvqa_build"]


def test_the_build_command_points_at_the_builder():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["f3ocus-build-medvqa"].partition(":")
    assert module == "f3ocus_core.data.medvqa_build"
    assert callable(getattr(importlib.import_module(module), attribute))
