"""The rooms of docs/architecture.md and who may import whom.

- ``f3ocus_core`` is a plain library: it never imports Flower, the apps, the shared package or the
  evidence runner, so each concept can be read, tested and benchmarked without them.
- ``f3ocus_flower`` holds only what both apps use: it imports neither app nor the evidence runner,
  and each of its modules is used by both apps.
- ``server_app`` and ``client_app`` never import each other nor the evidence runner.
- ``f3ocus_evidence`` (the comparison grid) is the one package that may import both apps.
- Inside ``f3ocus_core``, ``peft_units`` builds on ``peft_modes`` and never the other way round.

Every import counts, wherever it stands: module level, inside a function, under ``TYPE_CHECKING``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ("server_app", "client_app")
EVIDENCE = "f3ocus_evidence"

#: Package -> the top-level packages it must never import.
FORBIDDEN = {
    "f3ocus_core": ("flwr", "f3ocus_flower", *APPS, EVIDENCE),
    "f3ocus_flower": (*APPS, EVIDENCE),
    "server_app": ("client_app", EVIDENCE),
    "client_app": ("server_app", EVIDENCE),
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, wherever it stands (module level, in a function,
    under ``TYPE_CHECKING``); relative imports resolved; ``from a import b`` counts as ``a`` and
    ``a.b`` (``b`` may be a module)."""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _offending(files: list[Path], banned) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _imports(path)
        if banned(module)
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_rooms_above_it(package):
    files = _files(package)
    assert files, f"no modules under {package}/"
    banned = FORBIDDEN[package]
    offending = _offending(files, lambda module: module.split(".")[0] in banned)
    assert not offending, f"{package} must not import {', '.join(banned)}:\n" + "\n".join(offending)


def test_f3ocus_core_is_a_whole_library():
    assert len(_files("f3ocus_core")) > 20


def test_peft_modes_never_import_peft_units():
    """``peft_units`` imports ``peft_modes`` (each method's units); the modes take their settings from
    ``f3ocus_core.peft_settings``, so the two never import each other."""
    units = "f3ocus_core.peft_units"
    offending = _offending(
        _files("f3ocus_core/peft_modes"), lambda module: module == units or module.startswith(units + ".")
    )
    assert not offending, "f3ocus_core.peft_modes must not import f3ocus_core.peft_units:\n" + "\n".join(offending)


def test_every_shared_module_is_used_by_both_apps():
    """What only one app uses lives in that app's package, not in ``f3ocus_flower``."""
    shared = {_module_name(path) for path in _files("f3ocus_flower") if path.name != "__init__.py"}
    used = {app: {module for path in _files(app) for _, module in _imports(path)} for app in APPS}
    one_app_only = sorted(
        f"{module}: used by {[app for app in APPS if module in used[app]] or 'neither app'}"
        for module in shared
        if not all(module in used[app] for app in APPS)
    )
    assert not one_app_only, "f3ocus_flower must hold only what both apps use:\n" + "\n".join(one_app_only)


def test_the_check_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "f3ocus_core" / "sample.py"
    sample.parent.mkdir()
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from f3ocus_core.peft_units import UnitMap\n"
        "def f():\n    from flwr.app import Message\n    import flwr.serverapp\n"
        "    from . import peft_units\n"
    )
    assert sorted(module for _, module in _imports(sample, tmp_path)) == sorted(
        [
            "typing",
            "typing.TYPE_CHECKING",
            "f3ocus_core.peft_units",
            "f3ocus_core.peft_units.UnitMap",
            "flwr.app",
            "flwr.app.Message",
            "flwr.serverapp",
            "f3ocus_core",
            "f3ocus_core.peft_units",
        ]
    )
