"""Full-batch gradient descent in continuous time (Jacot et al. 2018, Sections 2 and 5).

Cost C = 1/(2N) sum_i ||f(x_i) - f*(x_i)||^2 and plain gradient descent at learning rate lr;
after k steps the network has been trained for time t = lr * k. Everything here is reported in t.

For an `NTKMLP` the step is fused: one forward pass that keeps the layer inputs, one backward pass
that propagates per-sample cotangents, and an in-place rank-N update of every weight matrix
(``W -= lr / sqrt(n_l) * d(l+1)^T a(l)``). No gradient buffers and no optimizer state exist, so a
step costs three matrix products per layer. Any other module falls back to autograd.

The loss stays on the device between steps: it is read back to the host (one synchronisation)
every `LOSS_SYNC_STEPS` steps, at every recorded time and at the end, so that a GPU can queue
steps ahead instead of waiting for each loss. The divergence check runs on every loss when it is
read back; the step it names is the first one that diverged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ntk.empirical import empirical_ntk
from ntk.memory import check_fits
from ntk.model import NTKMLP, backward_factors, forward_with_cache
from ntk.spectrum import top_eigenvalue

Tensor = torch.Tensor

TRAIN_METHODS = ("auto", "fused", "autograd")
LOSS_SYNC_STEPS = 32  # steps between reads of the losses back to the host


class DivergenceError(RuntimeError):
    """Gradient descent produced a non-finite or exploding loss."""


@dataclass
class TrainResult:
    """Loss at every step, and the stability bound computed at initialisation.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> result = ntk.gradient_descent(model, x, x[:, :1], lr=1.0, steps=10)
        >>> result.t[:3], result.lr_max > 1.0
        ([0.0, 1.0, 2.0], True)
    """

    t: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr_max: float = math.nan

    def until(self, step: int) -> TrainResult:
        """A copy holding steps 0 ... step - 1 only: the history a run continued at `step` needs."""
        return TrainResult(t=self.t[:step], loss=self.loss[:step], lr_max=self.lr_max)


@dataclass
class TrainState:
    """What a callback sees: the model at time t = lr * step, its outputs on the training inputs
    f (N, O) and its training loss there.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> states = []
        >>> _ = ntk.gradient_descent(model, x, x[:, :1], lr=0.5, steps=4, record_t=[1.0], callback=states.append)
        >>> states[0].t, states[0].step, states[0].f.shape
        (1.0, 2, torch.Size([4, 1]))
    """

    t: float
    step: int
    loss: float
    model: nn.Module
    f: Tensor
    result: TrainResult | None = None  # the losses so far (steps 0 ... step), e.g. for a checkpoint


def mse_cost(f: Tensor, y: Tensor) -> Tensor:
    """C = 1/(2N) sum_i ||f_i - y_i||^2 for f, y of shape (N, O).

    Example:
        >>> import torch, ntk
        >>> ntk.mse_cost(torch.ones(2, 1), torch.zeros(2, 1))  # 1/(2N) sum ||f - y||^2
        tensor(0.5000)
    """
    return 0.5 * (f - y).square().sum() / f.shape[0]


def largest_stable_lr(model: nn.Module, x: Tensor, dtype: torch.dtype | None = None) -> float:
    """2 / lambda_max(Theta(X, X) / N): gradient descent on the squared loss diverges above it.

    The kernel is computed in `dtype` (default the parameters'), its top eigenvalue in float64 by
    Lanczos (`ntk.spectrum.top_eigenvalue`, a few dozen kernel-vector products) on its device.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> lam = torch.linalg.eigvalsh(ntk.empirical_ntk(model, x) / 4)[-1]
        >>> abs(ntk.largest_stable_lr(model, x) * lam.item() / 2 - 1) < 1e-6  # the float32 kernel's, by Lanczos
        True
    """
    kernel = empirical_ntk(model, x, dtype=dtype or next(model.parameters()).dtype)
    n = x.shape[0]
    if kernel.dim() == 4:  # (N, N, O, O) -> (N O, N O)
        kernel = kernel.permute(0, 2, 1, 3).reshape(n * kernel.shape[2], -1)
    lam = top_eigenvalue(kernel.double()) / n
    return 2.0 / lam


def record_steps(record_t: Sequence[float], lr: float, steps: int) -> dict[int, float]:
    """Map requested times t to step numbers k = t / lr, refusing times not on the step grid.

    Example:
        >>> import ntk
        >>> ntk.record_steps([0, 0.5, 1.0], lr=0.25, steps=4)  # {step: t}
        {0: 0.0, 2: 0.5, 4: 1.0}
    """
    out = {}
    for t in record_t:
        k = round(t / lr)
        if abs(k * lr - t) > 1e-9 * max(1.0, abs(t)) or not 0 <= k <= steps:
            raise ValueError(
                f"record time t={t} is not on the grid t = lr * k, k = 0..{steps} (lr={lr}); "
                f"allowed: multiples of {lr} in [0, {lr * steps}]"
            )
        out[k] = k * lr
    return out


def gradient_descent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    record_t: Sequence[float] = (),
    callback: Callable[[TrainState], None] | None = None,
    method: str = "auto",
    divergence_factor: float = 1e4,
    progress: bool = False,
    resume: TrainResult | None = None,
    lr_max: float | None = None,
    batch_rows: int | None = None,
) -> TrainResult:
    """Train `model` in place by full-batch gradient descent on `mse_cost` up to t = lr * steps.

    Args:
        model: the network; an NTKMLP uses the fused step, anything else autograd.
        x: training inputs (N, d); y: targets (N, O), in the model's dtype and device.
        lr: learning rate (> 0).
        steps: number of steps (>= 0).
        record_t: times at which `callback` is called, each a multiple of lr in [0, lr * steps].
        callback: called with a `TrainState` at every time in `record_t`, before the step taken
            there; it sees the parameters at that t and may compute kernels, outputs, ...
        method: "auto", "fused" (NTKMLP only) or "autograd".
        divergence_factor: stop when the loss exceeds this multiple of the initial loss.
        progress: show a tqdm bar over steps.
        resume: continue a run from its state: the `TrainResult` of its steps 0 ... k - 1
            (`TrainResult.until(k)`), with `model` holding the parameters after those k steps. The
            first step taken is then step k (t = lr * k); lr_max and the initial loss are kept, so
            the continued run returns what an uninterrupted one would.
        lr_max: the stability bound when the caller knows it (then it is not computed: that takes
            the empirical NTK of all N inputs, (N O)^2 numbers, too much for thousands of images
            with 10 outputs); the divergence message and `TrainResult.lr_max` report it.
        batch_rows: with autograd, form each step's full-batch gradient from chunks of this many
            inputs (their gradients summed, weighted by their share of N): the same step to
            rounding, with one chunk's activations in memory instead of N's (on a CPU they stay in
            cache: 2.2x faster for a 64-channel NTKCNN on 1500 digits at 28 x 28). Only for models
            whose output on an input does not depend on the other inputs (no batch statistics).
            None: all N at once.

    Returns:
        A `TrainResult` with the loss at every step (t = 0, lr, ..., lr * steps) and
        lr_max = 2 / lambda_max(Theta(X, X) / N) at initialisation.

    Raises:
        DivergenceError: non-finite loss, or a loss above `divergence_factor` times its initial
            value; the message gives lr_max.

    Example:
        >>> import torch, ntk
        >>> model = ntk.NTKMLP(2, 100, 3, generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        >>> y = x[:, :1] * x[:, 1:]
        >>> seen = []
        >>> result = ntk.gradient_descent(model, x, y, lr=1.0, steps=100, record_t=[0, 100], callback=lambda s: seen.append(s.t))
        >>> seen, len(result.loss)  # the loss at t = 0, 1, ..., 100
        ([0.0, 100.0], 101)
        >>> result.loss[-1] < result.loss[0]
        True
    """
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown training method {method!r}; allowed: {', '.join(TRAIN_METHODS)}")
    if y.dim() != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"targets must have shape (N, out_dim) with N = {x.shape[0]}, got {tuple(y.shape)}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("training inputs or targets contain non-finite values")
    fused = method == "fused" or (method == "auto" and isinstance(model, NTKMLP))
    if fused and not isinstance(model, NTKMLP):
        raise ValueError(f"method='fused' needs an NTKMLP, got {type(model).__name__}; use method='autograd'")
    if batch_rows is not None and (isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1):
        raise ValueError(f"batch_rows must be an integer >= 1 or None, got {batch_rows!r}")
    if batch_rows is not None and fused:
        raise ValueError("batch_rows chunks the autograd step; the fused NTKMLP step takes all inputs at once (method='autograd')")
    start_step = len(resume.loss) if resume is not None else 0
    if resume is not None and (len(resume.t) != start_step or not 0 < start_step <= steps):
        raise ValueError(f"resume must hold the losses of steps 0 ... k - 1 for some k in [1, steps={steps}], got {start_step} losses")
    if isinstance(model, NTKMLP):  # a step keeps every layer's pre-activations, activations and deltas
        working = 3 * x.shape[0] * sum(model.widths[1:]) * x.element_size()
        check_fits(f"a gradient-descent step on {x.shape[0]} inputs at widths {model.widths}", working, x.device)
    to_record = record_steps(record_t, lr, steps)
    step_fn = fused_step if fused else functools.partial(_autograd_step, rows=batch_rows)

    if resume is not None:
        result = TrainResult(t=list(resume.t), loss=list(resume.loss), lr_max=resume.lr_max)
    else:
        result = TrainResult(lr_max=largest_stable_lr(model, x) if lr_max is None else float(lr_max))
    bar = tqdm(
        range(start_step, steps + 1), desc="gradient descent", disable=not progress, leave=False, initial=start_step, total=steps + 1
    )
    pending: list[tuple[int, Tensor]] = []  # (step, loss on the device) not yet read back
    loss0 = resume.loss[0] if resume is not None else None

    def flush() -> None:
        """Read the pending losses back (one synchronisation), append them, check each for divergence."""
        nonlocal loss0
        if not pending:
            return
        values = torch.stack([v.double() for _, v in pending]).tolist()
        done = list(zip([k for k, _ in pending], values))
        pending.clear()
        for k, loss in done:
            t = k * lr
            loss0 = loss if loss0 is None else loss0
            result.t.append(t)
            result.loss.append(loss)
            if not math.isfinite(loss) or loss > divergence_factor * max(loss0, 1e-30):
                what = "is not finite" if not math.isfinite(loss) else f"exceeds {divergence_factor:g} x the initial loss {loss0:.3g}"
                raise DivergenceError(
                    f"gradient descent diverged: loss {loss:.3g} at t={t:g} (step {k}) {what}; "
                    f"lr={lr:g} but the largest stable learning rate at initialisation is "
                    f"2 / lambda_max(Theta(X,X)/N) = {result.lr_max:.4g}"
                )
        if progress:
            bar.set_postfix(t=f"{done[-1][0] * lr:g}", loss=f"{done[-1][1]:.3e}")

    for k in bar:
        loss, f, update = step_fn(model, x, y)
        pending.append((k, loss))
        recorded = k in to_record and callback is not None
        if recorded or k == steps or len(pending) >= LOSS_SYNC_STEPS:
            flush()
        if recorded:
            callback(TrainState(t=to_record[k], step=k, loss=result.loss[-1], model=model, f=f, result=result))
        if k < steps:
            update(lr)
    return result


@torch.no_grad()
def fused_step(model: NTKMLP, x: Tensor, y: Tensor) -> tuple[float, Tensor, Callable[[float], None]]:
    """One gradient-descent step of an NTKMLP without autograd (module docstring).

    Returns the loss (a 0-dim tensor on the model's device: reading it is a host synchronisation)
    and the outputs f (N, O) at the current parameters, and a closure `update(lr)` that applies the
    step in place: W(l) -= lr / sqrt(n_l) d(l+1)^T a(l), b(l) -= lr beta sum d(l+1).
    """
    f, acts, derivs = forward_with_cache(model, x)
    residual = f - y  # (N, O)
    loss = residual.square().sum().double().mul_(0.5).div_(x.shape[0])  # C in float64, rounded as 0.5 * sum / N on the host

    @torch.no_grad()
    def update(lr: float) -> None:
        delta = residual / x.shape[0]  # dC/df, (N, O)
        for l, a, d in backward_factors(model, acts, derivs, delta):
            layer = model.layers[l]
            layer.weight.addmm_(d.T, a, alpha=-lr * layer.scale)  # rank-N update, (n_{l+1}, n_l)
            layer.bias.add_(d.sum(0), alpha=-lr * layer.beta)

    return loss, f, update


def _autograd_step(model: nn.Module, x: Tensor, y: Tensor, rows: int | None = None) -> tuple[float, Tensor, Callable[[float], None]]:
    params = [p for p in model.parameters() if p.requires_grad]
    n = x.shape[0]
    if rows is None or rows >= n:
        with torch.enable_grad():
            f = model(x)
            loss = mse_cost(f, y)
            grads = torch.autograd.grad(loss, params)
    else:  # C = sum over chunks of (n_c / N) C_c: the chunks' gradients summed with those weights
        grads, loss, outputs = None, 0.0, []
        for start in range(0, n, rows):
            with torch.enable_grad():
                f_c = model(x[start : start + rows])
                part = mse_cost(f_c, y[start : start + rows]) * (f_c.shape[0] / n)
                g_c = torch.autograd.grad(part, params)
            grads = list(g_c) if grads is None else [g.add_(h) for g, h in zip(grads, g_c)]
            loss = loss + part.detach()
            outputs.append(f_c.detach())
        f = torch.cat(outputs)

    @torch.no_grad()
    def update(lr: float) -> None:
        for p, g in zip(params, grads):
            p.sub_(g, alpha=lr)

    return loss.detach(), f.detach(), update
