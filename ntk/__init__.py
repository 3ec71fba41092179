"""Neural tangent kernels in PyTorch: Jacot, Gabriel & Hongler, "Neural Tangent Kernel: Convergence
and Generalization in Neural Networks" (NeurIPS 2018), and what followed.

    >>> import torch, ntk
    >>> model = ntk.NTKMLP(in_dim=2, width=1000, depth=4, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    >>> theta0 = ntk.empirical_ntk(model, x)  # the exact empirical NTK, (8, 8)
    >>> nngp, theta = ntk.limiting_kernels(x.double(), None, depth=4)  # its n = inf limit (Theorem 1)
    >>> result = ntk.gradient_descent(model, x, x[:, :1] * x[:, 1:], lr=1.0, steps=100)  # t = lr x steps

The names below are the public API; the submodules hold them by topic: `ntk.model`, `ntk.cnn` and
`ntk.blocks` (NTK-parameterised networks and their building blocks; other parameterisations and Chizat's scale in `ntk.parameterization`), `ntk.empirical` (the empirical NTK; of differential operators in `ntk.operators`, physics-informed networks trained through them in `ntk.pinn`; its methods in the table
`ntk.methods`, its memory plan in `ntk.planning`, its per-parameter report in `ntk.report`; kernels in tiles on disk and predictions from them in `ntk.tiles`), `ntk.analytic` and `ntk.limits` (infinite-width kernels of MLPs and of any composition of blocks), `ntk.train`
(gradient descent in t = lr x steps), `ntk.predict` (kernel regression, the n = inf Gaussian),
`ntk.spectrum` (kernel PCA, Lanczos), `ntk.finite` (finite-width corrections), `ntk.drift`,
`ntk.activations`, `ntk.data`, `ntk.memory`, `ntk.utils`.
"""

from ntk.activations import ACTIVATIONS, Activation, as_activation, get_activation
from ntk.backends import layerwise_factors
from ntk.blocks import AvgPool, Conv, Dense, Elementwise, Flatten, GlobalAvgPool, Residual
from ntk.cnn import NTKCNN
from ntk.data import circle_grid, circle_points, gaussian_inputs, load_mnist, mnist_batch, mnist_split, product_target
from ntk.drift import DriftLogger, kernel_drift, weight_drift
from ntk.empirical import empirical_nngp, empirical_ntk, ntk_row, ntk_vector_product
from ntk.finite import flow_direction, kernel_velocity, ntk_diagonal_ensemble, quadratic_model, train_quadratic
from ntk.limits import limiting_kernels, model_limiting_kernels
from ntk.memory import NTKMemoryError, available_memory, parse_bytes
from ntk.methods import METHODS, KernelMethod, flop_counts
from ntk.model import NTKMLP, NTKDense
from ntk.operators import OperatorKernels, OperatorModel, operator_ntk, operator_values
from ntk.parameterization import PARAMETERIZATIONS, LazyScaled, kernel_rates, layer_scales
from ntk.pinn import PINN, PINNResult, adaptive_weights, kernel_matrix, shallow_mean_features, shallow_mean_kernels, train_pinn
from ntk.planning import memory_estimate, plan_method
from ntk.predict import (
    flow_matrix,
    gaussian_prediction,
    kernel_gradient_descent,
    kernel_regression,
    linearised_gradient_descent,
    prediction_covariance,
)
from ntk.report import KernelReport, kernel_report
from ntk.spectrum import kernel_pca, kernel_pca_matrix_free, power_iteration, rayleigh_quotients, top_eigenvalue
from ntk.tiles import TileStore, stored_gaussian, stored_regression
from ntk.train import DivergenceError, TrainResult, TrainState, gradient_descent, largest_stable_lr, mse_cost, record_steps
from ntk.utils import resolve_device, resolve_dtype

__all__ = [
    # networks
    "NTKMLP",
    "NTKDense",
    "NTKCNN",
    "PARAMETERIZATIONS",
    "layer_scales",
    "kernel_rates",
    "LazyScaled",
    "Dense",
    "Conv",
    "Elementwise",
    "AvgPool",
    "GlobalAvgPool",
    "Flatten",
    "Residual",
    "Activation",
    "ACTIVATIONS",
    "get_activation",
    "as_activation",
    # empirical kernels
    "empirical_ntk",
    "empirical_nngp",
    "ntk_row",
    "ntk_vector_product",
    "operator_ntk",
    "OperatorModel",
    "OperatorKernels",
    "PINN",
    "PINNResult",
    "train_pinn",
    "shallow_mean_kernels",
    "shallow_mean_features",
    "kernel_matrix",
    "adaptive_weights",
    "operator_values",
    "layerwise_factors",
    "METHODS",
    "KernelMethod",
    "flop_counts",
    "memory_estimate",
    "plan_method",
    "kernel_report",
    "TileStore",
    "stored_regression",
    "stored_gaussian",
    "KernelReport",
    "NTKMemoryError",
    "available_memory",
    "parse_bytes",
    # infinite width and predictions
    "limiting_kernels",
    "model_limiting_kernels",
    "flow_matrix",
    "kernel_regression",
    "gaussian_prediction",
    "prediction_covariance",
    "kernel_gradient_descent",
    "linearised_gradient_descent",
    # training
    "gradient_descent",
    "largest_stable_lr",
    "record_steps",
    "mse_cost",
    "TrainResult",
    "TrainState",
    "DivergenceError",
    # spectrum, drift, finite width
    "kernel_pca",
    "rayleigh_quotients",
    "kernel_pca_matrix_free",
    "power_iteration",
    "top_eigenvalue",
    "kernel_drift",
    "weight_drift",
    "DriftLogger",
    "flow_direction",
    "kernel_velocity",
    "ntk_diagonal_ensemble",
    "quadratic_model",
    "train_quadratic",
    # data and devices
    "gaussian_inputs",
    "product_target",
    "circle_grid",
    "circle_points",
    "load_mnist",
    "mnist_batch",
    "mnist_split",
    "resolve_device",
    "resolve_dtype",
]
