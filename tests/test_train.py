import copy

import pytest
import torch

import ntk
from ntk.empirical import empirical_ntk
from ntk.model import NTKMLP
from ntk.train import DivergenceError, gradient_descent, mse_cost
from tests.conftest import mlp


def problem(width=32, depth=3, n=12, dtype=torch.float64, seed=0):
    model = mlp(2, width, depth, seed, dtype)
    g = torch.Generator().manual_seed(100)
    x = torch.randn(n, 2, generator=g, dtype=dtype)
    return model, x, (x[:, :1] * x[:, 1:])


def test_loss_decreases_and_time_is_lr_times_steps():
    model, x, y = problem()
    result = gradient_descent(model, x, y, lr=0.5, steps=40)
    assert result.t == [0.5 * k for k in range(41)]
    assert result.loss[-1] < 0.2 * result.loss[0]
    assert all(b <= a + 1e-12 for a, b in zip(result.loss, result.loss[1:]))  # lr well below 2 / lambda_max
    assert result.loss[-1] == pytest.approx(mse_cost(model(x), y).item(), rel=1e-12, abs=0)


def test_fused_step_equals_autograd_gradient_descent():
    model, x, y = problem(depth=4)
    ref = copy.deepcopy(model)
    fused = gradient_descent(model, x, y, lr=1.0, steps=25, method="fused")
    plain = gradient_descent(ref, x, y, lr=1.0, steps=25, method="autograd")
    assert fused.loss == pytest.approx(plain.loss, rel=1e-10, abs=1e-14)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [5, 12, 100])
def test_a_gradient_from_chunks_of_inputs_is_the_full_batch_one(rows):
    """batch_rows: each step's gradient summed over chunks of inputs (5 does not divide 12: a last chunk of 2)
    gives full-batch gradient descent to rounding, for a CNN (autograd) as for an MLP; outputs seen by callbacks too."""
    g = torch.Generator().manual_seed(5)
    cnn = ntk.NTKCNN(1, 6, 2, out_dim=3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mlp_model, x_mlp, y_mlp = problem()
    x_cnn, y_cnn = torch.randn(12, 1, 6, 6, dtype=torch.float64, generator=g), torch.randn(12, 3, dtype=torch.float64, generator=g)
    for model, x, y in ((cnn, x_cnn, y_cnn), (mlp_model, x_mlp, y_mlp)):
        ref = copy.deepcopy(model)
        seen = {}
        look = lambda s, key: seen.setdefault(key, []).append(s.f.clone())  # noqa: E731
        chunked = gradient_descent(
            model, x, y, lr=0.5, steps=20, method="autograd", batch_rows=rows, record_t=[0.0, 10.0], callback=lambda s: look(s, "chunks")
        )
        whole = gradient_descent(ref, x, y, lr=0.5, steps=20, method="autograd", record_t=[0.0, 10.0], callback=lambda s: look(s, "whole"))
        assert whole.loss[-1] < 0.9 * whole.loss[0]
        assert chunked.loss == pytest.approx(whole.loss, rel=1e-12, abs=0)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        for a, b in zip(seen["chunks"], seen["whole"]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_callbacks_see_the_network_at_the_requested_times():
    model, x, y = problem()
    seen = []

    def look(s):
        with torch.no_grad():
            f = s.model(x)
        seen.append((s.t, s.step, s.loss, mse_cost(f, y).item(), (s.f - f).abs().max().item()))

    gradient_descent(model, x, y, lr=0.25, steps=8, record_t=[0.0, 1.0, 2.0], callback=look)
    assert [(t, k) for t, k, *_ in seen] == [(0.0, 0), (1.0, 4), (2.0, 8)]
    for _, _, loss, recomputed, f_error in seen:
        assert loss == pytest.approx(recomputed, rel=1e-12)
        assert f_error < 1e-12


def test_divergence_is_caught_with_the_stable_learning_rate():
    model, x, y = problem()
    theta = empirical_ntk(model, x, method="jacobian")
    lr_max = 2.0 / torch.linalg.eigvalsh(theta / x.shape[0])[-1].item()
    with pytest.raises(DivergenceError, match=f"2 / lambda_max\\(Theta\\(X,X\\)/N\\) = {lr_max:.4g}"):
        gradient_descent(model, x, y, lr=3 * lr_max, steps=200)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=0.0), "lr must be a positive finite number"),
        (dict(lr=-1.0), "lr must be a positive finite number"),
        (dict(steps=-1), "steps must be an integer >= 0"),
        (dict(record_t=[0.3]), "record time t=0.3 is not on the grid"),
        (dict(record_t=[100.0]), "record time t=100.0 is not on the grid"),
        (dict(method="adam"), "unknown training method 'adam'"),
        (dict(batch_rows=0), "batch_rows must be an integer >= 1 or None"),
        (dict(batch_rows=2.5), "batch_rows must be an integer >= 1 or None"),
        (dict(batch_rows=4, method="fused"), "batch_rows chunks the autograd step"),
    ],
)
def test_bad_training_arguments(kwargs, message):
    model, x, y = problem()
    args = dict(lr=0.5, steps=4) | kwargs
    with pytest.raises(ValueError, match=message):
        gradient_descent(model, x, y, **args)


def test_continued_run_equals_uninterrupted_run():
    """resume=: stopping after 6 steps and continuing from that state gives the same losses and weights."""
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.sin(x[:, :1])
    whole = NTKMLP(3, 30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    part = NTKMLP(3, 30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    full = gradient_descent(whole, x, y, lr=0.5, steps=10, record_t=[0, 3, 5], callback=lambda s: seen.append(s.t))
    states = {}  # the parameters and losses a checkpoint at t = 3 (step 6) would hold
    gradient_descent(
        part,
        x,
        y,
        lr=0.5,
        steps=10,
        record_t=[3.0],
        callback=lambda s: states.update(params={k: v.clone() for k, v in s.model.state_dict().items()}, history=s.result.until(s.step)),
    )
    resumed = NTKMLP(3, 30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # other init, then loaded
    resumed.load_state_dict(states["params"])
    seen_resumed = []
    rest = gradient_descent(
        resumed,
        x,
        y,
        lr=0.5,
        steps=10,
        record_t=[0, 3, 5],
        callback=lambda s: seen_resumed.append(s.t),
        resume=states["history"],
    )
    assert rest.loss == full.loss and rest.t == full.t and rest.lr_max == full.lr_max
    assert seen_resumed == [3.0, 5.0]  # times before the start are not revisited
    for a, b in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="resume must hold the losses of steps 0 ... k - 1 for some k in \\[1, steps=10\\], got 0 losses"):
        gradient_descent(resumed, x, y, lr=0.5, steps=10, resume=full.until(0))
