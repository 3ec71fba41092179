import pytest
import torch

import ntk.empirical
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from tests.conftest import rel_fro


def make(depth, width, activation="relu", out_dim=1, dtype=torch.float64, in_dim=3, seed=0):
    return NTKMLP(in_dim, width, depth, out_dim=out_dim, activation=activation,
                  generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "identity"])
@pytest.mark.parametrize("depth,width", [(1, 4), (2, 16), (3, 9), (4, [12, 5, 20])])
@pytest.mark.parametrize("out_dim", [1, 3])
@pytest.mark.parametrize("same", [True, False])
def test_layerwise_equals_jacobian_contraction(activation, depth, width, out_dim, same):
    model = make(depth, width, activation, out_dim)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x2 = None if same else torch.randn(4, 3, generator=g, dtype=torch.float64)
    fast = empirical_ntk(model, x1, x2, method="layerwise")
    ref = empirical_ntk(model, x1, x2, method="jacobian")
    shape = (6, 6 if same else 4) + ((out_dim, out_dim) if out_dim > 1 else ())
    assert fast.shape == ref.shape == shape
    assert fast.dtype == torch.float64
    assert rel_fro(fast, ref) < 1e-10


def test_kernel_of_float32_model_is_computed_in_float64():
    model = make(3, 10, dtype=torch.float32)
    x = torch.randn(5, 3)
    fast = empirical_ntk(model, x)  # auto -> layerwise, float64
    ref = empirical_ntk(model, x, method="jacobian")
    assert fast.dtype == ref.dtype == torch.float64
    assert rel_fro(fast, ref) < 1e-12
    assert torch.equal(fast, fast.T)


def test_ntk_is_the_gram_matrix_of_output_gradients():
    """Independent of torch.func: autograd gradients of f(x_i), one at a time."""
    model = make(3, 7)
    x = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for i in range(4):
        g = torch.autograd.grad(model(x[i : i + 1]).sum(), list(model.parameters()))
        grads.append(torch.cat([t.flatten() for t in g]))
    jac = torch.stack(grads)
    assert rel_fro(empirical_ntk(model, x), jac @ jac.T) < 1e-12


def test_grid_kernel_of_wide_network_builds_no_jacobian(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a Jacobian was built")

    monkeypatch.setattr(ntk.empirical, "jacrev", forbidden)
    model = make(4, 2000, in_dim=2, dtype=torch.float32)
    grid = torch.randn(101, 2)
    theta = empirical_ntk(model, grid[:1], grid)
    assert theta.shape == (1, 101) and torch.isfinite(theta).all()


def test_generic_module_uses_jacobian_method():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    theta = empirical_ntk(model, x)
    assert theta.shape == (4, 4)
    with pytest.raises(ValueError, match="method='layerwise' needs an NTKMLP"):
        empirical_ntk(model, x, method="layerwise")


@pytest.mark.parametrize(
    "x1,x2,method,message",
    [
        (torch.randn(3, 3), None, "fast", "unknown NTK method 'fast'; allowed: auto, layerwise, jacobian"),
        (torch.randn(3, 2), None, "auto", "x1 has input dimension 2, the model expects 3"),
        (torch.randn(3), None, "auto", r"x1 must have shape \(N, input_dim\)"),
        (torch.randn(3, 3), torch.full((2, 3), float("nan")), "auto", "x2 contains non-finite values"),
    ],
)
def test_bad_inputs(x1, x2, method, message):
    with pytest.raises(ValueError, match=message):
        empirical_ntk(make(2, 4), x1, x2, method=method)
