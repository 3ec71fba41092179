"""The NTK of a physics-informed network: Wang, Yu & Perdikaris 2022, "When and why PINNs fail to train:
A neural tangent kernel perspective" (J. Comput. Phys. 449, 110768), their 1-D Poisson problem.

    u_xx = f on [0, 1], u = sin(a pi x), f = -(a pi)^2 sin(a pi x), a in `a_values`,

set up as their notebook PINNsNTK_Poisson1D does: `n_boundary` boundary points (half at x = 0, half at
x = 1), `n_residual` collocation points evenly spaced on [0, 1], inputs normalised by the collocation
points' mean and standard deviation (x~ = (x - mu) / s, so u_xx = u_x~x~ / s^2), a tanh network
[1, width, 1] in their "NTK initialisation" (weights N(0, 1/fan_in), biases N(0, 1), the standard
forward), and plain full-batch gradient descent for `steps` steps. Their loss is the sum of the two
mean squared errors, ours (`ntk.train_pinn`) half of each, so `lr` here is twice theirs (their 1e-5).

How their network relates to the NTK parameterisation: u = W2 tanh(W1 x + b1) + b2 with W2 ~ N(0, 1/n)
is, at initialisation, the NTK-parameterised u = (1/sqrt(n)) V tanh(W1 x + b1) + b2 with V = sqrt(n) W2
~ N(0, 1). Gradient descent at rate eta on W2 moves V at rate n eta: their network is the NTK
parameterisation with the read-out layer trained n times faster than the input layer and the biases.
Its kernel therefore grows with n (the read-out's term, n E[tanh tanh]), which their small rate
compensates; the deterministic kernel it concentrates on, with fluctuations of order n^-1/2, is the
mean `ntk.shallow_mean_features` computes.

One job trains one network (a, width, weighting, seed): weighting "none" (lambda_u = lambda_r = 1) or
"ntk" (their Algorithm 1, lambda from the traces of K_uu and K_rr, recomputed every `adaptive_every`
steps). It records every `record_every` steps the two mean squared errors (their convention) and the
relative L2 error of u on `n_grid` points of [0, 1], and at the start and the end the full kernel K =
[[K_uu, K_ur], [K_ru, K_rr]] (`PINN.kernels`): its relative change, the parameters' relative change,
the spectra of K, K_uu and K_rr and the trace ratio tr(K_rr) / tr(K_uu). At the table's width the
job also predicts its own training from the mean kernel (gradient descent on the operator kernel from
the network's own initial function: the linearised network with its kernel's fluctuations removed).

Shared (`prepare`): the mean kernel's blocks at the table's width, and the Monte Carlo check of the
mean kernel: the empirical blocks of `limit_seeds` networks at each of `limit_widths` against it.

Outputs (cfg.out_dir): table.csv (a, width, weighting, seed, steps, rel_l2_error, mse_u, mse_r,
kernel_change, weight_change, trace_ratio_0, trace_ratio_T, lambda_u, lambda_r,
predicted_rel_l2_error), kernel.csv (width, seed, kernel_change, weight_change: the kernel's stability
at a = stability_a without weights), history.csv, spectra.csv, limit.csv (width, seed, block,
rel_distance), fits.csv (each block's distance exponent against width), config.yaml,
provenance.json and the figure (`experiments.figures.pinn_ntk`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import pandas as pd
import torch
from omegaconf import MISSING, DictConfig
from torch import nn
from torch.func import jvp

from experiments.fits import fit_exponent
from experiments.runner import Experiment
from experiments.validation import check_choice, check_int, check_positive
from ntk.operators import OperatorKernels, operator_ntk
from ntk.pinn import PINN, adaptive_weights, kernel_matrix, shallow_mean_features, shallow_mean_kernels, train_pinn

TABLES = ("table", "history", "spectra")
WEIGHTINGS = ("none", "ntk")
F64 = torch.float64


@dataclass
class PinnNtkSchema:
    a_values: list = field(default_factory=lambda: MISSING)
    width: int = MISSING
    stability_widths: list = field(default_factory=lambda: MISSING)
    stability_a: int = MISSING
    n_boundary: int = MISSING
    n_residual: int = MISSING
    n_grid: int = MISSING
    lr: float = MISSING
    steps: int = MISSING
    adaptive_every: int = MISSING
    record_every: int = MISSING
    limit_widths: list = field(default_factory=lambda: MISSING)
    limit_seeds: int = MISSING
    quadrature_order: int = MISSING
    compile: bool = MISSING


def check_config(cfg: DictConfig) -> None:
    for name in ("width", "stability_a", "n_grid", "steps", "adaptive_every", "record_every", "limit_seeds", "n_seeds"):
        check_int(name, cfg[name])
    check_int("n_boundary", cfg.n_boundary, low=2)
    if cfg.n_boundary % 2:
        raise ValueError(f"n_boundary must be even (half at x = 0, half at x = 1), got {cfg.n_boundary}")
    check_int("n_residual", cfg.n_residual, low=2)
    check_int("quadrature_order", cfg.quadrature_order, low=3)
    check_positive("lr", cfg.lr)
    for name in ("a_values", "stability_widths", "limit_widths"):
        values = list(cfg[name])
        if not values:
            raise ValueError(f"{name} must list at least one integer >= 1, got []")
        for v in values:
            check_int(name, v)
    check_choice("dtype", cfg.dtype, ("float64", "float32"))


@dataclass
class Problem:
    operator: object
    x_u: torch.Tensor  # normalised coordinates
    g: torch.Tensor
    x_r: torch.Tensor
    h: torch.Tensor
    grid: torch.Tensor  # normalised
    u_grid: torch.Tensor  # exact u on the grid
    domain: tuple


def problem(cfg: DictConfig, a: int, dtype: torch.dtype = F64) -> Problem:
    """Their Poisson problem at frequency a, in the network's (normalised) coordinates."""
    half = cfg.n_boundary // 2
    x_u = torch.cat([torch.zeros(half, 1, dtype=F64), torch.ones(half, 1, dtype=F64)])
    x_r = torch.linspace(0.0, 1.0, cfg.n_residual, dtype=F64)[:, None]
    grid = torch.linspace(0.0, 1.0, cfg.n_grid, dtype=F64)[:, None]
    mu, sd = x_r.mean(), x_r.std(unbiased=False)  # numpy's std, as their notebook takes it
    norm = lambda x: ((x - mu) / sd).to(dtype)  # noqa: E731
    exact = lambda x: torch.sin(a * math.pi * x).to(dtype)  # noqa: E731
    scale = float(sd) ** -2

    def operator(u, x):  # u_xx in x from derivatives in x~ = (x - mu) / s, by two forward-mode passes
        v = torch.ones_like(x)
        return jvp(lambda p: jvp(u, (p,), (v,))[1], (x,), (v,))[1] * scale

    h = (-((a * math.pi) ** 2) * torch.sin(a * math.pi * x_r)).to(dtype)
    return Problem(
        operator,
        norm(x_u),
        exact(x_u),
        norm(x_r),
        h,
        norm(grid),
        exact(grid),
        ((float((0.0 - mu) / sd),), (float((1.0 - mu) / sd),)),  # in float64, as the points are computed
    )


