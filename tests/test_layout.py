"""The layers point one way: scripts -> experiments -> ntk. Nothing imports what is above it, and
inside `ntk` and `experiments` the imports form a DAG that can be drawn top to bottom."""

import ast
import json
import subprocess
import sys
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


PACKAGES = ("ntk", "experiments")


def module_files(package: str) -> dict[str, Path]:
    """Every module of `package` by its dotted name (a package by its own name, for its __init__)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def project_imports(path: Path, package: str, modules: set[str]) -> list[tuple[str, bool]]:
    """(module of `package` imported, whether at module level) for every import in the file, wherever
    it stands; `from package import name` counts as importing package.name when that is a module."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body} | {id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [m for m in subs if m in modules] or [node.module]
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name.split(".")[0] == package and name in modules:
                found.append((name, id(node) in top_level))
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    files = module_files(package)
    return {m: {d for d, _ in project_imports(p, package, set(files)) if d != m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycles_are_found():
    """The cycle finder itself, on graphs with and without a cycle."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_form_a_dag(package):
    graph = import_graph(package)
    assert len(graph) > 5 and any(graph.values())  # the parse found the package's imports
    assert cycles(graph) == []


def test_no_experiment_imports_another():
    """An experiment (a module with a config in configs/exp) imports shared modules only, never another
    experiment: what two experiments share lives in a module of its own (experiments.digits, .launching)."""
    graph = import_graph("experiments")
    experiments = {m for m in graph if m.count(".") == 1 and (ROOT / "configs" / "exp" / f"{m.split('.')[1]}.yaml").exists()}
    assert len(experiments) >= 10
    assert {m: sorted(graph[m] & experiments) for m in sorted(experiments) if graph[m] & experiments} == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_project_import_hides_inside_a_function(package):
    """An import of the package's own modules inside a function is how a cycle is dodged: none are left."""
    files = module_files(package)
    inner = {m: sorted(d for d, top in project_imports(p, package, set(files)) if not top) for m, p in files.items()}
    assert {m: d for m, d in inner.items() if d} == {}


def test_importing_one_experiment_imports_only_what_it_needs():
    """In a fresh interpreter, importing experiments.<name> loads exactly the experiments modules its
    imports reach (no registry that imports every experiment)."""
    graph = import_graph("experiments")
    names = sorted(m.split(".")[1] for m in graph if m.count(".") == 1 and (ROOT / "configs" / "exp" / f"{m.split('.')[1]}.yaml").exists())
    assert len(names) >= 10
    code = (
        "import importlib, json, sys; out = {}\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m.startswith('experiments')]: del sys.modules[m]\n"
        "    importlib.import_module('experiments.' + name)\n"
        "    out[name] = sorted(m for m in sys.modules if m.startswith('experiments'))\n"
        "print(json.dumps(out))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    for name in names:
        reach, todo = set(), [f"experiments.{name}"]
        while todo:
            m = todo.pop()
            if m not in reach:
                reach.add(m)
                todo += graph[m]
                todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]  # its parent packages
        assert set(loaded[name]) == reach, name


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


def test_the_public_api_is_one_namespace_with_an_example_for_every_name():
    """`import ntk` gives every public name (`__all__`), each function and class with an example in its
    docstring (run as a doctest by the default test run: pytest.ini's --doctest-modules over ntk/)."""
    import inspect

    import ntk

    assert {"empirical_ntk", "NTKMLP", "limiting_kernels", "gradient_descent", "METHODS"} <= set(ntk.__all__)
    assert sorted(set(ntk.__all__)) == sorted(ntk.__all__) and all(hasattr(ntk, name) for name in ntk.__all__)
    documented = [name for name in ntk.__all__ if inspect.isfunction(getattr(ntk, name)) or inspect.isclass(getattr(ntk, name))]
    exempt = {"DivergenceError"}  # an exception raised by gradient_descent (its docstring says when)
    assert len(documented) > 40
    assert [name for name in documented if name not in exempt and ">>> " not in (inspect.getdoc(getattr(ntk, name)) or "")] == []
