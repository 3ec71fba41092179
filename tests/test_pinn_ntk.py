"""The PINN NTK experiment at its tiny size: one job against gradient descent and kernels written here
with torch.func (hessian for u_xx, jacrev for the blocks), the tables, and the one-line refusals."""

import math

import pandas as pd
import pytest
import torch
from torch.func import functional_call, grad, hessian, jacrev, vmap

from experiments import pinn_ntk
from ntk.pinn import PINN

TINY = ["+exp=pinn_ntk", *pinn_ntk.EXPERIMENT.tiny, "progress=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.conftest import compose_config

    out = tmp_path_factory.mktemp("pinn")
    cfg = compose_config([*TINY, f"out_dir={out}"])
    pinn_ntk.run(cfg)
    return cfg, out


def by_hand(cfg, a, width, seed):
    """The job's network trained by torch.func gradient descent on the half mean squared errors, u_xx by
    torch.func.hessian in x = mu + s x~; the relative L2 error and the kernel's relative change."""
    prob = pinn_ntk.problem(cfg, a)
    net = pinn_ntk.network(width, seed)
    scale = 1 / float(torch.linspace(0, 1, cfg.n_residual, dtype=torch.float64).std(unbiased=False)) ** 2
    params = {k: v.detach().clone() for k, v in net.named_parameters()}

    def u(p, x):
        return functional_call(net, p, (x.reshape(1, 1),)).reshape(())

    def values(p):
        return vmap(lambda x: u(p, x))(prob.x_u), vmap(lambda x: hessian(lambda y: u(p, y))(x).reshape(()) * scale)(prob.x_r)

    def kernel(p):
        ju, jr = (jacrev(lambda q, i=i: values(q)[i])(p) for i in range(2))
        j = torch.cat([torch.cat([ju[k].reshape(ju[k].shape[0], -1), jr[k].reshape(jr[k].shape[0], -1)]) for k in p], 1)
        return j @ j.T

    def cost(p):
        vu, vr = values(p)
        return 0.5 * (vu - prob.g[:, 0]).square().mean() + 0.5 * (vr - prob.h[:, 0]).square().mean()

    k0 = kernel(params)
    for _ in range(cfg.steps):
        g = grad(cost)(params)
        params = {k: params[k] - cfg.lr * g[k] for k in params}
    with torch.no_grad():
        f = functional_call(net, params, (prob.grid,))
    error = float((f - prob.u_grid).norm() / prob.u_grid.norm())
    return error, float((kernel(params) - k0).norm() / k0.norm())


def test_a_job_against_gradient_descent_written_with_torch_func(tiny_run):
    cfg, out = tiny_run
    table = pd.read_csv(out / "table.csv")
    row = table[(table.a == 4) & (table.weighting == "none")].iloc[0]
    error, change = by_hand(cfg, 4, int(row.width), int(row.seed))
    assert row.rel_l2_error == pytest.approx(error, rel=1e-9)
    assert row.kernel_change == pytest.approx(change, rel=1e-8)


def test_tables_and_figure(tiny_run):
    cfg, out = tiny_run
    table = pd.read_csv(out / "table.csv")
    assert set(table.weighting) == {"none", "ntk"} and set(table.a) == set(cfg.a_values) and (table.width == cfg.width).all()
    assert table.rel_l2_error.gt(0).all() and table.predicted_rel_l2_error.gt(0).all()
    assert (table[table.weighting == "ntk"].lambda_u > 1).all() and (table[table.weighting == "none"].lambda_u == 1).all()
    kernel = pd.read_csv(out / "kernel.csv")
    assert list(kernel.columns) == ["width", "seed", "kernel_change", "weight_change"]
    assert sorted(kernel.width) == sorted(cfg.stability_widths)
    history = pd.read_csv(out / "history.csv")
    start = history[history.step == 0]
    # the mean kernel's prediction starts from each network's own initial function
    assert (start.rel_l2_error_kernel - start.rel_l2_error).abs().max() < 1e-12
    spectra = pd.read_csv(out / "spectra.csv")
    assert set(spectra.block) == {"K", "K_uu", "K_rr"} and set(spectra["when"]) == {"init", "end"}
    limit = pd.read_csv(out / "limit.csv")
    assert set(limit.block) == {"K", "K_uu", "K_ur", "K_rr"} and len(limit) == 4 * len(cfg.limit_widths) * cfg.limit_seeds
    assert (out / "pinn_ntk.png").exists() and (out / "fits.csv").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("n_boundary=5", r"n_boundary must be even \(half at x = 0, half at x = 1\), got 5"),
        ("a_values=[]", r"a_values must list at least one integer >= 1, got \[\]"),
        ("lr=-1", r"lr must be a number > 0, got -1"),
        ("steps=0", r"steps must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_any_write(tmp_path, override, message):
    from tests.conftest import compose_config

    cfg = compose_config([*TINY, f"out_dir={tmp_path / 'out'}", override])
    with pytest.raises(ValueError, match=message):
        pinn_ntk.run(cfg)
    assert not (tmp_path / "out").exists()


def test_the_problem_is_their_notebooks():
    """Boundary points half at 0 and half at 1, collocation points evenly spaced, inputs normalised by
    the collocation points' mean and (population) standard deviation, u = sin(a pi x)."""
    from tests.conftest import compose_config

    cfg = compose_config(["+exp=pinn_ntk"])
    prob = pinn_ntk.problem(cfg, 4)
    x = torch.linspace(0, 1, 100, dtype=torch.float64)
    mu, sd = x.mean(), math.sqrt(float(((x - x.mean()) ** 2).mean()))
    assert torch.allclose(prob.x_r[:, 0], (x - mu) / sd) and prob.x_u.shape == (100, 1)
    assert torch.allclose(prob.x_u[:50], -mu / sd * torch.ones(50, 1, dtype=torch.float64))
    assert torch.allclose(prob.h[:, 0], -((4 * math.pi) ** 2) * torch.sin(4 * math.pi * x))
    for dtype in (torch.float64, torch.float32):  # the end points lie in the domain at either precision
        p = pinn_ntk.problem(cfg, 4, dtype)
        PINN(pinn_ntk.network(8, 0, dtype), p.operator, p.x_u, p.g, p.x_r, p.h, domain=p.domain)