def network(width: int, seed: int, dtype: torch.dtype = F64) -> nn.Sequential:
    """[1, width, 1] tanh in their initialisation: weights N(0, 1/fan_in), biases N(0, 1), drawn in float64."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1)).to(F64)
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=F64) / math.sqrt(layer.in_features))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=F64))
    return net.to(dtype)


def rel_l2(net: nn.Module, prob: Problem) -> float:
    with torch.no_grad():
        return float((net(prob.grid) - prob.u_grid).norm() / prob.u_grid.norm())


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).to(F64)


def spectra_rows(k: OperatorKernels, when: str, **key) -> list[dict]:
    rows = []
    for block, matrix in (("K", k.full()), ("K_uu", k.uu), ("K_rr", k.rr)):
        values = torch.linalg.eigvalsh(matrix.to(F64)).flip(0)
        rows += [dict(key, when=when, block=block, index=i, eigenvalue=float(v)) for i, v in enumerate(values)]
    return rows


@dataclass
class MeanKernel:
    """The mean kernel's blocks at the table's width on the problem's points and between the grid and them."""

    blocks: OperatorKernels
    grid_u: torch.Tensor  # Theta(grid, x_u)
    grid_r: torch.Tensor  # L_x' Theta(grid, x_r)


def kernel_prediction(
    mean: MeanKernel, prob: Problem, e0: torch.Tensor, u0_grid: torch.Tensor, lr: float, weights, steps: list[int], n_u: int
):
    """Gradient descent on the mean operator kernel from the network's own initial residuals e0
    (N_u + N_r, 1) and initial function on the grid: e_k = (I - lr K D)^k e0, u_k = u_0 - lr K_*X D sum_j<k e_j,
    D = diag(lambda_u / N_u, ..., lambda_r / N_r, ...) (our loss's gradient), through the symmetric
    S = D^1/2 K D^1/2. Returns per step (mse_u, mse_r, rel_l2_error)."""
    k = mean.blocks.full()
    n = k.shape[0]
    d = torch.cat([torch.full((n_u,), weights[0] / n_u, dtype=F64), torch.full((n - n_u,), weights[1] / (n - n_u), dtype=F64)])
    root = d.sqrt()
    lam, vec = torch.linalg.eigh(root[:, None] * k * root[None, :])
    lam = lam.clamp_min(0.0)
    start = vec.T @ (root[:, None] * e0)
    k_star = torch.cat([mean.grid_u, mean.grid_r], 1)
    out = []
    for s in steps:
        decay = (1 - lr * lam) ** s
        e = (vec @ (decay[:, None] * start)) / root[:, None]
        summed = torch.where(lam > 0, (1 - decay) / (lr * lam).clamp_min(1e-300), torch.full_like(lam, float(s)))
        u = u0_grid - lr * k_star @ (root[:, None] * (vec @ (summed[:, None] * start)))
        out.append((float(e[:n_u].square().mean()), float(e[n_u:].square().mean()), float((u - prob.u_grid).norm() / prob.u_grid.norm())))
    return out


