"""The GPU check's parts that run anywhere: the table comparison, the wheel list, and (slow) the
whole script's CPU fallback."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scripts.compare_devices import compare_tables, tables_of

ROOT = Path(__file__).resolve().parent.parent


def by_column(rows):
    return {r["column"]: r for r in rows}


def test_compare_tables_measures_each_column_against_its_scale():
    a = pd.DataFrame(dict(width=[10, 20], kind=["net", "limit"], loss=[2.0, -4.0], drift=[0.1, np.nan]))
    same = by_column(compare_tables(a, a.copy()))
    assert {c: r["rel_diff"] for c, r in same.items()} == dict(width=0.0, kind=0.0, loss=0.0, drift=0.0)
    b = a.copy()
    b.loc[0, "loss"] = 2.0 + 4e-6  # |a - b| = 4e-6 against the column's largest |a| = 4
    assert by_column(compare_tables(a, b))["loss"]["rel_diff"] == pytest.approx(1e-6)
    b = a.copy()
    b.loc[1, "kind"] = "train"
    assert by_column(compare_tables(a, b))["kind"]["rel_diff"] == np.inf
    b = a.copy()
    b.loc[0, "drift"] = np.nan  # NaN where the other has a number
    assert by_column(compare_tables(a, b))["drift"]["rel_diff"] == np.inf
    assert compare_tables(a, a.iloc[:1])[0]["column"] == "(shape)"


def test_drift_job_files_are_matched_whatever_their_device_key(tmp_path):
    for run, key in (("a", "0123abcd"), ("b", "ffff0000")):
        (tmp_path / run / "jobs").mkdir(parents=True)
        for suffix in ("csv", "theta0.csv"):
            (tmp_path / run / "jobs" / f"{key}.{suffix}").write_text("x\n1\n")
    assert set(tables_of(tmp_path / "a")) == set(tables_of(tmp_path / "b")) == {"jobs/job0.csv", "jobs/job0.theta0.csv"}


def test_the_wheel_list_covers_what_the_check_may_find_missing_at_the_pinned_versions():
    check = (ROOT / "scripts" / "gpu_check.sh").read_text()
    wheels = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    asked = set(re.findall(r'"[\w.]+": "(\w+)"', check))  # module -> wheel name, as gpu_check.sh installs them
    assert asked == {
        "hydra_core",
        "omegaconf",
        "antlr4_python3_runtime",
        "mlxtend",
        "hydra_joblib_launcher",
        "hydra_submitit_launcher",
        "submitit",
    }
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split() if "==" in line)
    fetched = {name.replace("-", "_") for name in re.findall(r"\$\(pin ([\w-]+)\)", wheels)} | set(
        m.replace("-", "_") for m in re.findall(r'"([\w-]+)==[\d.]+"', wheels)
    )
    assert asked <= fetched
    for name in re.findall(r"\$\(pin ([\w-]+)\)", wheels):
        assert name in pins, name  # versions come from requirements.txt


@pytest.mark.slow
def test_the_check_runs_its_cpu_fallback_end_to_end(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, GPU_CHECK_TESTS="tests/test_gpu_check.py", PYTHON=sys.executable)  # (pytest.ini leaves slow out)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    report = (out / "gpu.md").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no CUDA device: the check ran its CPU fallback" in report or "GiB)" in report
    for step in ("env", "tests", "compare", "bench_ntk", "bench_train_step"):
        assert re.search(rf"^\| {step} \| 0 \|", report, re.M), step
    assert "0 column(s) off, 0 run(s) failed" in report
