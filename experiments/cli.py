"""What the command line does around a run: checks before it starts, one-line errors, signals.

Errors a user can make (a misspelled key, an unknown experiment, a value out of range, an out_dir
that cannot be written, a model or kernel that does not fit in memory, an unavailable CUDA device,
a CUDA out-of-memory error) end in one line on stderr starting with "error:" and exit status 2,
before anything is written. Progress bars are closed first, so the line stands on its own. Ctrl-C
(SIGINT) or SIGTERM stops the run: the jobs already finished stay under out_dir/.parts (every file
is written through a rename, so none is left half written), one line says how to resume, and the
exit status is 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from experiments.persistence import show_progress
from experiments.runner import CONFIG_DIR, experiment_names, load_experiment
from experiments.schema import register_all
from ntk.memory import NTKMemoryError, check_fits
from ntk.model import NTKMLP
from ntk.train import DivergenceError
from ntk.utils import resolve_device, resolve_dtype

USER_ERRORS = (
    ValueError,
    DivergenceError,
    NTKMemoryError,
    torch.OutOfMemoryError,
    ConfigCompositionException,
    MissingConfigException,
    OmegaConfBaseException,
)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that the same cleanup runs as for Ctrl-C."""


def on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted()


def check_writable_dir(path: str, key: str) -> None:
    """Refuse a directory that is a file, or that cannot be created or written, without creating anything."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{key}={path} is a file; it must be a directory (existing or creatable)")
    existing = target
    while not existing.exists():  # the deepest ancestor that exists decides whether the rest can be created
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{key}={path} cannot be created: {existing} is a file")
    try:  # a probe that removes itself: permissions alone do not tell (root, read-only or virtual file systems)
        tempfile.TemporaryDirectory(dir=existing, prefix=".probe-").cleanup()
    except OSError as exc:
        verb = "written" if existing == target else "created"
        raise ValueError(f"{key}={path} cannot be {verb}: {exc.strerror or exc} in {existing}") from None


def apply_threads(cfg: DictConfig) -> int | None:
    """torch's CPU threads for this run: `threads=` when the config has it, else SLURM_CPUS_PER_TASK
    inside a SLURM job (torch's default would take every core of the node); None: left alone."""
    threads = cfg.get("threads")
    if threads is None and os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        threads = int(os.environ["SLURM_CPUS_PER_TASK"])
    if threads is not None:
        torch.set_num_threads(int(threads))
    return threads


def check_model_fits(cfg: DictConfig) -> None:
    """Refuse, before any data or kernel is computed, widths whose hidden weights alone exceed the
    memory budget (the full check, with the input dimension, is in `NTKMLP`)."""
    model = cfg.get("model")
    if model is None or "widths" not in model or "depth" not in model:
        return
    itemsize = resolve_dtype(cfg.get("dtype", "float32")).itemsize
    for width in model.widths:
        hidden = NTKMLP.parameter_count([0, *[width] * (model.depth - 1), 0])  # the hidden layers alone
        check_fits(
            f"an NTK MLP of width {width} and depth {model.depth} (at least {hidden:,} parameters)",
            hidden * itemsize,
            resolve_device(cfg.get("device", "auto")),
        )


def _unknown_key_message(key: str) -> str:
    """Name the first unknown part of the dotted `key` and the keys allowed at that level."""
    from hydra import compose, initialize_config_dir

    register_all()
    groups = [a for a in sys.argv[1:] if a.startswith(("+exp=", "hydra/"))]  # the experiment, Hydra's launcher and sweeper
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=groups, return_hydra_config=key.startswith("hydra."))
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
    if isinstance(exc, torch.OutOfMemoryError):
        return _out_of_memory_message(text)
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", text)
        what = found.group(1) if found else text.splitlines()[0]
        group, _, name = what.rpartition("/")
        if group == "exp":
            return f"unknown experiment {name!r}; allowed: {', '.join(experiment_names())}"
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


def _out_of_memory_message(text: str) -> str:
    """One line for PyTorch's out-of-memory paragraph: what it tried to allocate, out of what, and what to do."""
    facts = re.findall(
        r"Tried to allocate [^.]+\.\d+ \w+|GPU \d+ has a total capacity of [^.]+\.\d+ \w+ of which [^.]+\.\d+ \w+ is free", text
    )
    detail = f" ({'; '.join(facts)})" if facts else ""
    return (
        f"CUDA out of memory{detail}; the memory guard underestimated this step: use smaller widths or fewer inputs, "
        "or set a lower NTK_MEMORY_LIMIT so that kernels are computed in smaller blocks"
    )


def say(line: str) -> None:
    """Print `line` on stderr on a line of its own: open progress bars are closed first."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except AttributeError:  # a bar the signal interrupted in its constructor: nothing drawn to close
            tqdm._instances.discard(bar)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(exc: BaseException) -> None:
    say(f"error: {one_line(exc)}")
    sys.exit(2)


def interrupted(cfg: DictConfig, exc: BaseException) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this line short
    parts = Path(cfg.out_dir) / ".parts"
    kept = sum(1 for p in parts.rglob("*") if p.is_file() and not p.name.startswith(".")) if parts.is_dir() else 0
    name, status = signal_of(exc)
    say(f"interrupted ({name}): {kept} finished part(s) kept under {parts}; run the same command again to resume")
    sys.exit(status)


def signal_of(exc: BaseException) -> tuple[str, int]:
    """The signal behind an interruption and the exit status that reports it (128 + its number)."""
    return ("SIGTERM", 143) if isinstance(exc, Interrupted) else ("SIGINT", 130)


def precheck(cfg: DictConfig) -> None:
    """The checks that need no work: the experiment's own range checks, out_dir, model memory, data.root
    (also run by a sweep on every job of its grid before any starts, `experiments.launching`)."""
    experiment = load_experiment(cfg.name)
    if experiment.check is not None:
        experiment.check(cfg)
    check_writable_dir(cfg.out_dir, "out_dir")
    show_progress(cfg)  # progress is auto, true or false
    check_model_fits(cfg)
    if "data" in cfg and cfg.data.get("root") is not None and Path(cfg.data.root).exists() and not Path(cfg.data.root).is_dir():
        raise ValueError(f"data.root={cfg.data.root} is a file; it must be torchvision's data directory (files in <root>/MNIST/raw)")
