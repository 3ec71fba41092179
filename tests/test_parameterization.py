"""Parameterisations beyond the NTK's and Chizat's scale alpha (`ntk.parameterization`).

Independent references: torch.func Jacobians for the kernels, the analytic recursion with its rates
for their expectations, Monte Carlo over seeds for the output scale, Microsoft's `mup` package
(MuReadout, set_base_shapes, MuSGD, its coordinate check) for muP, and
`ntk.linearised_gradient_descent` (forward- and reverse-mode products, no training loop of ours)
for the lazy limit.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import ntk

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_standard_and_mean_field_start_where_ntk_does():
    """The same draws: "standard" computes the NTK network's function; "mean_field" is the NTK network
    itself at its base width, and at other widths differs only in the readout's scale."""
    x = torch.randn(7, 5, generator=gen(1), dtype=F64)
    base = ntk.NTKMLP(5, 64, 3, generator=gen(0), dtype=F64)
    standard = ntk.NTKMLP(5, 64, 3, generator=gen(0), dtype=F64, parameterization="standard")
    assert rel(standard(x), base(x)) < 1e-13
    at_base = ntk.NTKMLP(5, 64, 3, generator=gen(0), dtype=F64, parameterization="mean_field", base_width=64)
    assert rel(at_base(x), base(x)) < 1e-13
    assert rel(ntk.empirical_ntk(at_base, x, method="jacobian"), ntk.empirical_ntk(base, x, method="jacobian")) < 1e-13
    wide_ntk = ntk.NTKMLP(5, 256, 3, generator=gen(0), dtype=F64, beta=0.0)
    wide_mf = ntk.NTKMLP(5, 256, 3, generator=gen(0), dtype=F64, beta=0.0, parameterization="mean_field", base_width=64)
    assert rel(wide_mf(x), wide_ntk(x) * math.sqrt(64 / 256)) < 1e-13  # the readout's F = sqrt(n_b)/n against 1/sqrt(n)


@pytest.mark.parametrize("parameterization", ["standard", "mean_field"])
def test_kernel_at_initialisation_matches_its_analytic_limit(parameterization):
    """The empirical NTK (torch.func Jacobians) averaged over seeds tends to the recursion with the
    parameterisation's rates (unbiased up to the seeds' noise), and one network's distance falls with
    width."""
    x = torch.randn(6, 5, generator=gen(1), dtype=F64)
    singles = []
    for width in (128, 1024):
        kernels = [
            ntk.empirical_ntk(
                ntk.NTKMLP(5, width, 3, generator=gen(s), dtype=F64, parameterization=parameterization, base_width=32), x, method="jacobian"
            )
            for s in range(6)
        ]
        _, theta = ntk.limiting_kernels(x, None, 3, rates=ntk.kernel_rates(parameterization, 5, width, 3, 0.1))
        singles.append(float(np.mean([rel(k, theta) for k in kernels])))  # one network's distance, O(n^-1/2)
        assert rel(torch.stack(kernels).mean(0), theta) < 2.5 * singles[-1] / math.sqrt(len(kernels))  # unbiased: noise / sqrt(6)
    assert singles[1] < singles[0] * 0.6  # sqrt(128 / 1024) = 0.35


def test_standard_limit_drops_input_and_bias_terms():
    """At n = inf the standard parameterisation (rate eta / n) keeps only the hidden and readout
    weights' terms: its kernel is the NTK's minus the input weights' and the biases' contributions,
    computed here from the NTK recursion with beta = 0 and the first layer's term removed by hand."""
    x = torch.randn(5, 4, generator=gen(2), dtype=F64)
    _, theta = ntk.limiting_kernels(x, None, 3, beta=0.0, rates=ntk.kernel_rates("standard", 4, math.inf, 3, 0.0))
    s1, t1 = ntk.limiting_kernels(x, None, 2, beta=0.0)  # Sigma(2); Theta(2) = Sigma(1) SigmaDot(2) + Sigma(2)
    s2, t2 = ntk.limiting_kernels(x, None, 3, beta=0.0)  # Theta(3) = Theta(2) SigmaDot(3) + Sigma(3)
    expected = t2 - (t1 - s1) * (t2 - s2) / t1  # minus Sigma(1) SigmaDot(2) SigmaDot(3), the input weights' term
    assert rel(theta, expected) < 1e-12


