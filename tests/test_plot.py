import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.figures import render, renderers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table(tmp_path):
    gamma = np.linspace(-np.pi, np.pi, 9)
    rows = [
        dict(width=w, seed=s, t=t, gamma=g, ntk=0.2 + 0.1 * np.cos(g) + 0.001 * s, loss=0.1)
        for w in (500, 10000)
        for s in range(2)
        for t in (0.0, 200.0)
        for g in gamma
    ]
    path = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_render_from_saved_table(table):
    paths = render("circle_width", table.parent)
    assert [p.name for p in paths] == ["circle_width.png", "circle_width.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_every_experiment_has_one_renderer():
    configs = sorted(p.stem for p in (ROOT / "configs" / "exp").glob("*.yaml"))
    assert renderers() == configs
    with pytest.raises(ValueError, match="no figures for experiment 'nope'"):
        render("nope", ROOT)


def test_make_figures_one_directory(table):
    proc = subprocess.run([sys.executable, "-m", "scripts.make_figures", f"dir={table.parent}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "holds no experiment tables" in proc.stderr  # no config.yaml: unknown experiment
    (table.parent / "config.yaml").write_text("name: circle_width\n")
    proc = subprocess.run([sys.executable, "-m", "scripts.make_figures", f"dir={table.parent}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (table.parent / "circle_width.png").exists() and (table.parent / "circle_width.pdf").exists()


def test_table_without_kernel_column_is_refused(tmp_path):
    pd.DataFrame(dict(width=[1], seed=[0], t=[0.0], gamma=[0.0])).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(ValueError, match=r"table lacks columns \['ntk'\]"):
        render("circle_width", tmp_path)


def test_make_figures_rerenders_every_saved_table(table, tmp_path):
    root = tmp_path / "results"
    (root / "my_fig1_run").mkdir(parents=True)
    (root / "my_fig1_run" / "table.csv").write_bytes(table.read_bytes())
    (root / "my_fig1_run" / "config.yaml").write_text("name: circle_width\n")
    (root / "bench").mkdir()
    proc = subprocess.run([sys.executable, "-m", "scripts.make_figures", f"root={root}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (root / "my_fig1_run" / "circle_width.png").exists()
    assert "rendered" in proc.stdout and "skip" in proc.stdout and "bench" in proc.stdout
    empty = subprocess.run(
        [sys.executable, "-m", "scripts.make_figures", f"root={tmp_path / 'none'}"], cwd=ROOT, capture_output=True, text=True
    )
    assert empty.returncode != 0 and "no tables found" in empty.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "scripts.make_figures", f"root={root}", "jobs=-1"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode != 0 and bad.stderr.strip() == "error: jobs must be an integer >= 0 (0: one process per core), got -1"


def test_regression_figure_renders_from_a_small_table(tmp_path):
    gamma = np.linspace(-np.pi, np.pi, 9)
    rows = [
        dict(kind="network", width=w, seed=s, gamma=g, f=np.sin(2 * g) / 2 + 0.01 * s) for w in (50, 1000) for s in range(2) for g in gamma
    ]
    rows += [
        dict(kind=f"{k}_p{p}", width=np.inf, seed=-1, gamma=g, f=np.sin(2 * g) / 2 + (p - 50) / 400)
        for k in ("limit", "approx")
        for p in (10, 50, 90)
        for g in gamma
    ]
    rows += [dict(kind="train", width=np.nan, seed=-1, gamma=g, f=np.sin(2 * g) / 2) for g in (-2.4, -0.8, 0.8, 2.4)]
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    paths = render("circle_regression", tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_generalisation_figure_leaves_out_unstable_linearisations(tmp_path, monkeypatch):
    import experiments.figures.mnist_generalization as figure

    for name in ("table.csv", "mean.csv", "limits.csv", "fits.csv"):
        (tmp_path / name).write_bytes((ROOT / "results" / "mnist_generalization" / name).read_bytes())
    table = pd.read_csv(tmp_path / "table.csv")
    assert (table.lr >= table.lin_lr_max).any() and table.dist_to_linearised.max() > 1e6  # the committed run has one
    captured = {}
    monkeypatch.setattr(figure, "save_figure", lambda fig, stem: captured.setdefault("fig", fig) and [])
    figure.render(tmp_path)
    ax_a, ax_b, _ = captured["fig"].axes
    points = np.concatenate([c.get_offsets()[:, 1] for c in ax_b.collections])
    assert points.max() < 10  # the diverged linearisation (distance ~1e10) is not drawn
    labels = [t.get_text() for t in ax_b.get_legend().get_texts()] + [t.get_text() for t in ax_a.get_legend().get_texts()]
    assert sum("1 left out" in label for label in labels) == 2


def test_rerendering_keeps_a_png_that_differs_only_by_rasterisation_noise(table):
    """Another machine's fonts move a few pixels by a level or two: the file on disk is kept."""
    import matplotlib.pyplot as plt

    png = render("circle_width", table.parent)[0]
    pixels = plt.imread(png)
    pixels[10, 10:13, 0] = np.clip(pixels[10, 10:13, 0] + 1 / 255, 0, 1)  # 3 pixels off by 1/255
    plt.imsave(png, pixels)
    kept = png.read_bytes()
    render("circle_width", table.parent)
    assert png.read_bytes() == kept
    data = pd.read_csv(table)
    data["ntk"] *= 2  # a real change of the figure is written
    data.to_csv(table, index=False)
    render("circle_width", table.parent)
    assert png.read_bytes() != kept


def test_make_figures_leaves_every_committed_figure_unchanged(tmp_path):
    """Re-rendering all committed results (a copy of them) rewrites no byte of any file."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(ROOT / "results", root, ignore=shutil.ignore_patterns(".parts"))
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "scripts.make_figures", f"root={root}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert sorted(after) == sorted(before)
    assert [str(p) for p in before if after[p] != before[p]] == []
    assert proc.stdout.count("rendered ") >= 8
