"""Sweeps through a real SLURM cluster (`hydra/launcher=submitit_slurm`): the one-node test cluster of
scripts/slurm_cluster.sh, which .ci/run brings up. Skipped where no cluster answers."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def cluster_answers() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not cluster_answers(), reason="no SLURM cluster (scripts/slurm_cluster.sh up)")]

TINY = ["+exp=drift_sweep", "model.depth=3", "train.steps=4", "drift_points=3", "n_probe=9", "data.n_train=6", "seed=0"]
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=5"]


def sweep(cli, tmp: Path, *args: str, launcher=SLURM) -> subprocess.CompletedProcess:
    """`python -m experiments.run -m` of the tiny drift sweep, through the session's forked command
    server (conftest's `cli`: the command's imports paid once; the SLURM jobs are processes of their own)."""
    return cli(["-m", *TINY, *args, f"out_dir={tmp}/out", f"hydra.sweep.dir={tmp}/multirun", *launcher])


def queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def submit(cmd: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """Start a sweep in the background; return it once it has printed the ids of the jobs it submitted."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    deadline = time.time() + 120
    while not any(line.startswith("submitted ") for line in lines):
        assert time.time() < deadline and proc.poll() is None, "".join(lines)[-2000:]
        lines.append(proc.stderr.readline())
    return proc, submitted_ids("".join(lines))


def submitted_ids(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if line.startswith("submitted "))
    return line.split(": ", 1)[1].split(" (logs")[0].split(", ")


def test_sweep_runs_as_slurm_jobs_and_aggregates_as_the_basic_launcher(tmp_path, cli):
    proc = sweep(cli, tmp_path / "slurm", "width=16,24")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = submitted_ids(proc.stderr)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1  # one SLURM array
    configs = [yaml.safe_load(p.read_text()) for p in (tmp_path / "slurm/out/jobs").glob("*.config.yaml")]
    assert sorted(c["provenance"]["slurm_job_id"] for c in configs) == sorted(ids)  # each job ran as its SLURM array task
    assert all(c["provenance"]["cpu_threads"] == 1 for c in configs)  # SLURM_CPUS_PER_TASK, not every core
    logs = list((tmp_path / "slurm/multirun/.submitit").rglob("*_log.err"))
    assert logs and not any("it/s" in p.read_text() for p in logs)  # no progress bars in the job logs
    basic = sweep(cli, tmp_path / "basic", "width=16,24", launcher=[])
    assert basic.returncode == 0, basic.stderr[-2000:]
    columns = lambda t: t.drop(columns=["job"]).sort_values(["width", "t"], ignore_index=True)  # noqa: E731
    pd.testing.assert_frame_equal(
        columns(pd.read_csv(tmp_path / "slurm/out/table.csv")),
        columns(pd.read_csv(tmp_path / "basic/out/table.csv")),
        check_exact=False,
        rtol=1e-6,
    )


def test_a_failing_job_ends_the_sweep_with_its_own_error_line_and_the_rest_aggregated(tmp_path, cli):
    start = time.time()
    proc = sweep(cli, tmp_path, "width=16", "train.lr=1,1000000")  # the second job diverges on purpose
    elapsed = time.time() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = last_line(proc.stderr)
    assert line.startswith("error: job #1 (train.lr=1000000, SLURM job ") and "failed: gradient descent diverged" in line, line
    assert "warning: 1 of 2 job(s) finished and were aggregated; missing: train.lr=1000000" in proc.stderr
    assert elapsed < 60, elapsed
    table = pd.read_csv(tmp_path / "out/table.csv")
    assert set(table.width) == {16} and table.job.nunique() == 1


def test_a_bad_value_anywhere_in_the_grid_queues_nothing(tmp_path, cli):
    before = queue()
    proc = sweep(cli, tmp_path, "width=16,0")
    assert proc.returncode == 2
    assert (
        last_line(proc.stderr) == "error: job #1 (width=0): model.widths entries must be an integer >= 1, got 0; nothing was run or queued"
    )
    assert set(queue()) <= set(before) and not (tmp_path / "multirun/.submitit").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["hydra.launcher.partition=gpu"], "error: unknown hydra.launcher.partition 'gpu'; allowed: debug"),
        (
            ["hydra.launcher.partitionn=debug"],
            "error: unknown config key 'hydra.launcher.partitionn'; allowed keys in 'hydra.launcher': _target_,",
        ),
    ],
)
def test_bad_launcher_settings_are_refused_before_anything_is_queued(tmp_path, args, message, cli):
    before = queue()
    proc = sweep(cli, tmp_path, "width=16,24", *args)
    assert proc.returncode == 2 and last_line(proc.stderr).startswith(message), proc.stderr[-1000:]
    assert set(queue()) <= set(before)  # nothing new queued


