"""Re-render every figure of the project from the tables under results/, without training.

    python -m scripts.make_figures                          # every run directory under results/
    python -m scripts.make_figures root=path/to/results
    python -m scripts.make_figures dir=results/circle_width # one run directory
    python -m scripts.make_figures jobs=1                   # one directory at a time (default: one process per core)

A run directory holds the tables of one run and its config.yaml, whose `name` is the experiment
(a drift sweep is recognised by its fits.csv); its figures are drawn by the renderer of
that experiment (`experiments.figures`), the same function the run itself used, into PNG and PDF
beside the tables. The directories are rendered by `jobs` processes at once (each figure is drawn
by one process alone, so the bytes are the same as one at a time); their lines are printed in order.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf

from experiments.figures import has_renderer, render
from scripts.arguments import parse_kv


def experiment_of(run_dir: Path) -> str | None:
    """The experiment that wrote `run_dir`: `name` in its config.yaml, else `experiment` in the
    provenance.json of a sweep's aggregate (an older drift sweep has only fits.csv)."""
    if (run_dir / "config.yaml").exists():
        return OmegaConf.load(run_dir / "config.yaml").get("name")
    if (run_dir / "provenance.json").exists():
        name = json.loads((run_dir / "provenance.json").read_text()).get("experiment")
        if name:
            return name
    return "drift_sweep" if (run_dir / "fits.csv").exists() else None


def render_dir(run_dir: Path) -> bool:
    """Render one run directory; False when it holds no experiment's tables."""
    name = experiment_of(run_dir)
    if not has_renderer(name) or not any(run_dir.glob("*.csv")):
        print(f"skip {run_dir}: no experiment tables")
        return False
    for path in render(name, run_dir):
        print(path)
    print(f"rendered {run_dir} ({name})")
    return True


def render_captured(run_dir: Path) -> tuple[bool, str]:
    """`render_dir` in a worker: whether it rendered, and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        done = render_dir(run_dir)
    return done, out.getvalue()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(root="results", dir=None, jobs=0))
    jobs = args["jobs"]
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        sys.exit(f"error: jobs must be an integer >= 0 (0: one process per core), got {jobs!r}")
    if args["dir"] is not None:
        if not render_dir(Path(args["dir"])):
            sys.exit(f"error: {args['dir']} holds no experiment tables (CSV tables and the config.yaml naming the experiment)")
        return
    root = Path(args["root"])
    dirs = sorted(p for p in root.glob("*") if p.is_dir())
    jobs = min(jobs or usable_cores(), max(1, len(dirs)))
    if jobs == 1:
        done = sum(render_dir(run_dir) for run_dir in dirs)
    else:
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            done = 0
            for rendered, printed in pool.map(render_captured, dirs):
                print(printed, end="", flush=True)
                done += rendered
    if not done:
        sys.exit(f"error: no tables found under {root}/; run an experiment first (python -m experiments.run +exp=<name>)")


if __name__ == "__main__":
    main(sys.argv[1:])
