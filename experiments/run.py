"""Command-line entry point: `python -m experiments.run +exp=<name> [key=value ...]`.

Hydra composes configs/ into one config; `dispatch` runs the experiment it names
(`experiments.runner.load_experiment`: configs/exp/<name>.yaml and experiments/<name>.py), after the
checks that need no work (`experiments.cli.precheck`, also run on every job of a sweep's grid before
any starts: `experiments.launching`). Errors become one line and exit status 2, signals keep finished parts
(`experiments.cli` says how).
"""

from __future__ import annotations

import os
import signal
import sys

import hydra
from omegaconf import DictConfig

from experiments import cli, launching
from experiments.runner import load_experiment
from experiments.schema import register_all

register_all()  # the config schemas, before Hydra composes (also in the processes of a sweep's jobs, which import this module)


def dispatch(cfg: DictConfig) -> object:
    """Run the experiment named by `cfg.name`."""
    cli.precheck(cfg)
    cli.apply_threads(cfg)
    return load_experiment(cfg.name).run(cfg)


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
    launching.install()  # sweeps: the grid checked before any job starts, submitted jobs watched
    try:
        _hydra_main()
    except cli.USER_ERRORS as exc:
        cli.fail(exc)
    except launching.SubmittedInterrupt as exc:  # jobs were submitted: they run on
        cli.say(exc.message)
        sys.exit(exc.status)
    except KeyboardInterrupt as exc:  # before a config exists (while Hydra composes)
        name, status = cli.signal_of(exc)
        cli.say(f"interrupted ({name}) before the run started; nothing was written")
        sys.exit(status)


if __name__ == "__main__":
    main()
