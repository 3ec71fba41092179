"""The two ends of `scripts/gpu_check.sh`: what machine this is, and the report of the whole check.

    python -m scripts.gpu_report env OUT_DIR       # OUT_DIR/env.json: python, torch, CUDA, GPU, cores, git revision
    python -m scripts.gpu_report report OUT_DIR    # OUT_DIR/gpu.md from env.json, steps.tsv and the steps' outputs

steps.tsv holds one line per step of the check: name, exit status, wall seconds, log file. The
report quotes each step's status and time, the test suite's summary line, the device comparison
(compare/compare.md) and the benchmark tables (bench/*.md), so that gpu.md can be committed as
results/bench/gpu.md with its provenance.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

from experiments.persistence import atomic_write_json, atomic_write_text, git_revision


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return dict(
        python=platform.python_version(),
        python_executable=sys.executable,
        torch=str(torch.__version__),
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        cuda_available=cuda,
        cuda_devices=torch.cuda.device_count() if cuda else 0,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        gpu_memory_gib=round(props.total_memory / 1024**3, 1) if cuda else None,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        cpu_cores=os.cpu_count(),
        platform=platform.platform(),
        git_revision=git_revision(),
    )


SUMMARY = {
    "tests": r"\b(passed|failed|error|no tests ran)\b",
    "compare": r"^Tiny experiments on",
    "bench_ntk": r"layerwise: median|^error",
}  # the line that sums a step up


def last_line(path: Path, pattern: str = "") -> str:
    """The last non-empty line of a log that matches `pattern` (any line without one)."""
    if not path.exists():
        return "(no log)"
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip() and re.search(pattern, line.strip())]
    return lines[-1] if lines else "(no summary line)"


def report(out: Path) -> str:
    env = json.loads((out / "env.json").read_text())
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line.strip()]
    device = f"{env['gpu']} ({env['gpu_memory_gib']} GiB)" if env["cuda_available"] else "no CUDA device: the check ran its CPU fallback"
    lines = [
        "# GPU check",
        "",
        f"Command: `scripts/gpu_check.sh {out}` at git revision {env['git_revision']}.",
        f"Device: {device}; torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), Python {env['python']}, "
        f"{env['cpu_cores']} CPU cores, {env['platform']}. TF32 matmul allowed: {env['matmul_allow_tf32']}.",
        "",
        "| step | exit status | wall time (s) | last line |",
        "| --- | --- | --- | --- |",
    ]
    for name, status, seconds, log in steps:
        summary = last_line(out / log, SUMMARY.get(name, "")).replace("|", "/")
        lines.append(f"| {name} | {status}{' (time limit)' if status in ('124', '137') else ''} | {float(seconds):.0f} | {summary} |")
    compare = out / "compare" / "compare.md"
    if compare.exists():
        lines += ["", "## Tiny experiments, the GPU against the CPU", "", compare.read_text().strip()]
    for name, title in (
        ("ntk", "Layer-wise kernel against the other methods"),
        ("ntk_breakdown", "Where the layer-wise kernel's time goes"),
        ("train_step", "Training step"),
        ("train_step_mnist", "Training step on MNIST inputs"),
    ):
        table = out / "bench" / f"{name}.md"
        if table.exists():
            lines += ["", f"## {title} (`bench/{name}`)", "", table.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("env", "report"):
        sys.exit("error: usage: python -m scripts.gpu_report env|report OUT_DIR")
    out = Path(argv[1])
    if argv[0] == "env":
        atomic_write_json(out / "env.json", environment())
        print(json.dumps(environment(), indent=1))
    else:
        text = report(out)
        atomic_write_text(out / "gpu.md", text)
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
