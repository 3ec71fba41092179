"""One renderer per experiment: `render(run_dir) -> [written paths]`, a pure function of the tables
and config.yaml in the run directory, registered under the experiment's name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Renderer = Callable[[Path], list[Path]]
RENDERERS: dict[str, Renderer] = {}


def register(name: str) -> Callable[[Renderer], Renderer]:
    """Decorator: make `fn` the renderer of experiment `name` (once)."""

    def add(fn: Renderer) -> Renderer:
        if name in RENDERERS:
            raise ValueError(f"experiment {name!r} already has a renderer: {RENDERERS[name].__module__}")
        RENDERERS[name] = fn
        return fn

    return add