def test_sigterm_after_submission_says_how_to_cancel_and_resume(tmp_path):
    cmd = [sys.executable, "-m", "experiments.run", "-m", *TINY, "width=256,512", "train.steps=3000", *SLURM]
    cmd += [f"out_dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multirun"]
    proc, ids = submit(cmd)
    try:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 143
        line = last_line(rest)
        array = ids[0].split("_")[0]
        assert line.startswith(f"interrupted (SIGTERM) after submitting 2 job(s) ({', '.join(ids)}): "), line
        assert f"cancel them with `scancel {array}`" in line and line.endswith(
            "run the same command again to resume (finished jobs are skipped)"
        )
        assert set(ids) & set(queue())  # the jobs were not cancelled by the interruption
    finally:
        subprocess.run(["scancel", ids[0].split("_")[0]], capture_output=True)
        deadline = time.time() + 60
        while set(ids) & set(queue()) and time.time() < deadline:  # gone before the next test looks at the queue
            time.sleep(0.5)


def test_an_array_cancelled_with_scancel_ends_the_command_saying_so(tmp_path):
    """The tiled CNTK of 2500 digits (36 jobs of a minute or more; two run on the two-CPU node, the
    others wait); `scancel` of the array once one has started: the command ends with SLURM's reason
    (or, for a job that never started, that it left the queue without a log) and lists no cancelled
    job as still running."""
    cmd = [sys.executable, "-m", "experiments.run", "-m", "+exp=kernel_tiles", "progress=false", f"store={tmp_path}/store", *SLURM]
    cmd += [f"out_dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multirun"]
    proc, ids = submit(cmd)
    array = ids[0].split("_")[0]
    try:
        running = lambda: subprocess.run(["squeue", "-h", "-r", "-t", "R", "-o", "%i", "-j", array], capture_output=True, text=True).stdout  # noqa: E731
        deadline = time.time() + 120
        while not running().split() and time.time() < deadline:  # a job has started
            time.sleep(0.5)
        time.sleep(3)  # inside its Python
        subprocess.run(["scancel", array], check=True)
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
        subprocess.run(["scancel", array], capture_output=True)
    assert proc.returncode == 2, rest[-2000:]
    line = last_line(rest)
    assert line.startswith("error: job #") and ("CANCELLED" in line or "left SLURM's queue" in line), line
    assert "still running" not in line and line.endswith("fix it and run the same command again (finished jobs are skipped)"), line


def test_a_time_limit_below_the_checkpoint_interval_is_refused(tmp_path, cli):
    before = queue()
    args = ["-m", "+exp=mnist_convergence", "seed=0,1", "checkpoint_minutes=5", *SLURM]
    proc = cli([*args, "hydra.launcher.timeout_min=2", f"out_dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multirun"])
    assert proc.returncode == 2
    assert last_line(proc.stderr).startswith("error: hydra.launcher.timeout_min=2 is below checkpoint_minutes=5"), proc.stderr[-1000:]
    assert set(queue()) <= set(before)  # nothing new queued


def test_kernel_tiles_run_as_one_slurm_array_into_one_store(tmp_path, cli):
    """Each tile of the tiled kernel a SLURM array task writing into the same store; assembled and
    predicted from when the last one has finished, equal to the kernel computed in one process."""
    tiny = ["+exp=kernel_tiles", "data.n_train=12", "data.n_test=6", "image_size=7", "row_blocks=2", "model.depth=2", "progress=false"]
    proc = cli(["-m", *tiny, f"store={tmp_path}/store", f"out_dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multirun", *SLURM])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(submitted_ids(proc.stderr)) == 3  # 2 x 2 blocks, the upper triangle
    hosts = pd.read_csv(tmp_path / "out/timing_tiles.csv")
    assert len(hosts) == 3 and (tmp_path / "out/table.csv").exists()
    assert cli([*tiny, "tile=-1", f"store={tmp_path}/one", f"out_dir={tmp_path}/one_out"]).returncode == 0
    for name in ("nngp", "ntk"):
        assert np.allclose(np.load(tmp_path / f"store/kernel_{name}.npy"), np.load(tmp_path / f"one/kernel_{name}.npy"), rtol=1e-12, atol=0)
