"""The layout's invariants (DESIGN.md): dst/ never imports pipeline/, and the kernels never import the neurons
(a neuron describes itself to them with kernel_spec(); the reverse import was a cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

DST = Path(__file__).resolve().parents[1] / "dst"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def offenders(root: Path, forbidden: str) -> list[str]:
    return sorted(f"{p.relative_to(DST.parent)}: {m}" for p in root.rglob("*.py") for m in imported_modules(p)
                  if m == forbidden or m.startswith(forbidden + "."))


@pytest.mark.parametrize("root, forbidden", [(DST, "pipeline"), (DST / "kernels", "dst.neuron"),
                                             (DST / "kernels", "dst.models")])
def test_no_import_against_the_layout(root, forbidden):
    assert offenders(root, forbidden) == []


def test_the_check_sees_function_level_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from dst.neuron import MultiStepIF\n    import pipeline.cli\n")
    assert imported_modules(tmp_path / "m.py") >= {"dst.neuron", "dst.neuron.MultiStepIF", "pipeline.cli"}
