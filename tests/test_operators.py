"""Kernels of differential operators (`ntk.operator_ntk`) against per-point torch.func Jacobians of the
residual, written here: Poisson, wave and a nonlinear Burgers residual, to 1e-10 in float64."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev

import ntk
from tests.conftest import rel_fro as rel_err


def poisson(u, x):  # u_xx (1-D)
    return hessian(u)(x)[0, 0]


def wave(u, x, c=2.0):  # u_tt - c^2 u_xx at x = (x, t)
    h = hessian(u)(x)
    return h[1, 1] - c**2 * h[0, 0]


def burgers(u, x, nu=0.01 / torch.pi):  # u_t + u u_x - nu u_xx at x = (x, t)
    g, h = grad(u)(x), hessian(u)(x)
    return g[1] + u(x) * g[0] - nu * h[0, 0]


CASES = {"poisson": (poisson, 1), "wave": (wave, 2), "burgers": (burgers, 2)}


def net_of(d: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 1))


def reference_jacobians(net, operator, x_u, x_r):
    """Per-point Jacobians of u and of the residual with respect to the parameters, by jacrev of a
    function of the parameters (float64)."""
    params = {k: v.detach().double() for k, v in net.named_parameters()}

    def u_at(p, x):
        return functional_call(net, p, (x.unsqueeze(0),)).reshape(())

    def residual(p, x):
        return operator(lambda y: u_at(p, y), x)

    def flat(jac):
        return torch.cat([v.reshape(-1) for v in jac.values()])

    j_u = torch.stack([flat(jacrev(u_at)(params, x)) for x in x_u.double()])
    j_r = torch.stack([flat(jacrev(residual)(params, x)) for x in x_r.double()])
    return j_u, j_r


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["auto", "jacobian", "ntk_vp", "autograd"])
def test_operator_kernels_equal_jacobians_of_the_residual(case, method):
    operator, d = CASES[case]
    net = net_of(d)
    g = torch.Generator().manual_seed(1)
    x_u, x_r = torch.rand(5, d, generator=g), torch.rand(7, d, generator=g)
    k = ntk.operator_ntk(net, operator, x_u, x_r, method=method)
    j_u, j_r = reference_jacobians(net, operator, x_u, x_r)
    assert rel_err(k.uu, j_u @ j_u.T) < 1e-10
    assert rel_err(k.ur, j_u @ j_r.T) < 1e-10
    assert rel_err(k.rr, j_r @ j_r.T) < 1e-10
    assert torch.equal(k.full()[:5, 5:], k.ur)


def test_operator_kernels_refuse_structured_and_a_vector_residual_in_one_line():
    net = net_of(1)
    x = torch.rand(4, 1)
    with pytest.raises(ValueError, match="inside a torch.func transform"):
        ntk.operator_ntk(net, poisson, x, x, method="structured")
    with pytest.raises(ValueError, match="one number per point"):
        ntk.operator_ntk(net, lambda u, p: hessian(u)(p).reshape(-1).repeat(2), x, x, method="jacobian")


def test_a_model_calling_autograd_grad_in_forward_gets_its_exact_kernel():
    """u_x through torch.autograd.grad(create_graph=True) inside forward: no torch.func method runs it;
    auto falls back to plain autograd, equal to the Jacobians of u_x written with torch.func."""

    class Slope(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net_of(1)

        def forward(self, x):
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.net(x).sum(), x, create_graph=True)
            return g

    model = Slope()
    x = torch.rand(6, 1, generator=torch.Generator().manual_seed(2))
    k = ntk.empirical_ntk(model, x)
    _, j = reference_jacobians(model.net, lambda u, p: grad(u)(p)[0], x[:1], x)
    assert rel_err(k, j @ j.T) < 1e-10
