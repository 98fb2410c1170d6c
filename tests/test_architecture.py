"""Code checks on the package's shape: folders by job, dependencies pointing one way, no cycles.

The layers, bottom up (docs/development.md, "The package"): the base modules (errors, atomic, images,
progress), model/ (a trained model's files, loading, verdict, detector scoring: torch only), dataset/
(gathering pictures), flags/ (visitors' flags in a database), training/ (fastai), cleaning/, web/ (the
page and its server), cli. A module may import from its own layer and the layers below, never from
above; the imports include the ones made inside functions, since a lazy import upward is still a
dependency upward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "whatsthat"
LAYERS = ["base", "model", "dataset", "flags", "training", "cleaning", "web", "cli"]
BASE = {"whatsthat", "whatsthat.errors", "whatsthat.atomic", "whatsthat.images", "whatsthat.progress"}
COMPAT = {"whatsthat.models"}  # only for export.pkl files that pickle this path; nothing imports it
# what a page's kernel imports to show the page (app.ipynb, whatsthat serve's kernels)
PAGE_KERNEL = ["whatsthat.web.app", "whatsthat.web.pagekernel"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module in BASE:
        return 0
    if module == "whatsthat.cli":
        return LAYERS.index("cli")
    return LAYERS.index(module.split(".")[1])


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports (at any depth in the file, or only at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from whatsthat.model import detector` imports the module whatsthat.model.detector
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return found


def package_imports(module: str) -> set[str]:
    return {m for m in imports(MODULES[module]) if m in MODULES and m != module}


def test_the_folders_are_the_layers():
    assert {m.split(".")[1] for m in MODULES if m not in BASE | COMPAT | {"whatsthat.cli"}} == set(LAYERS[1:-1])
    assert len(MODULES) > 30  # the checks below would pass vacuously on a wrong path


@pytest.mark.parametrize("module", [m for m in MODULES if m not in COMPAT])
def test_nothing_imports_upward(module):
    upward = sorted(m for m in package_imports(module) if layer(m) > layer(module) or m in COMPAT)
    assert not upward, f"{module} (layer {LAYERS[layer(module)]}) imports from above: {upward}"


def test_no_import_cycles():
    graph = {m: package_imports(m) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("whatsthat.model.")])
def test_model_never_imports_fastai(module):
    bad = sorted(m for m in imports(MODULES[module]) if m.split(".")[0] in ("fastai", "fastcore", "torchvision"))
    assert not bad, f"{module} imports {bad}: serving has no fastai"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("whatsthat.flags.")])
def test_flags_never_imports_torch_or_fastai(module):
    # the model process writes flags beside the model, and the maintainer's commands read them: no ML here
    bad = sorted(m for m in imports(MODULES[module]) if m.split(".")[0] in ("torch", "fastai", "fastcore", "torchvision"))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("whatsthat.web.")])
def test_web_imports_no_torch_or_fastai_at_module_level(module):
    bad = sorted(m for m in imports(MODULES[module], top_level_only=True)
                 if m.split(".")[0] in ("torch", "fastai", "fastcore", "torchvision"))
    assert not bad, f"{module} imports {bad} at module level"


def test_the_page_kernel_loads_no_torch():
    # a real import, so the modules these pull in (at module level) count too
    code = (f"import sys; import {', '.join(PAGE_KERNEL)}; "
            "print(sorted(m for m in ('torch', 'fastai', 'torchvision', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_page_kernel_modules_never_import_torch():
    # not even lazily: what the page's kernel imports to show and classify, under whatsthat serve
    seen, todo = set(), list(PAGE_KERNEL)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [n for n in imports(MODULES[m], top_level_only=True) if n in MODULES]
    bad = {m: sorted(n for n in imports(MODULES[m], top_level_only=True) if n.split(".")[0] == "torch") for m in seen}
    assert not {m: v for m, v in bad.items() if v}
