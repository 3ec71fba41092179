"""The feature_learning sweep: one job against a hand-written training loop and torch.func kernels, the
sweep end to end (resumable, aggregated, drawn), and the fits against known laws."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call, jacrev, vmap

import experiments.feature_learning as fl
import ntk

ROOT = Path(__file__).resolve().parent.parent
TINY = list(fl.EXPERIMENT.tiny)


def test_one_job_against_an_independent_computation(compose_cfg, tmp_path):
    """Chizat's f_alpha trained by a plain loop (u -= lr grad, w = w_0 + u / alpha), its kernels by
    torch.func Jacobians: the job's kernel change, weight change, loss and test scores."""
    cfg = compose_cfg(["+exp=feature_learning", *TINY, "alpha=3.0", "parameterization=mean_field", "dtype=float64", f"out_dir={tmp_path}"])
    row = fl.EXPERIMENT.run(cfg).iloc[0]

    x_train, l_train, x_test, l_test = ntk.mnist_split(cfg.data.n_train, cfg.data.n_test, cfg.data.seed)
    prep = lambda x: (x - x.mean(1, keepdim=True)) / (x - x.mean(1, keepdim=True)).norm(dim=1, keepdim=True) * 28.0  # noqa: E731
    x, xt = prep(x_train), prep(x_test)
    y, yt = (l_train % 2 == 0).double()[:, None] * 2 - 1, (l_test % 2 == 0).double()[:, None] * 2 - 1
    net = ntk.NTKMLP(
        784,
        16,
        3,
        activation="gelu",
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
        parameterization="mean_field",
        base_width=16,
    )
    w0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    u = {k: torch.zeros_like(v) for k, v in w0.items()}
    alpha, lr = 3.0, cfg.train.lr

    def f(shift, inputs):
        return alpha * (functional_call(net, {k: w0[k] + shift[k] / alpha for k in w0}, (inputs,)) - functional_call(net, w0, (inputs,)))

    for _ in range(cfg.train.steps):
        grads = torch.func.grad(lambda s: 0.5 * (f(s, x) - y).square().sum() / len(x))(u)
        u = {k: u[k] - lr * grads[k] for k in u}
    loss = float(0.5 * (f(u, x) - y).square().sum() / len(x))

    def kernel(params, inputs):
        jac = vmap(jacrev(lambda p, xi: functional_call(net, p, (xi[None],))[0, 0]), in_dims=(None, 0))(params, inputs)
        flat = torch.cat([v.reshape(len(inputs), -1) for v in jac.values()], 1)
        return flat @ flat.T

    probe = xt[: cfg.n_probe]
    k0, k1 = kernel(w0, probe), kernel({k: w0[k] + u[k] / alpha for k in w0}, probe)
    ft = f(u, xt).detach()
    assert row.kernel_change == pytest.approx(float((k1 - k0).norm() / k0.norm()), rel=1e-8)
    shift = torch.cat([v.flatten() for v in u.values()]).norm() / alpha
    assert row.weight_change == pytest.approx(float(shift / torch.cat([v.flatten() for v in w0.values()]).norm()), rel=1e-8)
    assert row.train_loss == pytest.approx(loss, rel=1e-8)
    assert row.test_mse == pytest.approx(float((ft - yt).square().mean()), rel=1e-8)
    assert row.test_accuracy == pytest.approx(float((ft.sign() == yt).double().mean()))
    assert row.t == pytest.approx(lr * cfg.train.steps) and not row.diverged


