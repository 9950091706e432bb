"""The import rules of docs/architecture.md, read from the source with ``ast``: only
``napari_fusionmamba.napari`` touches napari / magicgui / Qt, and each core package imports only
the packages below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_fusionmamba"
GUI = {"napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy"}

#: Which parts of the package each part may import (besides itself). The top-level
#: ``__init__`` (lazy re-exports) and ``cli`` / ``napari`` (the front ends) may import any core part.
ALLOWED = {
    "errors": set(),
    "_json_records": {"errors"},
    "io": {"errors"},
    "model": {"errors", "_json_records"},
    "quality": {"errors", "io"},
    "registry": {"errors", "io", "model"},
    "engine": {"errors", "io", "model", "quality", "registry"},
    "training": {"errors", "_json_records", "io", "model", "registry", "engine"},
    "zoo": {"errors", "io", "model", "registry", "engine"},
}
FRONT_ENDS = {"cli", "napari"}


def _part(path: Path, root: Path = PACKAGE) -> str:
    """The top-level part of the package a file belongs to ("engine", "cli", "" for __init__)."""
    relative = path.relative_to(root).with_suffix("")
    return "" if relative.parts == ("__init__",) else relative.parts[0]


def _imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    package = ["napari_fusionmamba", *path.relative_to(root).parent.parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append(target)
            names += [f"{target}.{alias.name}" for alias in node.names]  # ``from . import x``
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_napari_package_imports_napari_or_qt(path):
    if _part(path) == "napari":
        return
    gui = sorted({name for name in _imports(path) if name.split(".")[0] in GUI})
    assert not gui, f"{path.name} imports {gui}: GUI code belongs in napari_fusionmamba/napari"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_packages_import_only_what_lies_below_them(path):
    part = _part(path)
    if part in FRONT_ENDS or part == "":
        return
    forbidden = _forbidden(path, part)
    assert not forbidden, f"{path.relative_to(PACKAGE)} ({part}) imports {forbidden}; see docs/architecture.md"


def _forbidden(path: Path, part: str, root: Path = PACKAGE) -> list[str]:
    used = {name.split(".")[1] for name in _imports(path, root) if name.startswith("napari_fusionmamba.")}
    used = {name for name in used if (root / name).is_dir() or (root / f"{name}.py").exists()}
    return sorted(used - ALLOWED[part] - {part})


def test_every_part_of_the_package_has_a_rule():
    parts = {_part(path) for path in SOURCES} - {""}
    assert parts == set(ALLOWED) | FRONT_ENDS


def test_the_rules_catch_a_violation(tmp_path):
    root = tmp_path / "napari_fusionmamba"
    for name in ("engine", "napari", "training"):
        (root / name).mkdir(parents=True)
    (root / "cli.py").write_text("")
    bad = root / "engine" / "bad.py"
    bad.write_text("import qtpy\nfrom ..napari.widgets import fuse\nfrom .. import cli\nfrom ..training import loop\n")
    assert "qtpy" in _imports(bad, root)
    assert _part(bad, root) == "engine"
    assert _forbidden(bad, "engine", root) == ["cli", "napari", "training"]
