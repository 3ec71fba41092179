"""Devices: every library function computes where its inputs live, the same seed gives the same
network everywhere, and CUDA's failures and budget follow the project's rules.

Without a GPU, device mixing is caught with the `meta` device standing in for CUDA, under a
torch-function mode that refuses any operation whose tensors live on two devices (a plain meta
tensor lets `meta @ cpu` through). The `device` fixture runs the numerical checks on the CPU and,
where CUDA is available, again on the GPU (those are marked gpu and skip cleanly without it).
"""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import experiments.persistence as common
import experiments.run as run
from experiments.runner import Experiment
from ntk.empirical import empirical_nngp, empirical_ntk, ntk_vector_product
from ntk.memory import available_memory
from ntk.model import NTKMLP
from ntk.predict import kernel_gradient_descent, linearised_gradient_descent
from ntk.spectrum import kernel_pca, kernel_pca_matrix_free, power_iteration, top_eigenvalue
from ntk.train import fused_step, gradient_descent, largest_stable_lr
from ntk.utils import resolve_device
from tests.conftest import mlp, needs_cuda, rel_fro

META = torch.device("meta")


class OneDevice(TorchFunctionMode):
    """Refuse every torch operation whose tensor arguments live on more than one device
    (0-dim CPU tensors, which torch treats as scalars, excepted)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        devices = {t.device for t in leaves if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def meta_model(out_dim=1, **kw):
    return NTKMLP(3, 8, 3, out_dim=out_dim, generator=torch.Generator().manual_seed(0), device=META, dtype=torch.float64, **kw)


def test_the_guard_catches_a_hidden_cpu_tensor():
    """The mode itself: a product of a meta and a CPU matrix, which torch alone lets through, is refused."""
    a, b = torch.empty(3, 3, device=META), torch.ones(3, 3)
    assert (a @ b).device == META  # plain torch: no error
    with OneDevice(), pytest.raises(AssertionError, match="mixes devices"):
        a @ b


def test_kernel_gradient_descent_moves_cpu_targets_to_the_kernel_device():
    """The crash of mnist_generalization's first network on CUDA: targets left on the CPU."""
    n, m, out = 5, 4, 3
    k_train, k_eval = (
        torch.empty(n, n, out, out, device=META, dtype=torch.float64),
        torch.empty(m, n, out, out, device=META, dtype=torch.float64),
    )
    f0_train, f0_eval = torch.empty(n, out, device=META), torch.empty(m, out, device=META)
    y = torch.randn(n, out, dtype=torch.float64)  # on the CPU, as the experiment's split keeps it
    with OneDevice():
        out_t = kernel_gradient_descent(k_train, k_eval, f0_train, f0_eval, y, lr=0.5, steps=3, record_t=[0.0, 1.5])
    assert {v.device for v in out_t.values()} == {META}


