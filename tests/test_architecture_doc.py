"""docs/architecture.md names every module of every package in its room, and no module that is gone,
so the map stays the territory after a module is added, moved or removed."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("f3ocus_core", "f3ocus_flower", "server_app", "client_app", "f3ocus_evidence")
DOC = ROOT / "docs" / "architecture.md"


def _modules() -> list[str]:
    """Every non-empty ``.py`` file of the packages (an empty ``__init__.py`` says nothing to document)."""
    return sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.read_text().strip()
    )


def _named() -> set[str]:
    """The module paths docs/architecture.md writes out (``package/.../name.py``)."""
    return set(re.findall(rf"(?<![\w/.])(?:{'|'.join(PACKAGES)})/[\w/]*\.py\b", DOC.read_text()))


def test_every_module_is_named_in_docs_architecture():
    modules = _modules()
    assert len(modules) > 80
    missing = sorted(set(modules) - _named())
    assert not missing, "docs/architecture.md does not name:\n" + "\n".join(missing)


def test_docs_architecture_names_no_module_that_is_gone():
    named = _named()
    assert named, "no module paths found in docs/architecture.md"
    gone = sorted(path for path in named if not (ROOT / path).is_file())
    assert not gone, "docs/architecture.md names modules that do not exist:\n" + "\n".join(gone)