def test_sweep_runs_resumes_aggregates_and_draws(tmp_path, cli):
    out = tmp_path / "fl"
    args = [
        "-m",
        "+exp=feature_learning",
        *[a for a in TINY if not a.startswith(("width=", "alpha="))],
        "width=16,32",
        "alpha=1,30",
        "parameterization=mean_field",
        "seed=0",
        "progress=false",
        f"out_dir={out}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    first = cli(args, env={"HYDRA_FULL_ERROR": "1"})
    assert first.returncode == 0, first.stderr[-2000:]
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 4 and set(table.parameterization) == {"mean_field"}
    for column in ("kernel_change", "weight_change", "train_loss", "test_accuracy", "test_mse", "alignment"):
        assert table[column].notna().all(), column
    by_alpha = table.sort_values("alpha").groupby(["parameterization", "width"]).kernel_change
    assert by_alpha.apply(lambda c: c.is_monotonic_decreasing).all()  # lazier as alpha grows
    assert set(pd.read_csv(out / "fits.csv").quantity) == {"kernel_change_vs_width", "kernel_change_vs_alpha", "alpha_star_vs_width"}
    limit = pd.read_csv(out / "limit.csv").set_index("predictor")  # the lazy end point: n = inf, at t = T and t = inf
    assert limit.loc["ntk_limit_gd", "t"] == table.t.max() and limit.loc["ntk_limit", "train_loss"] < 1e-12
    for name in ("phase_diagram", "kernel_change_vs_alpha", "kernel_change_vs_width"):
        assert (out / f"{name}.png").exists(), name
    again = cli(args)
    assert again.returncode == 0 and again.stdout.count("skip:") == 4  # every job found done


def test_fits_recover_known_laws(tmp_path):
    """Synthetic jobs with kernel change 2 n^-1/2 / alpha (capped at 5): the fits give the exponents
    -0.5 (width), -1 (alpha) and the crossover alpha* = 20 n^-1/2, exponent -0.5."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    alphas = 10.0 ** np.arange(-3, 3.01, 0.75)
    rows = []
    for width in (64, 256, 1024):
        for alpha in alphas:
            for seed in range(2):
                change = min(5.0, 2 * width**-0.5 / alpha)
                rows.append(
                    dict(parameterization="ntk", width=width, alpha=alpha, seed=seed, depth=3, lr=1.0, steps=1, t=1.0, halvings=0)
                    | dict(train_loss=0.1, diverged=False, kernel_change=change, weight_change=change, test_accuracy=0.9, test_mse=0.3)
                    | dict(alignment=0.5, alignment_0=0.4, lr_max=5.0)
                )
    for i, row in enumerate(rows):
        pd.DataFrame([row]).to_csv(jobs / f"{i:04d}.csv", index=False)
    out = fl.aggregate(tmp_path)
    fits = out["fits"].set_index(["quantity", "width"])
    assert fits.loc[("kernel_change_vs_width", np.nan), "exponent"].item() == pytest.approx(-0.5, abs=1e-9)
    assert fits.loc[("kernel_change_vs_alpha", 256), "exponent"] == pytest.approx(-1.0, abs=1e-9)
    assert fits.loc[("alpha_star_vs_width", np.nan), "exponent"].item() == pytest.approx(-0.5, abs=1e-9)
    stars = out["crossover"].groupby("width").alpha_star.mean()
    assert np.allclose(stars.values, 20 * stars.index.to_numpy(float) ** -0.5, rtol=1e-9)


@pytest.mark.parametrize(
    "override, message",
    [
        ("alpha=0", "alpha must be a number > 0, got 0"),
        ("parameterization=muP", "unknown parameterization 'muP'; allowed: ntk, standard, mean_field"),
        ("n_probe=50", "n_probe must be at most data.n_test = 12"),
        ("alpha=inf", "alpha must be a positive finite number"),
    ],
)
def test_bad_settings_are_refused_before_any_work(override, message, compose_cfg, tmp_path):
    cfg = compose_cfg(["+exp=feature_learning", *TINY, override, f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match=message) as info:
        fl.EXPERIMENT.run(cfg)
    assert "\n" not in str(info.value) and not any(tmp_path.iterdir())


def test_crossover_is_nan_when_the_grid_never_crosses():
    assert math.isnan(fl.crossover_alpha(np.array([1.0, 10.0]), np.array([0.01, 0.001])))
    assert math.isnan(fl.crossover_alpha(np.array([1.0, 10.0]), np.array([1.0, 0.5])))
