import math

import pytest
import torch
from torch.func import functional_call

from ntk.model import NTKMLP


def hand_forward(model: NTKMLP, x: torch.Tensor) -> torch.Tensor:
    """The paper's recursion written out entry by entry, independent of the module's code."""
    out = []
    for xi in x.tolist():
        a = xi
        for l, layer in enumerate(model.layers):
            w, b = layer.weight.tolist(), layer.bias.tolist()
            if l > 0:
                a = [model.act.fn(torch.tensor(v, dtype=torch.float64)).item() for v in a]
            a = [sum(w[i][j] * a[j] for j in range(len(a))) / math.sqrt(len(a)) + model.beta * b[i] for i in range(len(w))]
        out.append(a)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "identity"])
@pytest.mark.parametrize("depth,width", [(1, 5), (3, 6), (4, [5, 7, 3])])
def test_forward_at_init_matches_hand_computation(activation, depth, width):
    model = NTKMLP(
        3, width, depth, out_dim=2, beta=0.1, activation=activation, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(model(x).detach(), hand_forward(model, x), rtol=1e-12, atol=1e-12)


def test_initialisation_is_standard_normal_and_reproducible():
    a = NTKMLP(200, 300, 2, generator=torch.Generator().manual_seed(0))
    b = NTKMLP(200, 300, 2, generator=torch.Generator().manual_seed(0))
    w = a.layers[0].weight.detach()
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1.0) < 0.01  # 60000 draws: sd of std ~ 0.003
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert [n for n, _ in a.named_parameters()] == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert a.widths == [200, 300, 1]


def test_functional_call_and_single_inputs():
    model = NTKMLP(3, 8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    params = {k: v.detach() * 1.0 for k, v in model.named_parameters()}
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x).detach())
    torch.testing.assert_close(model(x[0]).detach(), model(x[:1])[0].detach())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(activation="swish"),
            "unknown activation 'swish'; allowed: abs, cos, elu, erf, gelu, identity, leaky_relu, relu, sigmoid, silu, sin, softplus, tanh",
        ),
        (dict(depth=0), "depth must be an integer >= 1"),
        (dict(width=0), "width must be an integer >= 1"),
        (dict(width=[4, 4, 4]), "needs depth - 1 = 2 entries, got 3"),
        (dict(beta=-1.0), "beta must be >= 0"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = dict(in_dim=2, width=4, depth=3) | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NTKMLP(**args)