@dataclass
class Shared:
    mean: MeanKernel
    limit: pd.DataFrame


def prepare(cfg: DictConfig) -> Shared:
    prob = problem(cfg, 1)  # the kernels do not depend on a
    phi = shallow_mean_features(cfg.width, 1, "tanh", 1.0, cfg.quadrature_order)
    blocks = OperatorKernels(
        kernel_matrix(phi, prob.x_u, prob.x_u),
        kernel_matrix(phi, prob.x_u, prob.x_r, prob.operator, (False, True)),
        kernel_matrix(phi, prob.x_r, prob.x_r, prob.operator, (True, True)),
    )
    mean = MeanKernel(
        blocks, kernel_matrix(phi, prob.grid, prob.x_u), kernel_matrix(phi, prob.grid, prob.x_r, prob.operator, (False, True))
    )
    rows = []
    for width in cfg.limit_widths:
        mean_n = (
            blocks if width == cfg.width else shallow_mean_kernels(prob.operator, prob.x_u, prob.x_r, width, order=cfg.quadrature_order)
        )
        for seed in range(cfg.limit_seeds):
            emp = operator_ntk(network(width, 10_000 + seed), prob.operator, prob.x_u, prob.x_r, method="jacobian")
            for block, a, b in (
                ("K", emp.full(), mean_n.full()),
                ("K_uu", emp.uu, mean_n.uu),
                ("K_ur", emp.ur, mean_n.ur),
                ("K_rr", emp.rr, mean_n.rr),
            ):
                rows.append(dict(width=width, seed=seed, block=block, rel_distance=float((a - b).norm() / b.norm())))
    return Shared(mean, pd.DataFrame(rows))


