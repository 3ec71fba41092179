"""The kernel velocity d Theta / dt against finite differences and one small gradient-descent step."""

import copy

import pytest
import torch
from torch import nn

from ntk.empirical import empirical_ntk
from ntk.finite import kernel_velocity
from ntk.train import gradient_descent, mse_cost
from tests.conftest import mlp, rel_fro


def data(n: int, out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, out, generator=g, dtype=torch.float64)


def moved(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> nn.Module:
    """A copy with theta + eps * (-grad C), the gradient by plain autograd."""
    other = copy.deepcopy(model)
    params = [p for p in other.parameters() if p.requires_grad]
    grads = torch.autograd.grad(mse_cost(other(x), y), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(eps * g)
    return other


def finite_difference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Central difference of the empirical NTK along the flow (Jacobian contraction, float64)."""
    up = empirical_ntk(moved(model, x, y, eps), x, method="jacobian")
    down = empirical_ntk(moved(model, x, y, -eps), x, method="jacobian")
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("out", [1, 2])
def test_velocity_of_the_ntk_mlp_equals_a_finite_difference(activation, out):
    model = mlp(3, 24, 3, seed=1, activation=activation, out_dim=out)
    x, y = data(6, out)
    velocity = kernel_velocity(model, x, y)
    assert velocity.shape == ((6, 6) if out == 1 else (6, 6, out, out))
    assert rel_fro(velocity, finite_difference(model, x, y)) < 1e-6


def test_velocity_of_a_general_module_equals_a_finite_difference_and_the_layerwise_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 2)).double()
    x, y = data(5, 2)
    assert rel_fro(kernel_velocity(model, x, y), finite_difference(model, x, y)) < 1e-6
    ntk_mlp = mlp(3, 16, 3, seed=2)
    x1, y1 = data(5, 1, seed=3)
    wrapped = nn.Sequential(ntk_mlp)  # not an NTKMLP: the Jacobian path
    assert rel_fro(kernel_velocity(ntk_mlp, x1, y1), kernel_velocity(wrapped, x1, y1)) < 1e-10


def test_velocity_predicts_the_change_over_one_small_gradient_descent_step():
    model = mlp(3, 32, 4, seed=4)
    x, y = data(8, 1, seed=5)
    before = empirical_ntk(model, x)
    velocity = kernel_velocity(model, x, y)
    lr = 1e-5
    gradient_descent(model, x, y, lr=lr, steps=1)
    change = (empirical_ntk(model, x) - before) / lr
    assert rel_fro(change, velocity) < 1e-3  # the step's O(lr) curvature term; a wrong velocity is off by O(1)


def test_velocity_on_other_inputs_and_bad_targets():
    model = mlp(3, 8, 2)
    x, y = data(4, 1)
    other = data(3, 1, seed=9)[0]
    assert kernel_velocity(model, x, y, x=other).shape == (3, 3)
    with pytest.raises(ValueError, match="needs the training targets y_train"):
        kernel_velocity(model, x, None)
    with pytest.raises(ValueError, match=r"y_train must have shape \(N, O\) = \(4, 1\)"):
        kernel_velocity(model, x, torch.zeros(4, 2, dtype=torch.float64))
