"""Command-line entry point: `python -m experiments.run +exp=<name> [key=value ...]`.

Hydra composes configs/ into one config; `dispatch` runs the experiment it names
(`experiments.runner.load_experiment`: configs/exp/<name>.yaml and experiments/<name>.py), after the
checks that need no work (`experiments.cli`). Errors become one line and exit status 2, signals
keep finished parts (`experiments.cli` says how).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments import cli
from experiments.runner import load_experiment


def dispatch(cfg: DictConfig) -> object:
    """Run the experiment named by `cfg.name`."""
    experiment = load_experiment(cfg.name)
    cli.check_writable_dir(cfg.out_dir, "out_dir")
    cli.check_model_fits(cfg)
    if "data" in cfg and cfg.data.get("root") is not None and Path(cfg.data.root).exists() and not Path(cfg.data.root).is_dir():
        raise ValueError(f"data.root={cfg.data.root} is a file; it must be torchvision's data directory (files in <root>/MNIST/raw)")
    return experiment.run(cfg)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        dispatch(cfg)
    except cli.USER_ERRORS as exc:  # exit here: Hydra would add its own line about the failed job
        cli.fail(exc)
    except KeyboardInterrupt as exc:
        cli.interrupted(cfg, exc)


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's report
    signal.signal(signal.SIGTERM, cli.on_sigterm)
    try:
        _hydra_main()
    except cli.USER_ERRORS as exc:
        cli.fail(exc)
    except KeyboardInterrupt as exc:  # before a config exists (while Hydra composes)
        name, status = cli.signal_of(exc)
        cli.say(f"interrupted ({name}) before the run started; nothing was written")
        sys.exit(status)


if __name__ == "__main__":
    main()
