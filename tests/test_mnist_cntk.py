"""The MNIST CNTK experiment at its tiny size: its kernels and predictions against independent computations."""

import math

import pandas as pd
import pytest
import torch

from experiments import mnist_cntk
from ntk.limits import model_limiting_kernels
from tests.conftest import rel_fro

TINY = ["+exp=mnist_cntk", *mnist_cntk.EXPERIMENT.tiny, "progress=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.conftest import compose_config

    out = tmp_path_factory.mktemp("cntk")
    cfg = compose_config([*TINY, f"out_dir={out}"])
    mnist_cntk.run(cfg)
    return cfg, out


def test_tables_and_figure(tiny_run):
    cfg, out = tiny_run
    t_end = cfg.train.lr * cfg.train.steps
    limits = pd.read_csv(out / "limits.csv")
    assert set(limits.kernel) == {"cntk_gap", "cntk_flatten", "mlp"}
    assert set(limits.predictor) == {"ntk", "nngp"}
    assert limits.test_accuracy.between(0, 1).all() and (limits.test_mse > 0).all()
    table = pd.read_csv(out / "table.csv")
    assert set(table.t) == {0.0, t_end} and table[table.t == t_end].dist_to_limit.gt(0).all()
    assert (out / "mnist_cntk.png").exists() and (out / "scale_check.csv").exists()


def test_chunked_kernels_and_predictions_against_a_direct_solve(tiny_run):
    """The kernels assembled from saved row parts equal one direct call, and the t = inf NTK prediction's
    scores equal those of a least-squares solve with them."""
    cfg, out = tiny_run
    d = cfg.data
    from ntk.data import mnist_split

    x_train, l_train, x_test, l_test = mnist_split(d.n_train, d.n_test, d.seed, d.source, d.root, d.download)
    a, b = mnist_cntk.images(x_train, cfg.image_size), mnist_cntk.images(x_test, cfg.image_size)
    model = mnist_cntk.architectures(cfg)["cntk_gap"]
    chunked_train = mnist_cntk.chunked_kernels(cfg, "check", model, a, a, True)[1]  # parts of rows_per_part rows, saved and read back
    chunked_test = mnist_cntk.chunked_kernels(cfg, "check_test", model, b, a, False)[1]
    direct_train = model_limiting_kernels(model, a)[1]
    direct_test = model_limiting_kernels(model, b, a)[1]
    assert rel_fro(chunked_train, direct_train) < 1e-12 and rel_fro(chunked_test, direct_test) < 1e-12
    assert rel_fro(mnist_cntk.chunked_kernels(cfg, "check", model, a, a, True)[1], direct_train) < 1e-12  # from the saved parts
    y = torch.nn.functional.one_hot(l_train, 10).double() - 0.1
    f = direct_test @ torch.linalg.lstsq(direct_train, y).solution
    y_test = torch.nn.functional.one_hot(l_test, 10).double() - 0.1
    limits = pd.read_csv(out / "limits.csv")
    row = limits[(limits.kernel == "cntk_gap") & (limits.predictor == "ntk") & (limits.t == math.inf)].iloc[0]
    assert row.test_mse == pytest.approx((f - y_test).square().sum(1).mean().item(), rel=1e-6)
    assert row.test_accuracy == pytest.approx((f.argmax(1) == l_test).double().mean().item())


@pytest.mark.parametrize(
    "override,message",
    [
        ("image_size=10", "image_size must be 7, 14 or 28"),
        ("compile=yes", "unknown compile .yes.; allowed: auto, on, off"),
        ("grad_rows=0", "grad_rows must be"),
    ],
)
def test_bad_settings_are_refused(compose_cfg, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        mnist_cntk.run(compose_cfg([*TINY, override, f"out_dir={tmp_path / 'x'}"]))
    assert not (tmp_path / "x").exists()


def test_kernel_parts_are_kept_for_other_networks_and_keyed_by_what_the_kernels_depend_on(tiny_run, compose_cfg):
    """A rerun that changes only the networks or their training reads the saved kernel parts (none is
    rewritten); one that changes the digits' size does not share them; resume=false recomputes them."""
    cfg, out = tiny_run
    folder = mnist_cntk.kernel_folder(cfg)
    parts = sorted(folder.glob("kernel_cntk_*.pt"))  # (not those of the test above)
    assert parts, "the kernel parts outlive the run"
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    other = compose_cfg([*TINY, f"out_dir={out}", "model.widths=[4]", "train.lr=2.0", "converge.epochs=1"])
    assert mnist_cntk.kernel_folder(other) == folder
    mnist_cntk.prepare(other)
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    assert mnist_cntk.kernel_folder(compose_cfg([*TINY, f"out_dir={out}", "image_size=14"])) != folder
    mnist_cntk.prepare(compose_cfg([*TINY, f"out_dir={out}", "resume=false"]))
    assert all(p.stat().st_mtime_ns != stamps[p] for p in parts)


def test_adam_takes_the_networks_towards_zero_training_loss(tiny_run, compose_cfg):
    """The convergence phase's table: the recorded epochs, scores in range, and on the tiny digits a
    network fitted far below its loss at T (a regression check that the phase trains the network)."""
    cfg, out = tiny_run
    table = pd.read_csv(out / "converge.csv")
    assert set(table.epoch) == {0, 1, 2} and set(table.width) == {8}
    assert table[["train_accuracy", "test_accuracy"]].stack().between(0, 1).all()
    longer = compose_cfg([*TINY, f"out_dir={out}", "converge.epochs=64", "converge.lr=3e-2"])
    shared = mnist_cntk.prepare(longer)
    model = mnist_cntk.NTKCNN(1, 8, longer.model.depth, out_dim=10, generator=torch.Generator().manual_seed(0))
    rows = mnist_cntk.converge(longer, model, shared, 8, 0)
    assert list(rows.epoch) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert rows.train_mse.iloc[-1] < 0.1 * rows.train_mse.iloc[0] and rows.train_accuracy.iloc[-1] == 1.0
