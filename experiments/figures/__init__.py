"""Figures of every experiment, rendered from a run directory's saved tables (no training).

`render(name, run_dir)` draws the figures of experiment `name`; the experiment runner calls it at
the end of a run and `python -m scripts.make_figures` calls it for every run directory found.
"""

from __future__ import annotations

from pathlib import Path

from experiments.figures import (  # noqa: F401  (each module registers its renderer)
    circle_activations,
    circle_regression,
    circle_width,
    drift_sweep,
    mnist_convergence,
    mnist_generalization,
    mnist_lr_equivalence,
    mnist_pca,
)
from experiments.figures.registry import RENDERERS


def render(name: str, run_dir: str | Path) -> list[Path]:
    """Render the figures of experiment `name` from the tables in `run_dir`; return the paths written."""
    if name not in RENDERERS:
        raise ValueError(f"no figures for experiment {name!r}; known: {', '.join(sorted(RENDERERS))}")
    return RENDERERS[name](Path(run_dir))
