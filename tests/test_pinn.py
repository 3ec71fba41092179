"""ntk.pinn against torch.func computations written here: the residuals, the kernel blocks, Wang et al.'s
adaptive weights and the gradient-descent step, and the one-line refusals."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import ntk
from tests.conftest import rel_fro

F64 = torch.float64


def poisson(u, x):
    return grad(grad(lambda s: u(s.reshape(1))))(x[0]).reshape(())  # u_xx by nested grad (not torch.func.hessian)


def problem(width=24, seed=0, n_r=12):
    """Two tanh layers initialised as Wang et al.'s notebook does: weights N(0, 1/fan_in), biases N(0, 1)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)).to(F64)
    with torch.no_grad():
        for layer in net[::2]:
            layer.weight.normal_(0, layer.in_features**-0.5)
            layer.bias.normal_(0, 1)
    x_u = torch.tensor([[0.0], [1.0]], dtype=F64)
    x_r = torch.linspace(0.05, 0.95, n_r, dtype=F64)[:, None]
    g = torch.sin(2 * torch.pi * x_u)
    h = -((2 * torch.pi) ** 2) * torch.sin(2 * torch.pi * x_r)
    return net, x_u, g, x_r, h


def scalar_u(net, params):
    return lambda x: functional_call(net, params, (x.reshape(1, 1),)).reshape(())


def by_hand(net, params, x_u, x_r):
    """u at x_u and u_xx at x_r as functions of the parameters, by torch.func alone."""
    u_vals = vmap(lambda x: scalar_u(net, params)(x))(x_u[:, 0])
    u_xx = vmap(lambda x: grad(grad(scalar_u(net, params)))(x))(x_r[:, 0])
    return u_vals, u_xx


