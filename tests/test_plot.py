import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scripts.plot_circle_width import render

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table(tmp_path):
    gamma = np.linspace(-np.pi, np.pi, 9)
    rows = [dict(width=w, seed=s, t=t, gamma=g, ntk=0.2 + 0.1 * np.cos(g) + 0.001 * s, loss=0.1)
            for w in (500, 10000) for s in range(2) for t in (0.0, 200.0) for g in gamma]
    path = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_render_from_saved_table(table, tmp_path):
    paths = render(table, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_script_entry_point(table, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scripts.plot_circle_width", f"table={table}", f"out={tmp_path / 'cli'}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli.png").exists() and (tmp_path / "cli.pdf").exists()


def test_table_without_kernel_column_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame(dict(width=[1], seed=[0], t=[0.0], gamma=[0.0])).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"table lacks columns \['ntk'\]"):
        render(path, tmp_path / "fig")