def test_mean_field_output_scale_at_initialisation():
    """Var f(x) = (n_b / n) E[sigma(z)^2] + beta^2 over initialisations (Monte Carlo, 400 seeds),
    with E[sigma(z)^2] = Sigma(L) - beta^2 of the NTK recursion: the 1/n readout's O(n^-1/2) output
    (the NTK parameterisation's stays O(1))."""
    x = torch.randn(3, 5, generator=gen(3), dtype=F64)
    nngp, _ = ntk.limiting_kernels(x, None, 3)
    seeds = 400
    for width in (64, 512):
        outputs = torch.stack(
            [
                ntk.NTKMLP(5, width, 3, generator=gen(s), dtype=F64, parameterization="mean_field", base_width=32)(x)[:, 0]
                for s in range(seeds)
            ]
        )
        variance = outputs.detach().var(0)
        expected = 32 / width * (nngp.diagonal() - 0.01) + 0.01
        assert (variance / expected - 1).abs().max() < 4 * math.sqrt(2 / seeds)  # the variance estimate's standard error


def _mup_twin(net: ntk.NTKMLP, base_width: int):
    """The same network written for `mup`: nn.Linear input and hidden layers, a MuReadout, base shapes
    at n_b, and MuSGD groups whose base rates are the NTK parameterisation's at n_b."""
    mup = pytest.importorskip("mup")
    d, n, out = net.widths[0], net.widths[1], net.widths[-1]
    beta2 = net.beta**2

    class Twin(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.inp, self.hid, self.out = nn.Linear(d, width), nn.Linear(width, width), mup.MuReadout(width, out)

        def forward(self, x):
            return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))

    twin = Twin(n).to(F64)
    mup.set_base_shapes(twin, Twin(base_width), delta=Twin(2 * base_width))
    with torch.no_grad():
        for mod, layer in zip((twin.inp, twin.hid, twin.out), net.layers):
            mod.weight.copy_(layer.scale * layer.weight)
            mod.bias.copy_(layer.beta * layer.bias)
        twin.out.weight.mul_(twin.out.width_mult())  # MuReadout divides its input by n / n_b
    groups = [
        {"params": [twin.inp.weight], "lr": 1.0 / d},
        {"params": [twin.inp.bias, twin.hid.bias], "lr": beta2},
        {"params": [twin.hid.weight], "lr": 1.0 / base_width},
        {"params": [twin.out.weight], "lr": 1.0 / base_width},
        {"params": [twin.out.bias], "lr": beta2},
    ]
    return twin, groups, mup


@pytest.mark.parametrize("width", [32, 64, 128])
def test_mean_field_trains_as_mup_defines_it(width):
    """Gradient descent at rate eta on ntk's "mean_field" = mup's MuSGD at base rates eta x (the NTK
    parameterisation's per-layer rates at n_b), step by step, at n = n_b, 2 n_b and 4 n_b."""
    x = torch.randn(10, 6, generator=gen(4), dtype=F64)
    y = torch.randn(10, 2, generator=gen(5), dtype=F64)
    net = ntk.NTKMLP(6, width, 3, out_dim=2, generator=gen(0), dtype=F64, parameterization="mean_field", base_width=32)
    twin, groups, mup = _mup_twin(net, 32)
    lr = 0.5
    optimizer = mup.MuSGD([{**g, "lr": g["lr"] * lr} for g in groups], lr=lr)
    for _ in range(5):
        optimizer.zero_grad()
        ntk.mse_cost(twin(x), y).backward()
        optimizer.step()
    ntk.gradient_descent(net, x, y, lr=lr, steps=5)
    x_eval = torch.randn(4, 6, generator=gen(6), dtype=F64)
    with torch.no_grad():
        moved = twin(x_eval)
    assert rel(net(x_eval).detach(), moved) < 1e-11


def _coord_data(parameterization: str, widths, steps: int = 4):
    """mup's coordinate check (its `get_coord_data`, plain SGD at one rate: ours needs no per-layer
    rates) on ntk's MLP: the l1 size of every layer's output per width and step."""
    coord_check = pytest.importorskip("mup.coord_check")
    x = torch.randn(32, 20, generator=gen(7))
    labels = torch.randint(0, 10, (32,), generator=gen(8))
    models = {
        w: (lambda w=w: ntk.NTKMLP(20, w, 3, out_dim=10, generator=gen(0), parameterization=parameterization, base_width=64))
        for w in widths
    }
    return coord_check.get_coord_data(
        models, [(x, labels)], optimizer="sgd", lr=1.0, mup=False, lossfn="mse", cuda=False, nsteps=steps, show_progress=False
    )


def test_mean_field_passes_mups_coordinate_check():
    """The hidden layers' coordinates stay O(1) as the width grows from 64 to 1024 at every step
    (slope of log l1 against log width within +-0.15), and the readout starts at O(n^-1/2), muP's
    1/n readout at initialisation."""
    widths = (64, 256, 1024)
    df = _coord_data("mean_field", widths)
    for (module, t), part in df.groupby(["module", "t"]):
        if module not in ("layers.0", "layers.1"):  # the hidden layers' pre-activations
            continue
        part = part.sort_values("width")
        slope = np.polyfit(np.log(part["width"]), np.log(part["l1"]), 1)[0]
        assert abs(slope) < 0.15, (module, t, slope)
    init = df[(df.module == "layers.2") & (df.t == 1)].sort_values("width")
    assert np.polyfit(np.log(init["width"]), np.log(init["l1"]), 1)[0] == pytest.approx(-0.5, abs=0.1)


