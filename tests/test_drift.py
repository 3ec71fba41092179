import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import experiments.drift_sweep as drift
from experiments.drift_sweep import aggregate
from experiments.fits import fit_exponent
from ntk.drift import DriftLogger
from ntk.model import NTKMLP
from ntk.train import gradient_descent

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [
    "-m",
    "+exp=drift_sweep",
    "width=16,32",
    "model.depth=2,3",
    "seed=0",
    "train.steps=6",
    "drift_points=3",
    "n_probe=9",
    "data.n_train=8",
    "progress=false",
]
ONE_DEPTH = [a for a in SWEEP if not a.startswith(("width=", "model.depth="))] + ["model.depth=2"]  # the grid given by the test


def sweep(cli, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The drift sweep of SWEEP into `out` (through the `cli` fixture)."""
    proc = cli([*SWEEP, f"out_dir={out}", f"hydra.sweep.dir={out.parent / 'multirun'}", *extra], env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_drift_logger_against_an_independent_computation():
    """The logger's drifts (layer-wise kernels) against kernels by torch.func Jacobian contraction and
    the weights as one vector (torch.nn.utils.parameters_to_vector), with torch.linalg's norms."""
    from torch.func import functional_call, jacrev, vmap
    from torch.nn.utils import parameters_to_vector

    model = NTKMLP(2, 40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64)
    probe = torch.randn(5, 2, dtype=torch.float64)

    def jacobian_kernel(inputs):
        params = {k: v.detach() for k, v in model.named_parameters()}
        j = vmap(jacrev(lambda p, xi: functional_call(model, p, (xi[None],))[0, 0]), in_dims=(None, 0))(params, inputs)
        flat = torch.cat([v.reshape(len(inputs), -1) for v in j.values()], 1)
        return flat @ flat.T

    k0, p0, w0 = jacobian_kernel(x), jacobian_kernel(probe), parameters_to_vector(model.parameters()).detach().clone()
    logger = DriftLogger(model, x, probe)
    rows = []
    gradient_descent(model, x, x[:, :1] * x[:, 1:], lr=1.0, steps=5, record_t=[0.0, 5.0], callback=lambda s: rows.append(logger(s)))
    assert rows[0]["ntk_drift_train"] < 1e-14 and rows[0]["weight_drift"] == 0.0
    w = parameters_to_vector(model.parameters()).detach()
    assert rows[1]["weight_drift"] == pytest.approx((torch.linalg.vector_norm(w - w0) / torch.linalg.vector_norm(w0)).item(), rel=1e-10)
    fro = lambda a: torch.linalg.matrix_norm(a).item()  # noqa: E731
    assert rows[1]["ntk_drift_train"] == pytest.approx(fro(jacobian_kernel(x) - k0) / fro(k0), rel=1e-8)
    assert rows[1]["ntk_drift_probe"] == pytest.approx(fro(jacobian_kernel(probe) - p0) / fro(p0), rel=1e-8)
    assert rows[1]["ntk_drift_train"] > 1e-6 and rows[1]["weight_drift"] > 1e-6  # training moved both
    assert rows[1]["loss"] < rows[0]["loss"]


def test_exponent_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    widths = np.repeat([64, 128, 256, 512, 1024, 2048], 3)
    fits = [fit_exponent(widths, 3.0 * widths**-0.5 * np.exp(rng.normal(0, 0.05, widths.size))) for _ in range(400)]
    exponents = np.array([f["exponent"] for f in fits])
    covered = np.mean([f["ci_low"] < -0.5 < f["ci_high"] for f in fits])
    assert abs(exponents.mean() + 0.5) < 0.002
    assert 0.92 < covered < 0.98  # the 95% interval covers the true exponent about 95% of the time
    assert np.isnan(fit_exponent([64, 64], [1.0, 2.0])["exponent"])  # not enough to fit


def test_multirun_sweep_aggregates_and_resumes_without_duplicates(tmp_path, cli):
    out = tmp_path / "sweep"
    sweep(cli, out)
    jobs = sorted(p for p in (out / "jobs").glob("*.csv") if not p.name.endswith(".theta0.csv"))
    assert len(jobs) == 4
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 4 * 3 and not table.duplicated(["width", "depth", "seed", "t"]).any()
    assert set(table.columns) >= {"width", "depth", "seed", "t", "loss", "ntk_drift_train", "ntk_drift_probe", "weight_drift"}
    fits = pd.read_csv(out / "fits.csv")
    assert set(fits.quantity) >= {"ntk_drift_train", "weight_drift"}
    for fig in ("drift_vs_width.png", "drift_vs_depth.png"):
        assert (out / fig).stat().st_size > 0

    # "Kill" the sweep: one job never finished (its table is missing), another left a temporary file.
    victim = jobs[1]
    before = {p.name: p.stat().st_mtime_ns for p in jobs}
    victim.unlink()
    (out / "jobs" / f".{jobs[2].name}.123.tmp").write_text("partial")
    aggregate(out)  # a partial sweep aggregates too
    assert len(pd.read_csv(out / "table.csv")) == 3 * 3

    proc = sweep(cli, out)
    assert proc.stdout.count("skip:") == 3
    after = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").glob("*.csv") if not p.name.endswith(".theta0.csv")}
    assert set(after) == set(before)
    assert all(after[name] == before[name] for name in before if name != victim.name)
    resumed = pd.read_csv(out / "table.csv")
    assert len(resumed) == 4 * 3 and not resumed.duplicated(["width", "depth", "seed", "t"]).any()
    pd.testing.assert_frame_equal(resumed.drop(columns="job"), table.drop(columns="job"), check_exact=False, rtol=1e-12)


@pytest.mark.slow  # its quick equivalent: test_a_failing_submitit_job_ends_the_sweep_with_its_error_line (two submitit jobs, one aggregated)
def test_submitit_local_launcher_runs_the_sweep(tmp_path, cli):
    out = tmp_path / "sweep"
    sweep(cli, out, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "threads=1")
    assert len(pd.read_csv(out / "table.csv")) == 4 * 3


def test_joblib_launcher_runs_jobs_in_parallel_with_threads_split(tmp_path, cli):
    """Two worker processes (not this one) run the four jobs, each job with half the cores' threads.
    (Whether two jobs overlap in time depends on how fast the second worker starts: not asserted.)"""
    out = tmp_path / "sweep"
    proc = sweep(cli, out, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib" in proc.stdout + proc.stderr
    assert len(pd.read_csv(out / "table.csv")) == 4 * 3
    jobs = [OmegaConf.load(p).provenance for p in sorted((out / "jobs").glob("*.config.yaml"))]
    assert len(jobs) == 4
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert {job.cpu_threads for job in jobs} == {max(1, cores // 2)}
    assert len({job.pid for job in jobs}) == 2 and all(job.pid != os.getpid() for job in jobs)


def test_job_refuses_several_widths(compose_cfg, tmp_path):
    cfg = compose_cfg(["+exp=drift_sweep", "model.widths=[16,32]", f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="a drift job trains one network"):
        drift.run(cfg)
    assert not any(tmp_path.iterdir())


def test_a_bad_value_anywhere_in_the_grid_runs_no_job(tmp_path, cli):
    out = tmp_path / "sweep"
    proc = cli([*ONE_DEPTH, "width=16,0", f"out_dir={out}", f"hydra.sweep.dir={tmp_path / 'multirun'}"])
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("error: job #")
        and "width=0): model.widths entries must be an integer >= 1" in proc.stderr
    )
    assert not out.exists()  # not even the first, good job ran


def test_a_failing_submitit_job_ends_the_sweep_with_its_error_line(tmp_path, cli):
    """submitit_local: one job diverges on purpose; the command ends with its error line, the other job aggregated."""
    out = tmp_path / "sweep"
    args = [*ONE_DEPTH, "width=16", "train.lr=1,1000000", "threads=1"]
    proc = cli(
        [
            *args,
            f"out_dir={out}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
        ]
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job #1 (train.lr=1000000, job ") and "failed: gradient descent diverged" in last, last
    assert "warning: 1 of 2 job(s) finished and were aggregated; missing: train.lr=1000000" in proc.stderr
    assert set(pd.read_csv(out / "table.csv").seed) == {0} and pd.read_csv(out / "table.csv").job.nunique() == 1


def test_error_line_is_the_jobs_own_one_line_error(tmp_path):
    from experiments.launching import error_line

    log = tmp_path / "log.err"
    log.write_text("Traceback...\nwarning: something\nerror: the first\nmore text\nerror: the one\n\n")
    assert error_line(log) == "error: the one"
    log.write_text("slurmstepd: error: *** JOB 7 CANCELLED ***\n")
    assert error_line(log) == "*** JOB 7 CANCELLED ***"
    log.write_text(
        "slurmstepd-vm: error: *** JOB 82 ON vm CANCELLED AT 2026-12-07T01:58:35 ***\nsrun: forcing job termination\nsrun: error: vm: task 0: Killed\n"
    )
    assert error_line(log) == "*** JOB 82 ON vm CANCELLED AT 2026-12-07T01:58:35 ***"  # why SLURM ended it, not srun's echo
    log.write_text("Traceback (most recent call last):\nValueError: bad\n")
    assert error_line(log) == "ValueError: bad"
    assert error_line(tmp_path / "missing.err") is None
