"""Render the limiting NTK on the circle for several activations from a saved circle_activations run.

circle_activations.png: (left) Theta_inf(x0, x(gamma)) / Theta_inf(x0, x0) against gamma for every
activation; (right) the raw Theta_inf(x0, x(gamma)) on a log scale where it is positive. Reads table.csv.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.figures.style import gamma_axis, read_table, save_figure


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    table = read_table(run_dir / "table.csv", {"activation", "method", "gamma", "ntk", "ntk_normalised"}, "table.csv")
    names = list(dict.fromkeys(table.activation))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(names), 2), endpoint=False))
    fig, (ax_n, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for colour, name in zip(colours, names):
        sel = table[table.activation == name]
        style = {"closed form": "-", "Hermite series": "--"}.get(sel.method.iloc[0], ":")
        ax_n.plot(sel.gamma, sel.ntk_normalised, color=colour, ls=style, lw=1.2, label=f"{name} ({sel.method.iloc[0]})")
        ax_r.plot(sel.gamma, sel.ntk.where(sel.ntk > 0), color=colour, ls=style, lw=1.2)
    gamma_axis(ax_n)
    gamma_axis(ax_r)
    ax_n.set_ylabel(r"$\Theta_\infty(x_0, x(\gamma)) \,/\, \Theta_\infty(x_0, x_0)$")
    ax_r.set(yscale="log", ylabel=r"$\Theta_\infty(x_0, x(\gamma))$")
    ax_n.legend(fontsize=6.5, frameon=False, ncol=2)
    return save_figure(fig, run_dir / "circle_activations")