def job(cfg: DictConfig, shared: Shared, a: int, width: int, weighting: str, seed: int, checkpoint=None) -> dict[str, pd.DataFrame]:
    """Train one PINN (module docstring); its table row, history and spectra."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    prob = problem(cfg, a, dtype)
    net = network(width, seed, dtype)
    pinn = PINN(net, prob.operator, prob.x_u, prob.g, prob.x_r, prob.h, domain=prob.domain)
    key = dict(a=a, width=width, weighting=weighting, seed=seed)
    theta0, k0 = flat(net), pinn.kernels()
    with torch.no_grad():
        du, dr = pinn.residuals()
        e0, u0_grid = torch.cat([du, dr]).to(F64), net(prob.grid).to(F64)
    history = []

    def record(step: int, p: PINN) -> None:
        with torch.no_grad():
            du, dr = p.residuals()
        history.append(
            dict(
                key,
                step=step,
                t=cfg.lr * step,
                mse_u=float(du.square().mean()),
                mse_r=float(dr.square().mean()),
                rel_l2_error=rel_l2(p.net, prob),
            )
        )

    result = train_pinn(
        pinn,
        cfg.lr,
        cfg.steps,
        adaptive_every=cfg.adaptive_every if weighting == "ntk" else None,
        callback=record,
        callback_every=cfg.record_every,
        compile=bool(cfg.compile),
    )
    k_end = pinn.kernels()
    hist = pd.DataFrame(history)
    hist["lambda_u"] = [result.lambda_u[s] for s in hist.step]
    hist["lambda_r"] = [result.lambda_r[s] for s in hist.step]
    predicted = math.nan
    if width == cfg.width:
        weights = (1.0, 1.0) if weighting == "none" else adaptive_weights(shared.mean.blocks)
        pred = kernel_prediction(shared.mean, prob, e0, u0_grid, cfg.lr, weights, list(hist.step), cfg.n_boundary)
        hist["mse_u_kernel"], hist["mse_r_kernel"], hist["rel_l2_error_kernel"] = zip(*pred)
        predicted = pred[-1][2]
    last = hist.iloc[-1]
    trace = lambda k: float(k.rr.diagonal().sum() / k.uu.diagonal().sum())  # noqa: E731
    row = dict(
        key,
        steps=cfg.steps,
        rel_l2_error=float(last.rel_l2_error),
        mse_u=float(last.mse_u),
        mse_r=float(last.mse_r),
        kernel_change=float((k_end.full() - k0.full()).norm() / k0.full().norm()),
        weight_change=float((flat(net) - theta0).norm() / theta0.norm()),
        trace_ratio_0=trace(k0),
        trace_ratio_T=trace(k_end),
        lambda_u=result.lambda_u[-1],
        lambda_r=result.lambda_r[-1],
        predicted_rel_l2_error=predicted,
    )
    spectra = pd.DataFrame(spectra_rows(k0, "init", **key) + spectra_rows(k_end, "end", **key))
    return {"table": pd.DataFrame([row]), "history": hist, "spectra": spectra}


def jobs(cfg: DictConfig, shared: Shared) -> list[tuple[str, object]]:
    """Every (a, weighting, seed) at the table's width, then the stability widths at a = stability_a without weights."""
    seeds = range(cfg.seed, cfg.seed + cfg.n_seeds)
    specs = [(a, cfg.width, w, s) for a in cfg.a_values for w in WEIGHTINGS for s in seeds]
    specs += [(cfg.stability_a, n, "none", s) for n in cfg.stability_widths for s in seeds]
    out, seen = [], set()
    for a, n, w, s in specs:
        name = f"a{a}_w{n}_{w}_s{s}"
        if name not in seen:
            seen.add(name)
            out.append((name, partial(job, cfg, shared, a, n, w, s)))
    return out


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    table = tables["table"].sort_values(["a", "width", "weighting", "seed"]).reset_index(drop=True)
    kernel = table[(table.a == cfg.stability_a) & (table.weighting == "none")][["width", "seed", "kernel_change", "weight_change"]]
    fits = []
    for block, rows in shared.limit.groupby("block", sort=False):
        fits.append(dict(quantity=f"limit_{block}", **fit_exponent(rows.width.to_numpy(), rows.rel_distance.to_numpy())))
    fits.append(dict(quantity="kernel_change", **fit_exponent(kernel.width.to_numpy(), kernel.kernel_change.to_numpy())))
    main = table[table.width == cfg.width]
    table_out = main[["a", "width", "weighting", "seed", "steps", "rel_l2_error"]].copy()
    extra = main.drop(columns=["steps", "rel_l2_error"])
    return {
        "table": table_out.merge(extra, on=["a", "width", "weighting", "seed"]),
        "kernel": kernel.sort_values(["width", "seed"]).reset_index(drop=True),
        "history": tables["history"],
        "spectra": tables["spectra"],
        "limit": shared.limit,
        "fits": pd.DataFrame(fits),
    }


EXPERIMENT = Experiment(
    name="pinn_ntk",
    check=check_config,
    prepare=prepare,
    jobs=jobs,
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(mean_kernel_width=cfg.width, quadrature_order=cfg.quadrature_order),
    schema=PinnNtkSchema,
    tiny=(
        "a_values=[1,4]",
        "width=16",
        "stability_widths=[8,16]",
        "n_seeds=1",
        "n_boundary=4",
        "n_residual=6",
        "n_grid=20",
        "steps=20",
        "lr=1.0e-4",
        "adaptive_every=5",
        "record_every=10",
        "limit_widths=[8,32]",
        "limit_seeds=2",
        "quadrature_order=41",
        "compile=false",
    ),
    desc="PINNs (a, width, weighting, seed)",
)
run = EXPERIMENT.run
