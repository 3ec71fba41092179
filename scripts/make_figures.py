"""Re-render every figure of the project from the tables under results/, without training.

    python -m scripts.make_figures                          # every run directory under results/
    python -m scripts.make_figures root=path/to/results
    python -m scripts.make_figures dir=results/circle_width # one run directory

A run directory holds the tables of one run and its config.yaml, whose `name` is the experiment
(a drift sweep is recognised by its fits.csv); its figures are drawn by the renderer of
that experiment (`experiments.figures`), the same function the run itself used, into PNG and PDF
beside the tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from experiments.figures import has_renderer, render
from scripts.common import parse_kv


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


def main(argv: list[str]) -> None:
    args = parse_kv(argv, dict(root="results", dir=None))
    if args["dir"] is not None:
        if not render_dir(Path(args["dir"])):
            sys.exit(f"error: {args['dir']} holds no experiment tables (CSV tables and the config.yaml naming the experiment)")
        return
    root = Path(args["root"])
    done = sum(render_dir(run_dir) for run_dir in sorted(p for p in root.glob("*") if p.is_dir()))
    if not done:
        sys.exit(f"error: no tables found under {root}/; run an experiment first (python -m experiments.run +exp=<name>)")


if __name__ == "__main__":
    main(sys.argv[1:])