def test_residuals_and_losses_against_torch_func():
    net, x_u, g, x_r, h = problem()
    pinn = ntk.PINN(net, poisson, x_u, g, x_r, h)
    params = dict(net.named_parameters())
    u_vals, u_xx = by_hand(net, params, x_u, x_r)
    du, dr = pinn.residuals()
    assert torch.allclose(du[:, 0], u_vals - g[:, 0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(dr[:, 0], u_xx - h[:, 0], rtol=1e-12, atol=1e-10)
    loss_u, loss_r = (v.detach() for v in pinn.losses())
    assert float(loss_u) == pytest.approx(0.5 * float((u_vals - g[:, 0]).square().mean()), rel=1e-12)
    assert float(loss_r) == pytest.approx(0.5 * float((u_xx - h[:, 0]).square().mean()), rel=1e-12)


def test_kernel_blocks_and_adaptive_weights_against_jacobians():
    net, x_u, g, x_r, h = problem()
    pinn = ntk.PINN(net, poisson, x_u, g, x_r, h)
    params = {k: v.detach() for k, v in net.named_parameters()}
    ju = jacrev(lambda p: by_hand(net, p, x_u, x_r)[0])(params)
    jr = jacrev(lambda p: by_hand(net, p, x_u, x_r)[1])(params)
    flat = lambda j, n: torch.cat([v.reshape(n, -1) for v in j.values()], 1)  # noqa: E731
    ju, jr = flat(ju, len(x_u)), flat(jr, len(x_r))
    k = pinn.kernels()
    for block, ref in ((k.uu, ju @ ju.T), (k.ur, ju @ jr.T), (k.rr, jr @ jr.T)):
        assert float((block - ref).norm() / ref.norm()) < 1e-10
    lam_u, lam_r = ntk.adaptive_weights(k)
    total = float(ju.square().sum() + jr.square().sum())
    assert lam_u == pytest.approx(total / float(ju.square().sum()), rel=1e-10)
    assert lam_r == pytest.approx(total / float(jr.square().sum()), rel=1e-10)


def test_training_steps_equal_hand_written_gradient_descent_with_adaptive_weights():
    """Five steps at rate 1e-4 with the weights recomputed every 2 steps (Algorithm 1), against the same
    descent written with torch.func's grad and the traces of J J^T."""
    net, x_u, g, x_r, h = problem(width=16)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    lr, steps, every = 1e-4, 5, 2
    expected_weights = []
    for step in range(steps):
        if step % every == 0:
            ju = jacrev(lambda p: by_hand(net, p, x_u, x_r)[0])(params)
            jr = jacrev(lambda p: by_hand(net, p, x_u, x_r)[1])(params)
            tu = sum(float(v.square().sum()) for v in ju.values())
            tr = sum(float(v.square().sum()) for v in jr.values())
            lam = ((tu + tr) / tu, (tu + tr) / tr)
        expected_weights.append(lam)

        def cost(p, lam=lam):
            u_vals, u_xx = by_hand(net, p, x_u, x_r)
            return lam[0] * 0.5 * (u_vals - g[:, 0]).square().mean() + lam[1] * 0.5 * (u_xx - h[:, 0]).square().mean()

        grads = grad(cost)(params)
        params = {k: params[k] - lr * grads[k] for k in params}
    pinn = ntk.PINN(net, poisson, x_u, g, x_r, h)
    result = ntk.train_pinn(pinn, lr=lr, steps=steps, adaptive_every=every)
    for name, p in net.named_parameters():
        assert torch.allclose(p.detach(), params[name], rtol=1e-10, atol=1e-12), name
    assert result.lambda_u[:steps] == pytest.approx([w[0] for w in expected_weights], rel=1e-9)
    assert result.lambda_r[:steps] == pytest.approx([w[1] for w in expected_weights], rel=1e-9)
    assert result.t == pytest.approx([lr * k for k in range(steps + 1)])


@pytest.mark.slow
def test_compiled_steps_equal_eager_steps():
    """train_pinn(compile=True): the same descent (weights recomputed every 2 steps) to 1e-12."""
    runs = []
    for compiled in (False, True):
        net, x_u, g, x_r, h = problem(width=16)
        result = ntk.train_pinn(ntk.PINN(net, poisson, x_u, g, x_r, h), lr=1e-4, steps=6, adaptive_every=2, compile=compiled)
        runs.append((torch.cat([p.detach().reshape(-1) for p in net.parameters()]), result))
    (p0, r0), (p1, r1) = runs
    assert rel_fro(p1, p0) < 1e-12
    assert r1.loss_r == pytest.approx(r0.loss_r, rel=1e-12) and r1.lambda_u == pytest.approx(r0.lambda_u, rel=1e-12)


def test_adaptive_weights_train_the_boundary_where_plain_descent_stalls():
    """sin(2 pi x) on [0, 1] (Wang et al.'s setting, smaller): tr(K_rr) >> tr(K_uu), so with equal
    weights the boundary loss falls slowly; Algorithm 1's weights make it fall faster at the same rate
    and steps."""
    finals = {}
    for adaptive in (None, 20):
        net, x_u, g, x_r, h = problem(width=32, n_r=24)
        pinn = ntk.PINN(net, poisson, x_u, g, x_r, h)
        k = pinn.kernels()
        assert float(k.rr.diagonal().sum()) > 5 * float(k.uu.diagonal().sum())  # the imbalance
        result = ntk.train_pinn(pinn, lr=3e-5, steps=100, adaptive_every=adaptive, kernel_method="jacobian")
        finals[adaptive] = result.loss_u[-1] / result.loss_u[0]
        if adaptive:
            assert min(result.lambda_u) > 5 * max(result.lambda_r)  # the boundary term weighted up
    assert finals[20] < 0.8 * finals[None]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(operator=lambda u, x: torch.stack([u(x), u(x)])), "the operator must return one number per point"),
        (dict(g=torch.zeros(2, dtype=F64)), r"g must have shape \(N, 1\) = \(2, 1\)"),
        (dict(x_r=torch.tensor([[0.5], [1.5]], dtype=F64), h=torch.zeros(2, 1, dtype=F64)), r"x_r has 1 point\(s\) outside the domain"),
        (dict(x_u=torch.zeros(2, 2, dtype=F64)), "x_u and x_r must have the same dimension d"),
    ],
)
def test_bad_problems_are_refused_in_one_line(change, message):
    net, x_u, g, x_r, h = problem()
    args = dict(net=net, operator=poisson, x_u=x_u, g=g, x_r=x_r, h=h, domain=([0.0], [1.0])) | change
    with pytest.raises(ValueError, match=message) as info:
        ntk.PINN(**args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=0.0), "lr must be a positive finite number"),
        (dict(lr=math.nan), "lr must be"),
        (dict(adaptive_every=0), "adaptive_every must be"),
    ],
)
def test_bad_training_settings_are_refused(kwargs, message):
    net, x_u, g, x_r, h = problem()
    with pytest.raises(ValueError, match=message):
        ntk.train_pinn(ntk.PINN(net, poisson, x_u, g, x_r, h), **({"lr": 1e-3, "steps": 2} | kwargs))


def test_a_deepxde_network_gives_its_blocks(monkeypatch):
    """The networks PINN users already have: DeepXDE's FNN (PyTorch backend) in ntk.PINN, its K_uu,
    K_ur, K_rr against the Jacobians of u and u_xx written here."""
    monkeypatch.setenv("DDE_BACKEND", "pytorch")  # read when deepxde is first imported
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    try:
        dde = pytest.importorskip("deepxde")
    finally:  # on a CUDA machine its import makes CUDA the default device: not for the other tests
        torch.set_default_device(device)
        torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    net = dde.nn.FNN([1, 20, 20, 1], "tanh", "Glorot normal").to(F64)
    _, x_u, g, x_r, h = problem()
    k = ntk.PINN(net, poisson, x_u, g, x_r, h, domain=([0.0], [1.0])).kernels()
    params = {name: p.detach() for name, p in net.named_parameters()}
    flat = lambda j, n: torch.cat([v.reshape(n, -1) for v in j.values()], 1)  # noqa: E731
    ju = flat(jacrev(lambda p: by_hand(net, p, x_u, x_r)[0])(params), len(x_u))
    jr = flat(jacrev(lambda p: by_hand(net, p, x_u, x_r)[1])(params), len(x_r))
    for block, ref in ((k.uu, ju @ ju.T), (k.ur, ju @ jr.T), (k.rr, jr @ jr.T)):
        assert float((block - ref).norm() / ref.norm()) < 1e-10


