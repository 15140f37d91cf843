"""The house rule docs/architecture.md states: ``f3ocus_core`` is a plain library that never imports
Flower (nor the apps), so each concept can be read, tested and benchmarked without it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("flwr", "f3ocus_flower", "server_app", "client_app")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, wherever it stands (module level or in a function)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_f3ocus_core_never_imports_flower_or_the_apps():
    files = sorted((ROOT / "f3ocus_core").rglob("*.py"))
    assert len(files) > 20
    offending = [f"{path.relative_to(ROOT)}:{line}: {module}" for path in files for line, module in _imports(path)
                 if module.split(".")[0] in FORBIDDEN]
    assert not offending, "f3ocus_core must not import Flower or the apps:\n" + "\n".join(offending)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from flwr.app import Message\n    import flwr.serverapp\n")
    assert [module for _, module in _imports(sample)] == ["flwr.app", "flwr.serverapp"]