def test_power_iteration_draws_its_start_on_the_cpu_and_moves_it():
    matrix = torch.empty(6, 6, device=META, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with OneDevice():
        values, funcs = power_iteration(lambda v: matrix @ v, 6, 2, iters=1, generator=g, device=META)
    assert values.device == funcs.device == META


@pytest.mark.parametrize("out_dim", [1, 2])
def test_ntk_functions_compute_on_the_model_device(out_dim):
    model = meta_model(out_dim)
    x_cpu = torch.randn(4, 3, dtype=torch.float64)  # inputs and vectors on the CPU: moved to the model's device
    v_cpu = torch.randn(4, out_dim, dtype=torch.float64).squeeze(-1)
    with OneDevice():
        for method in ("layerwise", "ntk_vp", "jacobian"):
            assert empirical_ntk(model, x_cpu, method=method).device == META, method
        assert empirical_ntk(model, x_cpu, x_cpu[:2]).device == META
        assert empirical_nngp(model, x_cpu).device == META
        assert ntk_vector_product(model, x_cpu, v_cpu).device == META


def test_training_and_the_linearisation_stay_on_the_model_device():
    model = meta_model()
    x, y = torch.empty(4, 3, device=META, dtype=torch.float64), torch.empty(4, 1, device=META, dtype=torch.float64)
    with OneDevice():
        loss, f, update = fused_step(model, x, y)
        update(0.1)
        assert loss.device == f.device == model.layers[0].weight.device == META
        out = linearised_gradient_descent(model, torch.randn(4, 3), torch.randn(4, 1), 0.5, 2, torch.randn(2, 3), [1.0])
    assert out[1.0].device == META


def test_the_network_is_drawn_on_the_cpu_whatever_its_device():
    """Same CPU generator state before and after building on the CPU and on another device: the
    same numbers were drawn (then moved), so the same seed gives the same network everywhere."""
    g_cpu, g_meta = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    NTKMLP(3, 16, 4, generator=g_cpu)
    moved = NTKMLP(3, 16, 4, generator=g_meta, device=META)
    assert torch.equal(g_cpu.get_state(), g_meta.get_state())
    assert all(p.device == META for p in moved.parameters())


@needs_cuda
@pytest.mark.gpu
def test_same_seed_same_network_on_cpu_and_gpu():
    cpu = NTKMLP(5, 32, 3, generator=torch.Generator().manual_seed(3))
    gpu = NTKMLP(5, 32, 3, generator=torch.Generator().manual_seed(3), device="cuda")
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        assert torch.equal(p, q.cpu())


# ----------------------------------------------------------------------------- numerics on every device


def make(device, out_dim=1, depth=3, width=12, dtype=torch.float64):
    return mlp(3, width, depth, 0, dtype, out_dim=out_dim, device=device)


@pytest.mark.parametrize("out_dim", [1, 3])
def test_every_method_equals_the_jacobian_contraction_on_the_device(device, out_dim):
    model = make(device, out_dim)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    ref = empirical_ntk(model, x, method="jacobian")
    assert ref.device.type == device.type
    for method in ("layerwise", "ntk_vp"):
        assert rel_fro(empirical_ntk(model, x, method=method), ref) < 1e-10, method
    cpu_ref = empirical_ntk(make("cpu", out_dim), x.cpu(), method="jacobian")
    assert rel_fro(ref.cpu(), cpu_ref) < 1e-10  # the same network on the CPU


def test_fused_training_equals_autograd_on_the_device(device):
    model = make(device, depth=4)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    y = x[:, :1] * x[:, 1:2]
    ref = copy.deepcopy(model)
    fused = gradient_descent(model, x, y, lr=1.0, steps=40, method="fused")  # 40 steps: the losses come back in two reads
    plain = gradient_descent(ref, x, y, lr=1.0, steps=40, method="autograd")
    assert len(fused.loss) == 41 and fused.loss == pytest.approx(plain.loss, rel=1e-10, abs=1e-14)
    expected = [0.5 * (model(x) - y).square().sum().item() / 10]
    assert fused.loss[-1] == pytest.approx(expected[0], rel=1e-12)


def test_matrix_free_pca_with_ntk_vector_products_on_the_device(device):
    """The docstring example of `kernel_pca_matrix_free`: vectors handed to the model's device."""
    model = make(device, width=20)
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    values, funcs = kernel_pca_matrix_free(lambda v: ntk_vector_product(model, x, v), 12, 3, device=device)
    ref_values, ref_funcs = kernel_pca(empirical_ntk(model, x), 3)
    assert values.device.type == funcs.device.type == device.type
    assert rel_fro(values, ref_values) < 1e-8 and rel_fro(funcs.abs(), ref_funcs.abs()) < 1e-6


def test_linearisation_from_the_kernel_equals_jvp_training_on_the_device(device):
    model = make(device, out_dim=2, width=24)
    g = torch.Generator().manual_seed(3)
    x, xe = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)  # on the CPU: the functions move it
    direct = linearised_gradient_descent(model, x, y, 0.5, 20, xe, [10.0])
    xd, xed = x.to(device), xe.to(device)
    with torch.no_grad():
        f0, f0e = model(xd), model(xed)
    k = empirical_ntk(model, torch.cat([xd, xed]), xd)
    from_kernel = kernel_gradient_descent(k[:6], k[6:], f0, f0e, y, 0.5, 20, [10.0])
    assert from_kernel[10.0].device.type == device.type
    assert rel_fro(from_kernel[10.0], direct[10.0]) < 1e-10