@pytest.mark.parametrize("parameterization, exponent", [("ntk", -0.5), ("mean_field", 0.0)])
def test_hidden_features_move_as_the_theory_says(parameterization, exponent):
    """After 4 steps at rate 1, the hidden features' change per coordinate scales as n^-1/2 in the NTK
    parameterisation (lazy) and as n^0 in muP (features learn), fitted over widths 64 ... 1024."""
    x = torch.randn(32, 20, generator=gen(7), dtype=F64)
    y = torch.randn(32, 1, generator=gen(8), dtype=F64)
    moves = []
    widths = (64, 256, 1024)
    for w in widths:
        net = ntk.NTKMLP(20, w, 3, generator=gen(0), dtype=F64, parameterization=parameterization, base_width=64)
        from ntk.model import forward_with_cache

        before = forward_with_cache(net, x)[1][-1]
        ntk.gradient_descent(net, x, y, lr=1.0, steps=4)
        after = forward_with_cache(net, x)[1][-1]
        moves.append(float((after - before).square().mean().sqrt()))
    slope = np.polyfit(np.log(widths), np.log(moves), 1)[0]
    assert slope == pytest.approx(exponent, abs=0.12)


def test_lazy_scale_one_is_plain_training_of_the_centred_network():
    """alpha = 1: gradient descent on f - f(w_0) toward y is the NTK MLP's own (fused) training toward
    y + f(w_0)."""
    x = torch.randn(12, 3, generator=gen(9), dtype=F64)
    y = torch.randn(12, 1, generator=gen(10), dtype=F64)
    net = ntk.NTKMLP(3, 48, 3, generator=gen(0), dtype=F64)
    lazy = ntk.LazyScaled(net, 1.0)
    with torch.no_grad():
        f0 = net(x)
    ntk.gradient_descent(lazy, x, y, lr=0.5, steps=20)
    ntk.gradient_descent(net, x, y + f0, lr=0.5, steps=20)
    x_eval = torch.randn(5, 3, generator=gen(11), dtype=F64)
    with torch.no_grad():
        assert rel(lazy(x_eval) + lazy.model(x_eval), net(x_eval)) < 1e-11
        assert rel(lazy.network()(x_eval), net(x_eval)) < 1e-11


def test_lazy_training_approaches_the_linearised_network_as_one_over_alpha():
    """Chizat et al. 2019, Section 2 (lazy training over a finite horizon): the gap between f_alpha trained for time t and the linearised
    model's gradient descent falls as 1/alpha (fitted exponent over alpha = 30 ... 1000; below about
    30 this small network is not yet lazy)."""
    x = torch.randn(10, 3, generator=gen(12), dtype=F64)
    y = torch.randn(10, 1, generator=gen(13), dtype=F64)
    x_eval = torch.randn(6, 3, generator=gen(14), dtype=F64)
    net = ntk.NTKMLP(3, 32, 3, generator=gen(0), dtype=F64)
    lr, steps = 0.5, 40
    gaps = []
    alphas = (30.0, 100.0, 300.0, 1000.0)
    for alpha in alphas:
        lazy = ntk.LazyScaled(net, alpha)
        linear = ntk.linearised_gradient_descent(lazy, x, y, lr=lr, steps=steps, x_eval=x_eval, record_t=[lr * steps])[lr * steps]
        ntk.gradient_descent(lazy, x, y, lr=lr, steps=steps)
        with torch.no_grad():
            gaps.append(rel(lazy(x_eval), linear))
    slope = np.polyfit(np.log(alphas), np.log(gaps), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)
    assert gaps[-1] < 1e-2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(parameterization="muP"), "unknown parameterization 'muP'; allowed: ntk, standard, mean_field"),
        (dict(parameterization="mean_field"), "needs base_width >= 1"),
        (dict(parameterization="standard", width=[8, 16]), "needs one hidden width"),
    ],
)
def test_bad_parameterizations_are_refused_in_one_line(kwargs, message):
    kwargs = {"width": 8, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        ntk.NTKMLP(3, kwargs.pop("width"), 3, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.inf, "2"])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        ntk.LazyScaled(ntk.NTKMLP(2, 4, 2), alpha)


def test_limits_refuse_other_parameterizations():
    net = ntk.NTKMLP(3, 8, 3, parameterization="standard")
    with pytest.raises(ValueError, match="covers the NTK parameterisation"):
        ntk.model_limiting_kernels(net, torch.randn(2, 3, dtype=F64))
