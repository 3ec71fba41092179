"""Feature-learning figures from a run directory: phase_diagram, kernel_change_vs_alpha, kernel_change_vs_width.

    python -m scripts.make_figures dir=results/feature_learning

Reads table.csv, fits.csv and crossover.csv (written by `experiments.feature_learning.aggregate`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.figures.style import save_figure

NAMES = {"ntk": "NTK parameterisation", "mean_field": "muP (mean field)", "standard": "standard, rate eta / n"}


def _grid(table: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed means of `column` on the (alpha, width) grid: alphas, widths, values (alpha x width)."""
    mean = table.groupby(["alpha", "width"])[column].mean().unstack("width")
    return mean.index.to_numpy(float), mean.columns.to_numpy(float), mean.to_numpy(float)


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges halfway (in log) between grid values, for pcolormesh."""
    logs = np.log(values)
    mids = (logs[1:] + logs[:-1]) / 2
    step = logs[1] - logs[0] if len(logs) > 1 else 1.0
    return np.exp(np.concatenate([[logs[0] - step / 2], mids, [logs[-1] + step / 2]]))


def render(run_dir: str | Path) -> list[Path]:
    """The three feature-learning figures from the aggregated tables of `run_dir`."""
    run_dir = Path(run_dir)
    table = pd.read_csv(run_dir / "table.csv")
    fits = pd.read_csv(run_dir / "fits.csv")
    crossover = pd.read_csv(run_dir / "crossover.csv")
    ok = table[~table.diverged.astype(bool)]
    grid = ok.groupby(["parameterization", "width"]).filter(lambda g: g.alpha.nunique() >= 2)  # the (width, alpha) grid only
    pars = [p for p in NAMES if p in set(grid.parameterization)]
    paths = []

    if pars:  # the phase diagram: kernel change and test accuracy over (width, alpha)
        fig, axes = plt.subplots(2, len(pars), figsize=(4.6 * len(pars), 7.4), squeeze=False)
        for col, par in enumerate(pars):
            g = grid[grid.parameterization == par]
            for row, (column, cmap, label) in enumerate(
                (
                    ("kernel_change", "magma", r"$\log_{10}\|\Theta_T - \Theta_0\|_F / \|\Theta_0\|_F$"),
                    ("test_accuracy", "viridis", "test accuracy"),
                )
            ):
                alphas, widths, values = _grid(g, column)
                ax = axes[row, col]
                shown = np.log10(values) if column == "kernel_change" else values
                mesh = ax.pcolormesh(_edges(widths), _edges(alphas), shown, cmap=cmap, shading="flat")
                fig.colorbar(mesh, ax=ax, label=label)
                stars = crossover[crossover.parameterization == par].groupby("width").alpha_star.mean()
                if len(stars.dropna()):
                    ax.plot(stars.index, stars.values, "o-", color="white", ms=4, lw=1.2, label=r"$\alpha^*$: change = 0.1")
                    xs = np.array([widths.min(), widths.max()])
                    first = stars.dropna()
                    ax.plot(xs, first.iloc[0] * (xs / first.index[0]) ** -0.5, "--", color="cyan", lw=1, label=r"$\propto n^{-1/2}$")
                    ax.legend(fontsize=7, loc="upper right")
                ax.set(xscale="log", yscale="log", xlabel="width n", ylabel=r"scale $\alpha$")
                ax.set_title(NAMES[par], fontsize=9)
        t = ok.t.max()
        fig.suptitle(f"where the NTK stops: MNIST parity, depth {int(ok.depth.max())}, trained to t = {t:g} (seed means)", fontsize=10)
        paths += save_figure(fig, run_dir / "phase_diagram")

        fig, axes = plt.subplots(1, len(pars), figsize=(4.8 * len(pars), 4.2), squeeze=False, sharey=True)
        for ax, par in zip(axes[0], pars):
            g = grid[grid.parameterization == par]
            widths = sorted(g.width.unique())
            for colour, width in zip(plt.cm.viridis(np.linspace(0, 0.9, len(widths))), widths):
                m = g[g.width == width].groupby("alpha").kernel_change.agg(["mean", "min", "max"])
                ax.errorbar(
                    m.index,
                    m["mean"],
                    yerr=[m["mean"] - m["min"], m["max"] - m["mean"]],
                    fmt="o-",
                    color=colour,
                    ms=3,
                    lw=1,
                    label=f"n = {width}",
                )
            a = np.array([1.0, g.alpha.max()])
            ax.plot(a, 0.3 / a, ":", color="grey", lw=1, label=r"$\propto 1/\alpha$")
            ax.axhline(0.1, color="grey", lw=0.6)
            ax.set(xscale="log", yscale="log", xlabel=r"scale $\alpha$", title=NAMES[par])
            ax.legend(fontsize=7, frameon=False)
        axes[0, 0].set_ylabel("relative kernel change on the probe digits")
        paths += save_figure(fig, run_dir / "kernel_change_vs_alpha")

    at_one = ok[np.isclose(ok.alpha, 1.0)]
    if len(at_one):  # kernel change against width at alpha = 1, every parameterisation, with the fits
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for colour, par in zip(("C0", "C3", "C2"), [p for p in NAMES if p in set(at_one.parameterization)]):
            m = at_one[at_one.parameterization == par].groupby("width").kernel_change.agg(["mean", "min", "max"])
            f = fits[(fits.quantity == "kernel_change_vs_width") & (fits.parameterization == par)]
            label = NAMES[par]
            if len(f) and np.isfinite(f.exponent.iloc[0]):
                label += f": {f.exponent.iloc[0]:.2f} [{f.ci_low.iloc[0]:.2f}, {f.ci_high.iloc[0]:.2f}]"
            ax.errorbar(
                m.index, m["mean"], yerr=[m["mean"] - m["min"], m["max"] - m["mean"]], fmt="o-", color=colour, ms=4, lw=1, label=label
            )
        ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="relative kernel change on the probe digits")
        ax.set_title(r"$\alpha = 1$: fitted width exponent [95% CI]", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        paths += save_figure(fig, run_dir / "kernel_change_vs_width")
    return paths