# ----------------------------------------------------------------------------- the stability bound by Lanczos


def test_top_eigenvalue_equals_eigvalsh(device):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 40, generator=g, dtype=torch.float64)
    psd = (a @ a.T).to(device)  # rank 40, many zero eigenvalues
    assert top_eigenvalue(psd) == pytest.approx(torch.linalg.eigvalsh(psd.cpu())[-1].item(), rel=1e-12)
    # an NTK-like kernel with an O-fold (near-)degenerate top: Theta (x) I_O plus a small perturbation
    k = empirical_ntk(make("cpu", width=30), torch.randn(50, 3, generator=g, dtype=torch.float64))
    blocks = torch.kron(k, torch.eye(4, dtype=torch.float64)) + 1e-9 * torch.diag(torch.rand(200, generator=g, dtype=torch.float64))
    exact = torch.linalg.eigvalsh(blocks)[-1].item()
    # the residual test (1e-10 relative) stops inside the cluster of the 4 top eigenvalues (1e-9 wide)
    assert top_eigenvalue(blocks.to(device)) == pytest.approx(exact, rel=1e-10)
    assert top_eigenvalue(lambda v: blocks.to(device) @ v, 200, device=device) == pytest.approx(exact, rel=1e-10)


def test_top_eigenvalue_says_when_it_did_not_converge():
    spread = torch.diag(torch.linspace(1.0, 2.0, 500, dtype=torch.float64))  # no gap: slow
    with pytest.raises(RuntimeError, match="did not reach the relative residual"):
        top_eigenvalue(spread, max_iter=3)


