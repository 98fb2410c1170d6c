"""Code checks on the package's source: rules of the project's style that ruff does not enforce here.

- Every public function and method has type hints on its parameters and its return value: the
  library is what notebooks, the CLI and other code call, and the hints are its documentation.
- No `import *` in the package (notebooks may; the package must say where each name comes from).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "whatsthat"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def public_functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of the module's public functions and its public classes' public methods."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
            found.append((node.name, node))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and not item.name.startswith("_"):
                    found.append((f"{node.name}.{item.name}", item))
    return found


def missing_hints(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    args = fn.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if is_method and params and params[0].arg in ("self", "cls"):
        params = params[1:]
    missing = [a.arg for a in params if a.annotation is None]
    missing += [f"*{a.arg}" for a in (args.vararg, args.kwarg) if a is not None and a.annotation is None]
    if fn.returns is None:
        missing.append("return")
    return missing


def test_the_package_has_sources() -> None:
    assert len(SOURCES) > 20  # the check below would pass vacuously on a wrong path


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_public_functions_have_type_hints(source: Path) -> None:
    tree = ast.parse(source.read_text(), filename=str(source))
    bad = [f"{name} ({', '.join(missing)})" for name, fn in public_functions(tree)
           if (missing := missing_hints(fn, "." in name))]  # fmt: skip
    assert not bad, f"{source.name}: public functions without type hints: {bad}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_star_imports(source: Path) -> None:
    tree = ast.parse(source.read_text(), filename=str(source))
    stars = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
    assert not stars, f"{source.name}: `from ... import *` of {stars}"


def test_the_hint_check_finds_a_missing_hint() -> None:
    # the check itself: a public function without hints, and a method whose only hint missing is its return
    tree = ast.parse("def f(a, b: int): pass\nclass C:\n    def m(self, x: int): pass\n    def _private(self, y): pass\n")
    found = {name: missing_hints(fn, "." in name) for name, fn in public_functions(tree)}
    assert found == {"f": ["a", "return"], "C.m": ["return"]}
