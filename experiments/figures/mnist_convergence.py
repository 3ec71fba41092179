"""Render Figures 3b, 3c and the component decays from a saved mnist_convergence run.

    python -m scripts.make_figures dir=<run directory>     # this figure alone, from the saved tables

mnist_convergence.png: (b) ||h_t|| and (c) ||g_t|| against t, one line per network, colour by
width, with the n = infinity prediction A exp(-lambda_j t) in (c). mnist_components.png: |c_i(t)|
for the components with a non-zero start against the prediction |c_i(0)| exp(-lambda_i t).
mnist_rate.png (when kernel.csv has rows): the rate at which each network's own NTK learns the
tracked direction, rayleigh_j(t) / lambda_j, and the relative kernel drift, against t.
mnist_deviation.png (when fits.csv exists): max_t | ||g_t|| - A exp(-lambda_j t) | and max_t ||h_t||
against width on log-log axes, with the fitted exponents and their 95% intervals.
Reads only the tables of the run directory and its config.yaml (the tracked component).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from experiments.figures.style import read_table, save_figure

COLOURS = ["tab:green", "tab:orange", "tab:red", "tab:blue", "tab:purple"]


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    table = read_table(run_dir / "table.csv", {"width", "seed", "t", "g_norm", "h_norm"}, "table.csv")
    comps = read_table(run_dir / "components.csv", {"width", "seed", "t", "component", "amplitude", "predicted"}, "components.csv")
    spectrum = read_table(run_dir / "spectrum.csv", {"component", "lambda"}, "spectrum.csv")
    config = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else {}
    tracked = int(config.get("tracked_component", 2))
    widths = sorted(table.width.unique())
    fig, (ax_h, ax_g) = plt.subplots(1, 2, figsize=(10, 3.8))
    for colour, width in zip(COLOURS, widths):
        for i, (_, run) in enumerate(table[table.width == width].groupby("seed")):
            label = f"n = {width}" if i == 0 else None
            ax_h.plot(run.t, run.h_norm, color=colour, lw=1, label=label)
            ax_g.plot(run.t, run.g_norm, color=colour, lw=1, label=label)
    c2 = comps[(comps.component == tracked)].drop_duplicates("t").sort_values("t")
    ax_g.plot(c2.t, c2.predicted.abs(), "k--", lw=1.2, label=r"$n = \infty$")
    ax_h.set(xlabel="t", ylabel=r"$\|h_t\|$", title=r"(b) deviation from the straight line, $\|h_t\|$")
    ax_g.set(xlabel="t", ylabel=r"$\|g_t\|$", title=rf"(c) convergence along $f^{{({tracked})}}$, $\|g_t\|$")
    ax_h.legend(fontsize=8, frameon=False)
    ax_g.legend(fontsize=8, frameon=False)
    paths = save_figure(fig, run_dir / "mnist_convergence")

    started = comps[(comps.t == 0) & (comps.predicted.abs() > 1e-12)].component.unique()
    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, comp in zip(COLOURS * 4, sorted(started)):
        sel = comps[comps.component == comp]
        lam = spectrum.set_index("component").loc[comp, "lambda"]
        for width, style in zip(widths, ["-", "-.", ":", (0, (1, 3)), (0, (5, 1))]):
            run = sel[(sel.width == width) & (sel.seed == sel.seed.min())]
            ax.plot(run.t, run.amplitude.abs(), ls=style, color=colour, lw=1, label=f"$c_{comp}$, n = {width}")
        pred = sel.drop_duplicates("t").sort_values("t")
        ax.plot(
            pred.t,
            pred.predicted.abs(),
            "--",
            color=colour,
            lw=0.8,
            label=rf"$|c_{comp}(0)| e^{{-\lambda_{comp} t}}$, $\lambda_{comp}$ = {lam:.3g}",
        )
    ax.set_yscale("log")
    observed = comps.amplitude.abs()
    ax.set_ylim(max(observed[observed > 0].min(), 1e-5) / 2, 2 * observed.max())  # a fast predicted decay would squash the rest
    ax.set(xlabel="t", ylabel=r"$|c_i(t)|$", title=r"residual along kernel principal components (dashed: $n = \infty$)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, frameon=False)
    paths += save_figure(fig, run_dir / "mnist_components")
    kernel = pd.read_csv(run_dir / "kernel.csv") if (run_dir / "kernel.csv").exists() else pd.DataFrame()
    if len(kernel):
        paths += _render_rate(kernel, widths, tracked, run_dir)
    if (run_dir / "fits.csv").exists() and (run_dir / "deviation.csv").exists():
        paths += _render_deviation(run_dir, tracked)
    return paths


def _render_rate(kernel: pd.DataFrame, widths: list[int], tracked: int, run_dir: Path) -> list[Path]:
    """rayleigh_j(t) / lambda_j and ||Theta_t - Theta_0|| / ||Theta_0|| against t, one line per network."""
    kernel = read_table(kernel, {"width", "seed", "t", "component", "rate_ratio", "kernel_drift"}, "kernel.csv")
    sel = kernel[kernel.component == tracked]
    fig, (ax_r, ax_d) = plt.subplots(1, 2, figsize=(10, 3.8))
    for colour, width in zip(COLOURS, widths):
        for i, (_, run) in enumerate(sel[sel.width == width].groupby("seed")):
            label = f"n = {width}" if i == 0 else None
            ax_r.plot(run.t, run.rate_ratio, "o-", color=colour, lw=1, ms=2.5, label=label)
            ax_d.plot(run.t[run.t > 0], run.kernel_drift[run.t > 0], "o-", color=colour, lw=1, ms=2.5, label=label)
    ax_r.axhline(1.0, color="k", ls="--", lw=1.2, label=r"$n = \infty$")
    ax_r.set(xlabel="t", ylabel=rf"$f^{{({tracked})\top}} \Theta_t f^{{({tracked})}} / (N^2 \lambda_{tracked})$")
    ax_r.set_title(rf"rate of the network's own NTK along $f^{{({tracked})}}$, relative to $\lambda_{tracked}$", fontsize=9)
    ax_d.set(xlabel="t", ylabel=r"$\|\Theta_t - \Theta_0\|_F / \|\Theta_0\|_F$ (batch)", yscale="log")
    ax_d.set_title("relative kernel drift on the 512 digits", fontsize=9)
    ax_r.legend(fontsize=8, frameon=False)
    ax_d.legend(fontsize=8, frameon=False)
    return save_figure(fig, run_dir / "mnist_rate")


def _render_deviation(run_dir: Path, tracked: int) -> list[Path]:
    """The deviations from the n = inf prediction against width, log-log, with the fitted power laws."""
    deviation = read_table(run_dir / "deviation.csv", {"width", "seed", "g_deviation", "h_max"}, "deviation.csv")
    fits = read_table(run_dir / "fits.csv", {"quantity", "exponent", "ci_low", "ci_high", "intercept"}, "fits.csv").set_index("quantity")
    names = {"g_deviation": rf"$\max_t |\,\|g_t\| - A e^{{-\lambda_{tracked} t}}|$", "h_max": r"$\max_t \|h_t\|$"}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    widths = np.array(sorted(deviation.width.unique()), float)
    for (quantity, name), colour, marker in zip(names.items(), ["tab:blue", "tab:red"], ["o", "s"]):
        ax.plot(deviation.width, deviation[quantity], marker, color=colour, ms=4, alpha=0.8)
        fit = fits.loc[quantity]
        label = name
        if np.isfinite(fit.exponent):
            ax.plot(widths, np.exp(fit.intercept) * widths**fit.exponent, color=colour, lw=1)
            label += f": {fit.exponent:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]"
        ax.plot([], [], marker + "-", color=colour, ms=4, lw=1, label=label)
    top = deviation[["g_deviation", "h_max"]].max().max()
    for slope, style in ((-0.5, ":"), (-1.0, "--")):
        ax.plot(widths, top * 1.5 * (widths / widths[0]) ** slope, style, color="grey", lw=1, label=f"slope {slope:g}")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="deviation from the n = inf prediction")
    ax.set_title("Figure 3 deviations against width: fitted exponent [95% CI]", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, run_dir / "mnist_deviation")