def test_largest_stable_lr_is_two_over_the_top_eigenvalue():
    model = make("cpu", out_dim=3, width=20)
    x = torch.randn(15, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    jac = empirical_ntk(model, x, method="jacobian").permute(0, 2, 1, 3).reshape(45, 45)
    assert largest_stable_lr(model, x) == pytest.approx(2 * 15 / torch.linalg.eigvalsh(jac)[-1].item(), rel=1e-12)


def test_divergence_names_the_first_step_even_when_the_losses_are_read_later():
    """Losses are read back every 32 steps; the error still names the first step that diverged."""
    model = make("cpu", width=40)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = x[:, :1]
    lr = 50 * largest_stable_lr(model, x)  # far above the catapult range: the loss explodes
    probe, first = copy.deepcopy(model), None
    losses = []
    for k in range(60):  # the same steps, one loss at a time
        loss, _, update = fused_step(probe, x, y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e4 * losses[0]:
            first = k
            break
        update(lr)
    assert first is not None and first > 0
    with pytest.raises(Exception, match=rf"\(step {first}\)"):
        gradient_descent(model, x, y, lr=lr, steps=60)


# ----------------------------------------------------------------------------- CUDA's budget and failures, simulated


def test_cuda_budget_counts_blocks_the_allocator_keeps_for_reuse(monkeypatch):
    gib = 1024**3
    monkeypatch.delenv("NTK_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    # 1 GiB free on the device, and 20 GiB reserved by PyTorch but holding no tensor: 21 GiB, 80% of it
    assert available_memory("cuda:0") == int(0.8 * 21 * gib)


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_unavailable_device_index_is_refused(monkeypatch):
    fake_gpus(monkeypatch, 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(
        ValueError, match=r"device 'cuda:7' requested but this machine has 1 CUDA device\(s\); allowed: cuda:0 \.\.\. cuda:0"
    ):
        resolve_device("cuda:7")


def main_exits(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    """`python -m experiments.run <argv>` in this process (so that torch can be monkeypatched)."""
    monkeypatch.setattr(sys, "argv", ["experiments.run", *argv])
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # find configs/ beside the file, as under python -m
    with pytest.raises(SystemExit) as exit_info:
        run.main()
    return exit_info.value.code, capsys.readouterr().err


def test_unavailable_device_index_on_the_command_line(monkeypatch, capsys, tmp_path):
    fake_gpus(monkeypatch, 1)
    out = tmp_path / "out"
    status, err = main_exits(monkeypatch, capsys, ["+exp=circle_width", "device=cuda:7", f"out_dir={out}"])
    assert status == 2
    assert err == "error: device 'cuda:7' requested but this machine has 1 CUDA device(s); allowed: cuda:0 ... cuda:0\n"
    assert not out.exists()


def test_cuda_without_cuda_on_the_command_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    status, err = main_exits(monkeypatch, capsys, ["+exp=mnist_generalization", "device=cuda", f"out_dir={out}"])
    assert (status, err) == (2, "error: device 'cuda' requested but CUDA is not available; use device=auto or device=cpu\n")
    assert not out.exists()


def test_cuda_out_of_memory_is_one_line(monkeypatch, capsys, tmp_path):
    message = (
        "CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of 139.81 GiB of which 2.31 GiB is free. "
        "Including non-PyTorch memory, this process has 137.49 GiB memory in use. Of the allocated memory 130.02 GiB is allocated "
        "by PyTorch, and 6.1 GiB is reserved by PyTorch but unallocated.\nIf reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    )

    def out_of_memory(cfg):
        raise torch.OutOfMemoryError(message)

    monkeypatch.setattr(run, "load_experiment", lambda name: Experiment(name=name, entry=out_of_memory))
    out = tmp_path / "out"
    status, err = main_exits(monkeypatch, capsys, ["+exp=circle_width", f"out_dir={out}"])
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(
        "error: CUDA out of memory (Tried to allocate 4.00 GiB; GPU 0 has a total capacity of 139.81 GiB of which 2.31 GiB is free); "
    )
    assert not out.exists()


def test_resume_key_holds_the_resolved_device_type(compose_cfg, monkeypatch):
    """auto and cpu are one key on a CPU machine; a GPU machine's parts get another, so a rerun
    on another device starts its networks afresh instead of mixing them with these."""
    args = ["+exp=circle_width", "out_dir=unused"]
    on_cpu = common.config_key(compose_cfg([*args, "device=auto"]))
    assert on_cpu == common.config_key(compose_cfg([*args, "device=cpu"]))
    monkeypatch.setattr(common, "resolve_device", lambda name: torch.device("cuda" if name in ("auto", "cuda") else name))
    on_gpu = common.config_key(compose_cfg([*args, "device=auto"]))
    assert on_gpu != on_cpu and on_gpu == common.config_key(compose_cfg([*args, "device=cuda"]))
    assert common.config_key(compose_cfg([*args, "device=cpu", "dtype=float64"])) != on_cpu


def test_the_gemm_probe_size_comes_from_the_environment(monkeypatch):
    """NTK_GEMM_SIZE shrinks the timed product (never grows it); a bad value is refused in one line."""
    monkeypatch.delenv("NTK_GEMM_SIZE", raising=False)
    assert common.gemm_size() == 2048 and common.gemm_size(1024) == 1024
    monkeypatch.setenv("NTK_GEMM_SIZE", "256")
    assert common.gemm_size() == 256 and common.gemm_size(128) == 128
    assert common.gemm_gflops(rounds=1) > 0
    monkeypatch.setenv("NTK_GEMM_SIZE", "big")
    with pytest.raises(ValueError, match=r"NTK_GEMM_SIZE must be an integer >= 16 \(the side of the timed matrix product\), got 'big'"):
        common.gemm_gflops()
