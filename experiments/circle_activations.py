"""The limiting NTK on the unit circle for several activations (the Figure 1 probe, at n = inf).

Theta_inf(x0, x(gamma)) and Sigma_inf(x0, x(gamma)) with x0 = (1, 0) and x(gamma) = (cos gamma,
sin gamma), for every activation in `activations` (`ntk.analytic.limiting_kernels`, default method:
closed form, Hermite series, or quadrature), at model.depth and model.beta. The kernels' scales
differ by orders of magnitude between activations, so the figure shows Theta(x0, x(gamma)) /
Theta(x0, x0) beside the raw values.

Outputs (cfg.out_dir): table.csv (activation, method, gamma, ntk, nngp, ntk_normalised),
summary.csv (activation, method, ntk_0, gamma_quarter, ntk_quarter, ntk_pi), config.yaml,
provenance.json (with each activation's wall time) and circle_activations.png/.pdf.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from experiments.runner import Experiment
from experiments.validation import check_choice, check_depth_and_beta, check_odd_grid, check_run
from ntk.activations import ACTIVATIONS
from ntk.analytic import HermiteSeriesError, limiting_kernels
from ntk.data import circle_grid

TABLES = ("table", "summary")


@dataclass
class CircleActivationsSchema:
    activations: list[str] = MISSING


def check_config(cfg: DictConfig) -> None:
    if not cfg.activations:
        raise ValueError("activations must list at least one activation")
    for name in cfg.activations:
        check_choice("activation", name, sorted(ACTIVATIONS))
    check_depth_and_beta(cfg)
    check_odd_grid("data.n_gamma", cfg.data.n_gamma)
    check_run(cfg)


def method_used(name: str, x: torch.Tensor, depth: int, beta: float) -> str:
    """Which method the default ("auto") picks for this activation at these inputs."""
    if ACTIVATIONS[name].gaussian is not None:
        return "closed form"
    try:
        limiting_kernels(x, None, depth, beta, name, method="hermite")
        return "Hermite series"
    except HermiteSeriesError:
        return "quadrature"


def job(cfg: DictConfig, shared: tuple, name: str, checkpoint=None) -> dict[str, pd.DataFrame]:
    gamma, grid = shared
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    nngp, ntk = limiting_kernels(x0, grid, cfg.model.depth, cfg.model.beta, name)
    nngp, ntk = nngp[0].numpy(), ntk[0].numpy()
    method = method_used(name, torch.cat([x0, grid]), cfg.model.depth, cfg.model.beta)
    middle = len(gamma) // 2  # gamma = 0
    quarter = middle + middle // 2  # gamma = pi / 2 when n_gamma - 1 is a multiple of 4
    table = pd.DataFrame(dict(activation=name, method=method, gamma=gamma.numpy(), ntk=ntk, nngp=nngp, ntk_normalised=ntk / ntk[middle]))
    summary = pd.DataFrame(
        [
            dict(
                activation=name,
                method=method,
                ntk_0=ntk[middle],
                gamma_quarter=gamma[quarter].item(),
                ntk_quarter=ntk[quarter],
                ntk_pi=ntk[-1],
            )
        ]
    )
    return {"table": table, "summary": summary}


EXPERIMENT = Experiment(
    name="circle_activations",
    check=check_config,
    prepare=lambda cfg: circle_grid(cfg.data.n_gamma),
    jobs=lambda cfg, shared: [(name, partial(job, cfg, shared, name)) for name in cfg.activations],
    tables=TABLES,
    desc="activations",
    schema=CircleActivationsSchema,
    tiny=("activations=[relu,tanh,elu]", "data.n_gamma=11"),
)
run = EXPERIMENT.run  # the limiting kernels on the circle for every activation: table.csv's table
