"""Figures of every experiment, rendered from a run directory's saved tables (no training).

By convention the figures of experiment <name> are drawn by `render(run_dir) -> [written paths]` of
the module `experiments/figures/<name>.py`, a pure function of the tables and config.yaml in the run
directory (helpers in `experiments/figures/style.py`). `render(name, run_dir)` finds that module; the
experiment runner calls it at the end of a run and `python -m scripts.make_figures` for every run
directory found. No list of renderers is kept anywhere.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

NOT_RENDERERS = ("style",)  # modules of this package that draw no experiment's figures


def has_renderer(name: object) -> bool:
    """Whether experiment `name` has a figure module `experiments/figures/<name>.py`."""
    if not isinstance(name, str) or not name.isidentifier() or name in NOT_RENDERERS:
        return False
    return importlib.util.find_spec(f"experiments.figures.{name}") is not None


def renderers() -> list[str]:
    """The experiments that have a figure module."""
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__" and has_renderer(p.stem))


def render(name: str, run_dir: str | Path) -> list[Path]:
    """Render the figures of experiment `name` from the tables in `run_dir`; return the paths written."""
    if not has_renderer(name):
        raise ValueError(f"no figures for experiment {name!r}; known: {', '.join(renderers())}")
    return importlib.import_module(f"experiments.figures.{name}").render(Path(run_dir))
