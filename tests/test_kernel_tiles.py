"""The tiled kernel experiment at tiny size: each tile a job of a Hydra multirun, one store, the
assembled kernel against the limit of all inputs at once in memory, predictions against the
in-memory solve, a failed tile and its rerun, and a store made with other settings refused."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from experiments.digits import architectures
from experiments.kernel_tiles import EXPERIMENT, inputs, network
from ntk.empirical import empirical_ntk
from ntk.limits import model_limiting_kernels
from ntk.model import NTKMLP
from ntk.predict import kernel_regression
from tests.conftest import rel_fro

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.n_train=12", "data.n_test=6", "image_size=7", "row_blocks=3", "model.depth=2", "progress=false"]


def sweep(cli, tmp: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m experiments.run -m +exp=kernel_tiles` at the tiny size (through the `cli` fixture)."""
    args = ["-m", "+exp=kernel_tiles", *TINY, f"store={tmp}/store", f"out_dir={tmp}/out", f"hydra.sweep.dir={tmp}/multirun", *extra]
    proc = cli(args, env={"HYDRA_FULL_ERROR": "1"})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_tiles_as_jobs_assemble_the_kernel_and_predict_as_in_memory(tmp_path, compose_cfg, cli):
    sweep(cli, tmp_path)  # tile=range(0,6) from the config: 3 x 3 blocks, upper triangle
    assert sorted(p.name for p in (tmp_path / "store" / "tiles").glob("*.json")) == [
        "0_0.json",
        "0_1.json",
        "0_2.json",
        "1_1.json",
        "1_2.json",
        "2_2.json",
    ]
    cfg = compose_cfg(["+exp=kernel_tiles", *TINY])
    x, labels = inputs(cfg)
    nngp, theta = model_limiting_kernels(architectures(cfg)["cntk_gap"], x)  # all 18 digits at once, in memory
    for name, ref in (("nngp", nngp), ("ntk", theta)):
        stored = np.load(tmp_path / "store" / f"kernel_{name}.npy", mmap_mode="r")
        assert rel_fro(torch.from_numpy(np.array(stored)), ref) < 1e-12
    y = F.one_hot(labels, 10).double() - 0.1
    f = kernel_regression(theta[12:, :12], theta[:12, :12], y[:12])
    table = pd.read_csv(tmp_path / "out" / "table.csv").set_index("predictor")
    assert table.loc["ntk", "test_mse"] == pytest.approx((f - y[12:]).square().sum(1).mean().item(), rel=1e-8)
    assert table.loc["ntk", "test_accuracy"] == pytest.approx((f.argmax(1) == labels[12:]).double().mean().item())
    summary = pd.read_csv(tmp_path / "out" / "timing_summary.csv").iloc[0]
    assert summary.tiles == 6 and summary.pairs == 18 * 19 // 2 and summary.compute_s > 0
    assert (tmp_path / "out" / "tiles.png").exists() and (tmp_path / "out" / "provenance.json").exists()
    assert (pd.read_csv(tmp_path / "out" / "timing_tiles.csv").gemm_gflops_float64 > 0).all()  # each tile's machine speed
    record = tmp_path / "store" / "tiles" / "0_1.json"  # a tile stored before the GEMM rate was kept still aggregates
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "gemm_gflops_float64"}))
    again = sweep(cli, tmp_path)  # everything is in the store: no tile is computed again
    assert again.stderr.count("tile (") == 0 and again.stdout.count("skip: tile") == 6
    assert pd.read_csv(tmp_path / "out" / "timing_tiles.csv").gemm_gflops_float64.isna().sum() == 1


def test_a_failed_tile_ends_the_command_with_its_line_and_a_rerun_completes_it(tmp_path, cli):
    (tmp_path / "store" / "tiles" / "1_1.npy").mkdir(parents=True)  # tile 3 cannot be written
    proc = sweep(cli, tmp_path, check=False)
    assert proc.returncode == 2
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and "1_1.npy" in last, last
    done = sorted(p.name for p in (tmp_path / "store" / "tiles").glob("*.json"))
    assert done == ["0_0.json", "0_1.json", "0_2.json"]  # the tiles before it are kept
    (tmp_path / "store" / "tiles" / "1_1.npy").rmdir()
    rerun = sweep(cli, tmp_path)
    assert rerun.stdout.count("skip: tile") == 3 and (tmp_path / "out" / "table.csv").exists()


def test_a_store_made_with_other_settings_and_a_tile_out_of_range_are_refused(tmp_path, cli):
    sweep(cli, tmp_path, "tile=0")
    other = sweep(cli, tmp_path, "tile=1", "data.n_test=7", check=False)
    assert other.returncode == 2
    assert "was made with n1=18, not 19" in other.stderr or "settings.data.n_test=6, not 7" in other.stderr, other.stderr[-500:]
    bad = sweep(cli, tmp_path, "tile=6", check=False)
    assert bad.returncode == 2 and "tile must be -1 (every tile) or 0 ... 5 (row_blocks=3 gives 6 tiles), got 6" in bad.stderr
    assert sorted(p.name for p in (tmp_path / "store" / "tiles").glob("*.json")) == ["0_0.json"]


@pytest.mark.parametrize("source", ["seed", "checkpoint"])
def test_an_empirical_kernel_from_a_seed_or_a_checkpoint_in_one_process(tmp_path, compose_cfg, source):
    """kernel=empirical, tile=-1 (every tile in this process): the stored kernel is the network's NTK
    traced over its 10 outputs / 10, by `ntk.empirical_ntk` on all inputs at once."""
    extra = [f"store={tmp_path}/store", f"out_dir={tmp_path}/out", "kernel=empirical", "architecture=mlp", "model.widths=[32]", "tile=-1"]
    if source == "checkpoint":
        saved = NTKMLP(49, 16, 2, out_dim=10, generator=torch.Generator().manual_seed(5))
        torch.save(saved, tmp_path / "model.pt")
        extra.append(f"checkpoint={tmp_path}/model.pt")
    cfg = compose_cfg(["+exp=kernel_tiles", *TINY, *extra])
    EXPERIMENT.run(cfg)
    x, _ = inputs(cfg)
    model = network(cfg, x.shape[1])
    if source == "checkpoint":
        assert model.widths == saved.widths and torch.equal(model.layers[0].weight, saved.layers[0].weight.double())
    ref = empirical_ntk(model, x, trace=True) / 10
    stored = np.load(tmp_path / "store" / "kernel_ntk.npy")
    assert rel_fro(torch.from_numpy(stored), ref) < 1e-12
    assert pd.read_csv(tmp_path / "out" / "table.csv").predictor.tolist() == ["ntk"]


def test_the_tiles_benchmark_compares_one_call_with_its_tiles(tmp_path, monkeypatch):
    from scripts import bench_tiles

    monkeypatch.chdir(tmp_path)  # it writes results/bench/tiles.* under the working directory
    bench_tiles.main(["n=10", "row_blocks=3", "rounds=2", "threads=1"])
    table = pd.read_csv(tmp_path / "results" / "bench" / "tiles.csv").set_index("contender")
    assert list(table.index) == ["one_process", "tiles"]
    assert table.loc["tiles", "tiles"] == 6 and table.loc["tiles", "pairs"] == 55
    assert table.loc["tiles", "max_rel_error"] < 1e-12
    with pytest.raises(SystemExit, match="n must be an integer 2"):
        bench_tiles.main(["n=1"])
