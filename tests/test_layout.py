"""The package tree is the architecture README describes: each concern imports only from the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pysparsek

PACKAGE = Path(pysparsek.__file__).resolve().parent

# README, "Architecture": lowest first
LAYERS = [
    {"pysparsek", "pysparsek.errors", "pysparsek.proc", "pysparsek.paths"},
    {"pysparsek.llamacpp"},   # the llama.cpp tree and builds
    {"pysparsek.sparsek"},    # the settings and the bindings
    {"pysparsek.data"},       # models and text
    {"pysparsek.measure"},    # measurements
    {"pysparsek.report"},     # tables, files, plots
    {"pysparsek.cli", "pysparsek.api", "pysparsek.__main__"},
]


def _layer(module: str) -> int:
    for rank in range(len(LAYERS) - 1, -1, -1):
        if any(module == name or module.startswith(name + ".") for name in LAYERS[rank] if name != "pysparsek"):
            return rank
    assert module.startswith("pysparsek"), module
    return 0


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pysparsek"):
            if node.module == "pysparsek":  # from pysparsek import x: a submodule or a name of the package root
                found |= {f"pysparsek.{a.name}" if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name).is_dir()
                          else "pysparsek" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pysparsek")}
    return found


def test_every_module_belongs_to_a_layer() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    known = {name.split(".")[1] for layer in LAYERS for name in layer if name != "pysparsek"} | {"__init__"}
    assert top == known


def test_no_module_imports_upward() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        for imported in _imports(path):
            if _layer(imported) > _layer(name):
                upward.append(f"{name} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: a low module importing a measurement is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from pysparsek.measure import bench\n")
    assert _layer(next(iter(_imports(bad)))) > _layer("pysparsek.llamacpp.build")