def shallow(width, seed):
    """One tanh layer in Wang et al.'s initialisation (weights N(0, 1/fan_in), biases N(0, 1)), as the experiment builds it."""
    from experiments.pinn_ntk import network

    return network(width, seed)


def test_the_mean_operator_kernel_is_the_mean_of_the_empirical_blocks():
    """`shallow_mean_kernels` against Monte Carlo: the blocks of 160 networks of width 32 (torch.func
    Jacobians through `operator_ntk`) average to it within 4.5 standard errors at every entry, and the
    distance of one network's blocks to it falls with the width (n^-1/2: 8x the width, under half)."""
    x_u = torch.tensor([[-1.5], [1.7]], dtype=F64)
    x_r = torch.linspace(-1.6, 1.6, 5, dtype=F64)[:, None]
    mean = ntk.shallow_mean_kernels(poisson, x_u, x_r, width=32)
    draws = [ntk.operator_ntk(shallow(32, seed), poisson, x_u, x_r, method="jacobian") for seed in range(160)]
    for block in range(3):
        stack = torch.stack([k[block] for k in draws])
        z = (stack.mean(0) - mean[block]).abs() / (stack.std(0) / math.sqrt(len(draws)))
        assert z.max() < 4.5, (block, z.max())
    far = []
    for width in (64, 512):
        mean_n = ntk.shallow_mean_kernels(poisson, x_u, x_r, width=width).full()
        far.append(
            sum(rel_fro(ntk.operator_ntk(shallow(width, s), poisson, x_u, x_r, method="jacobian").full(), mean_n) for s in range(4)) / 4
        )
    assert far[1] < 0.5 * far[0], far


def test_the_mean_kernel_quadrature_against_scipy():
    """One entry of each block against scipy's adaptive quadrature over (w, b) ~ N(0, I) of the integrands
    written by hand (tanh's derivatives in closed form: the fourth x-x' derivative of K_rr by the
    product rule), so neither torch.func nor the trapezoidal rule is involved."""
    from scipy import integrate

    n, x, y = 50, 0.4, -1.3
    t = math.tanh
    d1 = lambda z: 1 - t(z) ** 2  # noqa: E731
    d2 = lambda z: -2 * t(z) * d1(z)  # noqa: E731
    d3 = lambda z: -2 * d1(z) ** 2 + 4 * t(z) ** 2 * d1(z)  # noqa: E731

    def expect(f):
        density = lambda w, b: math.exp(-(w * w + b * b) / 2) / (2 * math.pi)  # noqa: E731
        return integrate.dblquad(lambda b, w: f(w, b) * density(w, b), -12, 12, -12, 12, epsabs=1e-11, epsrel=1e-11)[0]

    uu = n * expect(lambda w, b: t(w * x + b) * t(w * y + b)) + 1 + expect(lambda w, b: d1(w * x + b) * d1(w * y + b)) * (x * y + 1)
    ur = n * expect(lambda w, b: t(w * x + b) * w**2 * d2(w * y + b)) + expect(
        lambda w, b: d1(w * x + b) * (x * (2 * w * d2(w * y + b) + y * w**2 * d3(w * y + b)) + w**2 * d3(w * y + b))
    )
    rr = n * expect(lambda w, b: w**4 * d2(w * x + b) * d2(w * y + b)) + expect(
        lambda w, b: (2 * w * d2(w * x + b) + x * w**2 * d3(w * x + b)) * (2 * w * d2(w * y + b) + y * w**2 * d3(w * y + b))
        + w**4 * d3(w * x + b) * d3(w * y + b)
    )
    both = torch.tensor([[x], [y]], dtype=F64)
    k = ntk.shallow_mean_kernels(poisson, both, both, width=n)  # entries [0, 1]: (x, y)
    for got, want in ((k.uu, uu), (k.ur, ur), (k.rr, rr)):
        assert abs(got[0, 1].item() - want) < 1e-8 * abs(want), (got[0, 1].item(), want)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: ntk.shallow_mean_features(16, activation="relu"),
            r"activation must be one of tanh, erf \(a smooth Gaussian map\), got 'relu'",
        ),
        (lambda: ntk.shallow_mean_features(0), r"width must be an integer >= 1, got 0"),
        (
            lambda: ntk.kernel_matrix(ntk.shallow_mean_features(4), torch.zeros(2, 1), torch.zeros(2, 1), apply=(True, False)),
            r"pass operator=",
        ),
        (lambda: ntk.shallow_mean_kernels(poisson, torch.zeros(2), torch.zeros(2, 1), 4), r"x_u and x_r must be points \(N, d\)"),
    ],
)
def test_bad_mean_kernel_requests_are_refused_in_one_line(call, message):
    with pytest.raises(ValueError, match=message):
        call()
