"""Re-render every figure of the project from the tables under results/, without training.

    python -m scripts.make_figures                  # all experiments found under results/
    python -m scripts.make_figures root=path/to/results

Each experiment directory results/<name>/ holds table.csv (and the other tables of that run); its
figures are rendered by the matching scripts/plot_<name>.py into PNG and PDF beside them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scripts import aggregate_drift, plot_circle_regression, plot_circle_width, plot_mnist_convergence, plot_mnist_pca
from scripts.common import parse_kv

RENDERERS = {  # experiment name -> render(run directory)
    "circle_width": lambda d: plot_circle_width.render(d / "table.csv", d / "circle_width"),
    "circle_regression": lambda d: plot_circle_regression.render(d / "table.csv", d / "circle_regression"),
    "mnist_pca": lambda d: plot_mnist_pca.render(d / "components.csv", d / "table.csv", d / "mnist_pca"),
    "mnist_convergence": plot_mnist_convergence.render,
    "drift_sweep": aggregate_drift.render_dir,
}


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(root="results"))
    root = Path(args["root"])
    done = 0
    for name, render in RENDERERS.items():
        table = root / name / "table.csv"
        if not table.exists():
            print(f"skip {name}: no {table}")
            continue
        for path in render(root / name) or []:
            print(path)
        print(f"rendered {name}")
        done += 1
    if not done:
        sys.exit(f"error: no tables found under {root}/; run an experiment first (python -m experiments.run +exp=<name>)")


if __name__ == "__main__":
    main(sys.argv[1:])
