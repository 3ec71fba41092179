"""Render Figures 3b, 3c and the component decays from a saved mnist_convergence run.

    python -m scripts.plot_mnist_convergence                 # results/mnist_convergence/
    python -m scripts.plot_mnist_convergence dir=path/to/run

mnist_convergence.png: (b) ||h_t|| and (c) ||g_t|| against t, one line per network, colour by
width, with the n = infinity prediction A exp(-lambda_2 t) in (c). mnist_components.png: |c_i(t)|
for the components with a non-zero start against the prediction |c_i(0)| exp(-lambda_i t).
Reads only table.csv, components.csv and spectrum.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from scripts.figures import read_table, save_figure

COLOURS = ["tab:green", "tab:orange", "tab:red", "tab:blue", "tab:purple"]


def render(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    table = read_table(run_dir / "table.csv", {"width", "seed", "t", "g_norm", "h_norm"}, "table.csv")
    comps = read_table(run_dir / "components.csv", {"width", "seed", "t", "component", "amplitude", "predicted"}, "components.csv")
    spectrum = read_table(run_dir / "spectrum.csv", {"component", "lambda"}, "spectrum.csv")
    widths = sorted(table.width.unique())
    fig, (ax_h, ax_g) = plt.subplots(1, 2, figsize=(10, 3.8))
    for colour, width in zip(COLOURS, widths):
        for i, (_, run) in enumerate(table[table.width == width].groupby("seed")):
            label = f"n = {width}" if i == 0 else None
            ax_h.plot(run.t, run.h_norm, color=colour, lw=1, label=label)
            ax_g.plot(run.t, run.g_norm, color=colour, lw=1, label=label)
    c2 = comps[(comps.component == 2)].drop_duplicates("t").sort_values("t")
    ax_g.plot(c2.t, c2.predicted.abs(), "k--", lw=1.2, label=r"$n = \infty$")
    ax_h.set(xlabel="t", ylabel=r"$\|h_t\|$", title=r"(b) deviation from the straight line, $\|h_t\|$")
    ax_g.set(xlabel="t", ylabel=r"$\|g_t\|$", title=r"(c) convergence along $f^{(2)}$, $\|g_t\|$")
    ax_h.legend(fontsize=8, frameon=False)
    ax_g.legend(fontsize=8, frameon=False)
    paths = save_figure(fig, run_dir / "mnist_convergence")

    started = comps[(comps.t == 0) & (comps.predicted.abs() > 1e-12)].component.unique()
    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, comp in zip(COLOURS * 4, sorted(started)):
        sel = comps[comps.component == comp]
        lam = spectrum.set_index("component").loc[comp, "lambda"]
        for width, style in zip(widths, ["-", "-.", ":", (0, (1, 3))]):
            run = sel[(sel.width == width) & (sel.seed == sel.seed.min())]
            ax.plot(run.t, run.amplitude.abs(), style, color=colour, lw=1, label=f"$c_{comp}$, n = {width}")
        pred = sel.drop_duplicates("t").sort_values("t")
        ax.plot(pred.t, pred.predicted.abs(), "--", color=colour, lw=0.8, label=rf"$|c_{comp}(0)| e^{{-\lambda_{comp} t}}$, $\lambda_{comp}$ = {lam:.3g}")
    ax.set_yscale("log")
    observed = comps.amplitude.abs()
    ax.set_ylim(max(observed[observed > 0].min(), 1e-5) / 2, 2 * observed.max())  # a fast predicted decay would squash the rest
    ax.set(xlabel="t", ylabel=r"$|c_i(t)|$", title=r"residual along kernel principal components (dashed: $n = \infty$)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, frameon=False)
    return paths + save_figure(fig, run_dir / "mnist_components")


def main(argv: list[str]) -> None:
    from scripts.common import parse_kv

    args = parse_kv(argv, dict(dir="results/mnist_convergence"))
    if not (Path(args["dir"]) / "table.csv").exists():
        sys.exit(f"error: {args['dir']}/table.csv not found; run `python -m experiments.run +exp=mnist_convergence` first")
    for path in render(args["dir"]):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
