"""Re-render every figure of the project from the tables under results/, without training.

    python -m scripts.make_figures                  # all experiments found under results/
    python -m scripts.make_figures root=path/to/results

Every run directory under results/ (config.yaml names its experiment; a drift sweep has fits.csv)
holds table.csv and the other tables of that run; its figures are rendered by the matching
scripts/plot_<name>.py (or scripts/aggregate_drift.py) into PNG and PDF beside them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from scripts import (
    aggregate_drift,
    plot_circle_regression,
    plot_circle_width,
    plot_mnist_convergence,
    plot_mnist_lr_equivalence,
    plot_mnist_pca,
)
from scripts.common import parse_kv

RENDERERS = {  # experiment name -> render(run directory)
    "circle_width": lambda d: plot_circle_width.render(d / "table.csv", d / "circle_width"),
    "circle_regression": lambda d: plot_circle_regression.render(d / "table.csv", d / "circle_regression"),
    "mnist_pca": lambda d: plot_mnist_pca.render(d / "components.csv", d / "table.csv", d / "mnist_pca"),
    "mnist_convergence": plot_mnist_convergence.render,
    "mnist_lr_equivalence": plot_mnist_lr_equivalence.render,
    "drift_sweep": aggregate_drift.render_dir,
}


def experiment_of(run_dir: Path) -> str | None:
    """The experiment that wrote `run_dir`: `name` in its config.yaml (a drift sweep has fits.csv)."""
    if (run_dir / "config.yaml").exists():
        return OmegaConf.load(run_dir / "config.yaml").get("name")
    return "drift_sweep" if (run_dir / "fits.csv").exists() else None


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(root="results"))
    root = Path(args["root"])
    done = 0
    for run_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        name = experiment_of(run_dir)
        if name not in RENDERERS or not (run_dir / "table.csv").exists():
            print(f"skip {run_dir}: no experiment table")
            continue
        for path in RENDERERS[name](run_dir) or []:
            print(path)
        print(f"rendered {run_dir} ({name})")
        done += 1
    if not done:
        sys.exit(f"error: no tables found under {root}/; run an experiment first (python -m experiments.run +exp=<name>)")


if __name__ == "__main__":
    main(sys.argv[1:])
