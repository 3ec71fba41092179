"""The kernel velocity d Theta / dt against finite differences and one small gradient-descent step."""

import copy

import pytest
import torch
from torch import nn

from ntk.empirical import empirical_ntk
from ntk.finite import kernel_velocity, ntk_diagonal_ensemble, train_quadratic
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


class Dense(nn.Module):
    """z = weight_std W a / sqrt(n_in) + beta b with given W and b: a plain module for the Jacobian."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, weight_std: float, beta: float, act):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(b.clone())
        self.weight_std, self.beta, self.act = weight_std, beta, act

    def forward(self, a):
        a = a if self.act is None else self.act(a)
        return self.weight_std * a @ self.w.T / self.w.shape[1] ** 0.5 + self.beta * self.b


@pytest.mark.parametrize("activation, weight_std, beta, random_bias", [("relu", 2**0.5, 1.0, False), ("tanh", 1.0, 0.1, True)])
def test_ensemble_diagonal_equals_the_jacobian_kernel_of_the_same_networks(activation, weight_std, beta, random_bias):
    widths, n_networks = [3, 7, 5, 1], 3
    x = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
    k = ntk_diagonal_ensemble(x, widths, n_networks, activation, weight_std, beta, random_bias, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # the same draws, layer by layer: weights (S, out, in), then biases (S, out, 1)
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        w = torch.randn(n_networks, n_out, n_in, generator=g, dtype=torch.float64)
        b = (
            torch.randn(n_networks, n_out, 1, generator=g, dtype=torch.float64)
            if random_bias
            else torch.zeros(n_networks, n_out, 1, dtype=torch.float64)
        )
        layers.append((w, b))
    act = getattr(torch, activation)
    for s in range(n_networks):
        model = nn.Sequential(*[Dense(w[s], b[s, :, 0], weight_std, beta, None if l == 0 else act) for l, (w, b) in enumerate(layers)])
        expected = empirical_ntk(model, x[None], method="jacobian")[0, 0]
        assert abs(k[s] - expected) < 1e-10 * expected


def test_he_relu_mean_kernel_is_independent_of_width_as_hanin_and_nica_prove():
    """E[K] = L (1 + 2 ||x||^2 / n_0) with derivatives by the N(0, 1) weights (their Theorem 1, doubled)."""
    x = torch.tensor([1.0, -0.5, 2.0, 0.0], dtype=torch.float64)
    for depth, width in ((3, 6), (5, 24)):
        k = ntk_diagonal_ensemble(
            x, [4] + [width] * (depth - 1) + [1], 6000, "relu", 2**0.5, 1.0, False, torch.Generator().manual_seed(depth)
        )
        expected = depth * (1 + 2 * x.square().sum() / 4)
        assert abs(k.mean() - expected) < 4 * k.std() / len(k) ** 0.5, (depth, width)


def test_ensemble_refuses_bad_widths():
    with pytest.raises(ValueError, match="widths must be integers >= 1, got 0"):
        ntk_diagonal_ensemble(torch.ones(2), [2, 0, 1], 4)
    with pytest.raises(ValueError, match=r"widths\[-1\] must be 1"):
        ntk_diagonal_ensemble(torch.ones(2), [2, 3, 2], 4)


def trajectory(train, lr: float, steps: int) -> list[torch.Tensor]:
    outs = []
    train(lr, steps, [lr * k for k in range(steps + 1)], lambda t, f: outs.append(f.clone()))
    return outs


def network_trajectory(model, x, y, lr, steps):
    outs = []
    gradient_descent(
        copy.deepcopy(model), x, y, lr, steps, record_t=[lr * k for k in range(steps + 1)], callback=lambda s: outs.append(s.f.clone())
    )
    return outs


def test_quadratic_model_follows_the_network_to_second_order_in_t_and_the_linear_one_to_first():
    model = mlp(3, 16, 3, seed=6, activation="tanh")
    x, y = data(6, 1, seed=7)
    lr, steps = 0.02, 40
    net = network_trajectory(model, x, y, lr, steps)
    quad = trajectory(lambda *a: train_quadratic(model, x, y, *a), lr, steps)
    lin = trajectory(lambda *a: train_quadratic(model, x, y, *a, linear=True), lr, steps)
    err = lambda other, k: (other[k] - net[k]).norm().item()  # noqa: E731
    assert err(quad, 0) < 1e-12 and err(lin, 0) < 1e-12
    # doubling t multiplies the error by about 2^3 for the quadratic model (third order), 2^2 for the linear one
    assert 6 < err(quad, 40) / err(quad, 20) < 10
    assert 3 < err(lin, 40) / err(lin, 20) < 5
    assert err(quad, 40) < err(lin, 40) / 10


def test_linear_model_equals_gradient_descent_on_the_frozen_kernel():
    model = mlp(3, 12, 3, seed=8)
    x, y = data(5, 1, seed=9)
    lr, steps = 0.5, 6
    lin = trajectory(lambda *a: train_quadratic(model, x, y, *a, linear=True), lr, steps)
    theta0 = empirical_ntk(model, x, method="jacobian")
    r = model(x).detach() - y
    for k in range(steps + 1):  # r_{k+1} = (I - lr Theta_0 / N) r_k exactly
        assert (lin[k] - y - r).norm() < 1e-12 * max(1.0, r.norm())
        r = r - lr * theta0 @ r / x.shape[0]


def test_quadratic_model_refuses_an_unstable_learning_rate_and_off_grid_times():
    model = mlp(3, 8, 2)
    x, y = data(4, 1)
    with pytest.raises(ValueError, match=r"lr must be in \(0, 1\], the stability bound"):
        train_quadratic(model, x, y, 2.0, 3, lr_max=1.0)
    with pytest.raises(ValueError, match=r"record time t=0.25 is not on the grid t = lr \* k"):
        train_quadratic(model, x, y, 0.5, 3, record_t=[0.25])
