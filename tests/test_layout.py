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


THROWAWAY = {
    "configs/exp/throwaway.yaml": """# @package _global_
# python -m experiments.run +exp=throwaway
defaults:
  - /exp_schema/throwaway@_here_
name: throwaway
n_points: 5
""",
    "experiments/throwaway.py": '''"""A throwaway experiment: the squares of 0 ... n_points - 1, one job each."""

from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from omegaconf import MISSING

from experiments.runner import Experiment
from experiments.validation import check_int, check_run


@dataclass
class ThrowawaySchema:
    n_points: int = MISSING


def check(cfg):
    check_int("n_points", cfg.n_points)
    check_run(cfg)


def job(cfg, shared, i, checkpoint=None):
    return {"table": pd.DataFrame(dict(i=[i], value=[float(shared[i])]))}


EXPERIMENT = Experiment(
    name="throwaway",
    check=check,
    prepare=lambda cfg: torch.arange(cfg.n_points) ** 2,
    jobs=lambda cfg, shared: [(f"point{i}", partial(job, cfg, shared, i)) for i in range(cfg.n_points)],
    schema=ThrowawaySchema,
    tiny=("n_points=3",),
)
run = EXPERIMENT.run
''',
    "experiments/figures/throwaway.py": """from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments.figures.style import save_figure


def render(run_dir):
    table = pd.read_csv(Path(run_dir) / "table.csv")
    fig, ax = plt.subplots()
    ax.plot(table.i, table.value)
    return save_figure(fig, Path(run_dir) / "throwaway")
""",
}


def test_an_experiment_is_three_new_files_and_no_edit(tmp_path):
    """Add a throwaway experiment to a copy of the repository the documented way (a config, a module,
    a renderer; no existing file touched) and run it through the command line."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    for folder in ("ntk", "experiments", "configs", "scripts"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    for rel, text in THROWAWAY.items():
        (repo / rel).write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=throwaway", "n_points=4", "progress=false", f"out_dir={out}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "table.csv").read_text().split()
    assert table == ["i,value", "0,0", "1,1", "2,4", "3,9"]
    assert (out / "throwaway.png").exists() and (out / "provenance.json").exists()
    assert all(p.read_bytes() == data for p, data in before.items())  # no existing file was edited
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=throwaway", "n_points=0", f"out_dir={tmp_path / 'bad'}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert (bad.returncode, bad.stderr.strip().splitlines()[-1]) == (2, "error: n_points must be an integer >= 1, got 0")
