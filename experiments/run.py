"""Command-line entry point: `python -m experiments.run +exp=<name> [key=value ...]`.

Hydra composes configs/ into one config; `main` resolves nothing itself but dispatches to the
plain `run(cfg)` of the chosen experiment (tests call those directly with a composed config).
Errors a user can make (a misspelled key, an unknown experiment, a value out of range) end in one
line on stderr starting with "error:" and exit status 2, before anything is written.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from experiments import (
    circle_activations,
    circle_regression,
    circle_width,
    drift,
    mnist_convergence,
    mnist_generalization,
    mnist_lr_equivalence,
    mnist_pca,
)
from ntk.train import DivergenceError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

USER_ERRORS = (ValueError, DivergenceError, ConfigCompositionException, MissingConfigException, OmegaConfBaseException)

EXPERIMENTS = {
    "circle_activations": circle_activations.run,
    "circle_width": circle_width.run,
    "circle_regression": circle_regression.run,
    "mnist_pca": mnist_pca.run,
    "mnist_convergence": mnist_convergence.run,
    "mnist_lr_equivalence": mnist_lr_equivalence.run,
    "mnist_generalization": mnist_generalization.run,
    "drift_sweep": drift.run,
}


def available_experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "exp").glob("*.yaml"))


def dispatch(cfg: DictConfig) -> object:
    """Run the experiment named by `cfg.name`."""
    if cfg.name not in EXPERIMENTS:
        raise ValueError(f"no experiment chosen (name={cfg.name}); add +exp=<name>, allowed: {', '.join(available_experiments())}")
    return EXPERIMENTS[cfg.name](cfg)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        dispatch(cfg)
    except USER_ERRORS as exc:  # exit here: Hydra would add its own line about the failed job
        _fail(exc)


def _unknown_key_message(key: str) -> str:
    """Name the first unknown part of the dotted `key` and the keys allowed at that level."""
    from hydra import compose, initialize_config_dir

    exp = [a for a in sys.argv[1:] if a.startswith("+exp=")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=exp)
    parts = key.split(".")
    node, depth = cfg, 0
    while depth < len(parts) and isinstance(node, DictConfig) and parts[depth] in node:
        node, depth = node[parts[depth]], depth + 1
    parent = ".".join(parts[:depth])
    allowed = ", ".join(sorted(map(str, node.keys()))) if isinstance(node, DictConfig) else "(none: not a group)"
    where = f" in {parent!r}" if parent else ""
    bad = ".".join(parts[: depth + 1])
    return f"unknown config key {bad!r}" + (f" (in {key!r})" if bad != key else "") + f"; allowed keys{where}: {allowed}"


def _validation_error(exc: BaseException | None) -> ValidationError | None:
    """The OmegaConf type error behind `exc`, if any (Hydra wraps it)."""
    while exc is not None:
        if isinstance(exc, ValidationError) and getattr(exc, "full_key", None):
            return exc
        exc = exc.__cause__
    return None


def one_line(exc: BaseException) -> str:
    """A one-line description of a user error raised by Hydra, OmegaConf or an experiment."""
    text = str(exc)
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", text)
        what = found.group(1) if found else text.splitlines()[0]
        group, _, name = what.rpartition("/")
        if group == "exp":
            return f"unknown experiment {name!r}; allowed: {', '.join(available_experiments())}"
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")) if group else []
        return f"unknown config {what!r}" + (f"; allowed {group}: {', '.join(options)}" if options else "")
    invalid = _validation_error(exc)
    if invalid is not None:
        first = str(invalid.msg).splitlines()[0] if getattr(invalid, "msg", None) else str(invalid).splitlines()[0]
        return f"invalid value for {invalid.full_key}: {first}"
    if isinstance(exc, ConfigCompositionException):
        found = re.search(r"Could not override '([^']+)'", text)
        if found and isinstance(exc.__cause__, (ConfigKeyError, ConfigAttributeError)):  # key not in struct / schema
            return _unknown_key_message(found.group(1))
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _fail(exc: BaseException) -> None:
    print(f"error: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's report
    try:
        _hydra_main()
    except USER_ERRORS as exc:
        _fail(exc)


if __name__ == "__main__":
    main()
