"""The layers point one way: scripts -> experiments -> ntk. Nothing imports what is above it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"ntk": {"experiments", "scripts", "hydra", "pandas", "matplotlib"}, "experiments": {"scripts"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):  # also imports inside functions
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_up(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN[package]) for p in files}
    assert {k: v for k, v in bad.items() if v} == {}
