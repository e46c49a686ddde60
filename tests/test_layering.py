"""The packages' layers, read from the source (no imports executed).

runtime is lowest (torch-free): it imports none of the other packages and no torch/diffusers/transformers, in any
module, also inside functions. contextdiff_ref may import runtime; export may import runtime and contextdiff_ref;
benchmarks and serving sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN: dict[str, frozenset[str]] = {
    "runtime": frozenset({"contextdiff_ref", "export", "benchmarks", "serving", "torch", "diffusers", "transformers"}),
    "contextdiff_ref": frozenset({"export", "benchmarks", "serving"}),
    "export": frozenset({"benchmarks", "serving"}),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name `path` imports (top level, in functions, under `if`), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, forbidden: frozenset[str]) -> list[str]:
    """`file:line: import X` for each import in `package` whose top-level name is in `forbidden`."""
    rows = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            if module.split(".")[0] in forbidden:
                rows.append(f"{path.relative_to(ROOT)}:{line}: import {module}")
    return rows


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    rows = violations(package, FORBIDDEN[package])
    assert not rows, f"{package} may not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(rows)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from torch import nn\n    import export.build as b\n")
    assert _imports(source) == [(1, "os"), (4, "torch"), (5, "export.build")]
