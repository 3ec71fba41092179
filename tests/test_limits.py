"""Infinite-width kernels of block compositions (ntk.limits) against independent computations:
neural-tangents' stax (golden values), the MLP recursion of ntk.analytic, and Monte Carlo over wide
finite networks of the same modules."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import ntk
from ntk.blocks import AvgPool, Conv, Dense, Elementwise, Flatten, GlobalAvgPool, Residual
from ntk.memory import NTKMemoryError
from tests.conftest import rel_fro

GOLDEN = Path(__file__).parent / "data" / "neural_tangents_cnn.json"


def build(specs: list, in_shape: list[int], width: int, generator: torch.Generator, dtype=torch.float64) -> nn.Module:
    """The network of a golden file's layer specifications, from ntk.blocks (scripts/neural_tangents_cnn_golden.py)."""
    dims = len(in_shape) - 1
    channels = in_shape[0]
    features = in_shape[0] if dims == 0 else None
    layers = []
    for spec in specs:
        kind = spec[0]
        if kind == "conv":
            _, _, k, stride, pad, w_std, b_std = spec
            layers.append(
                Conv(
                    channels,
                    width,
                    k,
                    stride,
                    pad,
                    dims=dims,
                    sigma_w=w_std,
                    beta=b_std or 0.0,
                    bias=b_std is not None,
                    generator=generator,
                    dtype=dtype,
                )
            )
            channels = width
        elif kind == "dense":
            _, outputs, w_std, b_std = spec
            layers.append(
                Dense(
                    features,
                    outputs if outputs == 1 and spec is specs[-1] else width,
                    beta=b_std or 0.0,
                    sigma_w=w_std,
                    bias=b_std is not None,
                    generator=generator,
                    dtype=dtype,
                )
            )
            features = layers[-1].out_features
        elif kind in ("relu", "erf", "gelu"):
            layers.append(Elementwise(kind))
        elif kind == "avgpool":
            layers.append(AvgPool(spec[1], dims=dims))
        elif kind == "gap":
            layers.append(GlobalAvgPool())
            features = channels
        elif kind == "flatten":
            layers.append(Flatten())
            features = None  # set below from a forward pass
        elif kind == "residual":
            layers.append(Residual(build(spec[1], [channels, *[1] * dims], width, generator, dtype)))
        if features is None and kind == "flatten":
            probe = nn.Sequential(*layers)(torch.zeros(1, *in_shape, dtype=dtype))
            features = probe.shape[1]
    return nn.Sequential(*layers)


def golden_cases() -> list[str]:
    return sorted(json.loads(GOLDEN.read_text())["architectures"]) if GOLDEN.exists() else []


@pytest.mark.parametrize("name", golden_cases())
def test_equals_neural_tangents(name):
    """The NNGP kernel and NTK of six CNN architectures and an MLP against neural-tangents' stax, to 1e-7."""
    case = json.loads(GOLDEN.read_text())["architectures"][name]
    model = build(case["layers"], case["input"], 4, torch.Generator().manual_seed(0))
    x1, x2 = (torch.tensor(case[k], dtype=torch.float64) for k in ("x1", "x2"))
    nngp, theta = ntk.limiting_kernels(model, x1)
    assert rel_fro(nngp, torch.tensor(case["nngp"])) < 1e-7
    assert rel_fro(theta, torch.tensor(case["ntk"])) < 1e-7
    nngp12, theta12 = ntk.limiting_kernels(model, x1, x2)
    assert rel_fro(nngp12, torch.tensor(case["nngp_12"])) < 1e-7
    assert rel_fro(theta12, torch.tensor(case["ntk_12"])) < 1e-7


@pytest.mark.parametrize("name", golden_cases())
def test_float32_stays_within_its_rounding_of_neural_tangents(name):
    """In float32 (every step, the Hermite coefficients computed in float64 and rounded) the kernels
    come back in float32 and within 1e-5 of neural-tangents' float64 values: a few hundred float32
    roundings (eps 6e-8) through the layers, not a loss of digits (measured: 2e-8 to 1.5e-7)."""
    case = json.loads(GOLDEN.read_text())["architectures"][name]
    model = build(case["layers"], case["input"], 4, torch.Generator().manual_seed(0), dtype=torch.float32)
    x1, x2 = (torch.tensor(case[k], dtype=torch.float32) for k in ("x1", "x2"))
    kernels = (*ntk.limiting_kernels(model, x1, dtype=torch.float32), *ntk.limiting_kernels(model, x1, x2, dtype=torch.float32))
    for kernel, key in zip(kernels, ("nngp", "ntk", "nngp_12", "ntk_12")):
        assert kernel.dtype == torch.float32
        assert rel_fro(kernel.double(), torch.tensor(case[key])) < 1e-6, key


@pytest.mark.parametrize("activation", ["softplus", "silu"])
def test_float32_hermite_maps_stay_float32(activation):
    """Activations on the Hermite path (coefficients from a float64 quadrature rule) in float32: the
    kernels are float32 and within float32 rounding of the float64 ones."""
    g = torch.Generator().manual_seed(0)
    layers = [Conv(1, 1, 3, 1, 1, bias=False, generator=g), Elementwise(activation), Conv(1, 1, 3, 2, 1, bias=False, generator=g)]
    model = nn.Sequential(*layers, Elementwise(activation), GlobalAvgPool(), Dense(1, 1, 0.0, bias=False, generator=g))
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for single, double in zip(ntk.limiting_kernels(model, x.float(), dtype=torch.float32), ntk.limiting_kernels(model, x)):
        assert single.dtype == torch.float32 and rel_fro(single.double(), double) < 1e-6


def test_the_golden_file_covers_the_required_architectures():
    assert {"no_pooling", "strided_gap", "bias_erf_avgpool", "residual", "conv1d_gelu", "deep_gap"} <= set(golden_cases())


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "gelu"])
def test_dense_only_equals_the_mlp_recursion(activation):
    """An NTKMLP through the block recursion equals ntk.analytic's MLP recursion (the paper's Theorem 1)."""
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = ntk.NTKMLP(3, 8, depth=4, beta=0.2, activation=activation, generator=torch.Generator().manual_seed(0))
    nngp, theta = ntk.limiting_kernels(model, x)
    ref_nngp, ref_theta = ntk.limiting_kernels(x, None, depth=4, beta=0.2, activation=activation)
    assert rel_fro(nngp, ref_nngp) < 1e-12 and rel_fro(theta, ref_theta) < 1e-12
    nngp12, theta12 = ntk.limiting_kernels(model, x[:2], x[2:])
    assert rel_fro(theta12, ref_theta[:2, 2:]) < 1e-12


def small_cnn(width: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(
        Conv(1, width, 3, padding=1, generator=g, dtype=torch.float64),
        Elementwise("relu"),
        Conv(width, width, 3, stride=2, padding=1, generator=g, dtype=torch.float64),
        Elementwise("relu"),
        GlobalAvgPool(),
        Dense(width, 1, beta=0.1, generator=g, dtype=torch.float64),
    )


def test_wide_networks_approach_the_limit_at_width_to_the_minus_one_half():
    """Monte Carlo: the empirical NTK (structured, exact) averaged over 6 networks of the same module
    approaches the analytic CNTK; its error falls by about 2 from 16 to 64 channels (C^-1/2)."""
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, theta = ntk.limiting_kernels(small_cnn(1, 0), x)
    errors = []
    for width in (16, 64):
        mean = torch.stack([ntk.empirical_ntk(small_cnn(width, seed), x) for seed in range(6)]).mean(0)
        errors.append(rel_fro(mean, theta))
    assert errors[1] < 0.1
    assert 1.3 < errors[0] / errors[1] < 3.2  # 4x the channels: 2x smaller error expected


def test_pairs_in_chunks_equal_all_at_once():
    model = (
        build(json.loads(GOLDEN.read_text())["architectures"]["bias_erf_avgpool"]["layers"], [2, 8, 8], 4, torch.Generator().manual_seed(0))
        if GOLDEN.exists()
        else None
    )
    if model is None:
        pytest.skip("no golden file")
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    whole = ntk.limiting_kernels(model, x)
    chunked = ntk.limiting_kernels(model, x, memory_limit=2_000_000)  # a few pairs at a time
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))
    with pytest.raises(NTKMemoryError, match="per pair of inputs"):
        ntk.limiting_kernels(model, x, memory_limit=10_000)


def _sublattice_models():
    g = torch.Generator().manual_seed(3)
    relu, gap = Elementwise("relu"), GlobalAvgPool()
    return {
        "ntkcnn": (ntk.NTKCNN(1, 1, 3, generator=g), (1, 12, 12)),
        "odd size": (ntk.NTKCNN(2, 1, 3, generator=g), (2, 11, 11)),  # 11 is no multiple of 2: all pairs there
        "three strides, modulo 8": (ntk.NTKCNN(1, 1, 4, generator=g), (1, 16, 16)),  # first layer: pairs equal modulo 8
        "mixed, modulo 4 then 2": (ntk.NTKCNN(1, 1, 4, generator=g), (1, 20, 20)),  # 5 x 5 before the last: no sublattice there
        "1-D, erf": (
            nn.Sequential(
                Conv(2, 1, 3, padding=1, dims=1, generator=g),
                Elementwise("erf"),
                Conv(1, 1, 3, 2, 1, dims=1, generator=g),
                relu,
                gap,
                Dense(1, 1, beta=0.1, generator=g),
            ),
            (2, 10),
        ),
        "stride (2, 3), pool": (
            nn.Sequential(
                Conv(1, 1, 3, padding=1, beta=0.2, generator=g),
                Elementwise("gelu"),
                Conv(1, 1, (3, 4), (2, 3), 0, generator=g),
                relu,
                AvgPool(2),
                Conv(1, 1, 3, 2, 1, generator=g),
                relu,
                gap,
                Dense(1, 1, beta=0.1, generator=g),
            ),
            (1, 14, 18),
        ),
        "residual producer": (
            nn.Sequential(
                Conv(1, 1, 3, padding=1, generator=g),
                Residual(nn.Sequential(relu, Conv(1, 1, 3, padding=1, generator=g))),
                relu,
                Conv(1, 1, 3, 2, 1, generator=g),
                relu,
                gap,
                Dense(1, 1, beta=0.1, generator=g),
            ),
            (1, 8, 8),
        ),
    }


@pytest.mark.parametrize("name", list(_sublattice_models()))
def test_a_strided_convolution_reads_its_sublattice_only_and_the_kernels_do_not_change(name, monkeypatch):
    """Below a stride-s convolution the recursion keeps only the position pairs equal modulo s (a quarter
    of them at stride 2 in 2-D), modulo s m below a convolution kept modulo m itself: the kernels equal
    those of the recursion over all pairs."""
    import ntk.limits as limits

    model, shape = _sublattice_models()[name]
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(4, *shape, dtype=torch.float64, generator=g), torch.randn(3, *shape, dtype=torch.float64, generator=g)
    read = []
    phased = limits._window_mean_phased
    monkeypatch.setattr(limits, "_window_mean_phased", lambda t, *a: read.append(t.shape) or phased(t, *a))
    sub = [limits.model_limiting_kernels(model, x1, compile="off"), limits.model_limiting_kernels(model, x1, x2, compile="off")]
    assert read  # the sublattice was used where the sizes allow: for 11 x 11, only below the last convolution (6 x 6)
    assert name != "odd size" or {t[-1] for t in read} == {3}
    # a convolution whose output is itself kept modulo m reads its input modulo s m (the first layer's pairs)
    first = {"ntkcnn": (4, 4), "three strides, modulo 8": (8, 8), "mixed, modulo 4 then 2": (4, 4)}
    assert name not in first or read[0][1:3] == first[name]
    monkeypatch.setattr(limits, "PATCH_SHARE", 1e15)  # no input's patches kept: the first layer unfolds each chunk's inputs
    unkept = [limits.model_limiting_kernels(model, x1, compile="off"), limits.model_limiting_kernels(model, x1, x2, compile="off")]
    for a, b in zip(sub, unkept):
        assert rel_fro(a[0], b[0]) < 1e-14 and rel_fro(a[1], b[1]) < 1e-14
    monkeypatch.setattr(limits, "_sublattices", lambda children, needs, spatial: [()] * len(children))
    every = [limits.model_limiting_kernels(model, x1, compile="off"), limits.model_limiting_kernels(model, x1, x2, compile="off")]
    for a, b in zip(sub, every):
        assert rel_fro(a[0], b[0]) < 1e-13 and rel_fro(a[1], b[1]) < 1e-13


def test_ntkcnn_is_a_composition_of_blocks_with_its_limit():
    model = ntk.NTKCNN(1, 16, depth=2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(3, 1, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert all(isinstance(m, (Conv, Elementwise, GlobalAvgPool, Dense)) for m in model)
    nngp, theta = ntk.limiting_kernels(model, x)
    assert nngp.shape == theta.shape == (3, 3) and torch.all(torch.linalg.eigvalsh(theta) > 0)


@pytest.mark.parametrize(
    "model,x,message",
    [
        (
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()),
            torch.randn(2, 1, 5, 5),
            r"model\[0\] is a Conv2d, which has no infinite-width kernel here; supported: .*Conv",
        ),
        (nn.Sequential(Conv(1, 4, 3), Elementwise("relu"), nn.ReLU()), torch.randn(2, 1, 5, 5), r"model\[2\] is a ReLU"),
        (nn.Sequential(Conv(3, 4, 3), GlobalAvgPool(), Dense(4, 1, 0.1)), torch.randn(2, 1, 5, 5), "3 input channels needs"),
        (nn.Sequential(Conv(1, 4, 3), GlobalAvgPool(), Dense(4, 1, 0.1)), torch.randn(2, 25), r"needs \(N, C, H, W\) inputs"),
        (nn.Sequential(Conv(1, 4, 7), GlobalAvgPool(), Dense(4, 1, 0.1)), torch.randn(2, 1, 5, 5), "does not fit the padded input"),
        (nn.Sequential(Conv(1, 4, 3), Elementwise("relu")), torch.randn(2, 1, 5, 5), r"output must be \(N, O\)"),
        (
            nn.Sequential(Conv(1, 4, 3, stride=9), GlobalAvgPool(), Dense(4, 1, 0.1)),
            torch.randn(2, 1, 5, 5),
            "stride .* is larger than the padded input",
        ),
        (nn.Sequential(Elementwise("relu"), Conv(1, 4, 3), GlobalAvgPool(), Dense(4, 1, 0.1)), torch.randn(2, 1, 5, 5), "is not Gaussian"),
    ],
)
def test_bad_models_and_inputs_are_refused_in_one_line(model, x, message):
    with pytest.raises(ValueError, match=message) as err:
        ntk.limiting_kernels(model.double(), x.double())
    assert "\n" not in str(err.value)


def test_bad_blocks_are_refused_when_built():
    with pytest.raises(ValueError, match="padding_mode='reflect' is not supported"):
        Conv(1, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="must end with a Dense or Conv block"):
        Residual(nn.Sequential(Conv(4, 4, 3, padding=1), Elementwise("relu")))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Elementwise("swish")


def test_a_block_model_trains_and_gives_its_empirical_kernel():
    """The same module object: gradient descent lowers its loss, and its structured empirical NTK equals
    Jacobian contraction (the blocks' convolutions and dense layers have structured rules)."""
    model = small_cnn(8, 0)
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert rel_fro(ntk.empirical_ntk(model, x, method="structured"), ntk.empirical_ntk(model, x, method="jacobian")) < 1e-10
    lr = 0.5 * ntk.largest_stable_lr(model, x)
    result = ntk.gradient_descent(model, x, y, lr=lr, steps=100)
    assert result.loss[-1] < 0.5 * result.loss[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_chunks_are_reused_instead_of_faulted_in_again():
    """`ntk.memory.reuse_freed_memory`: freed 8 MB arrays (a chunk's, four at a time) stay in the heap
    (glibc's mallinfo2: at least the four arrays' 32 MiB free there) and the next ones reuse them without
    page faults (2048 per fresh 8 MB array of 4 kB pages); NTK_REUSE_MEMORY=0 leaves glibc's own thresholds
    (fixed here at 1 MiB), which return the four to the system (how many faults that costs depends on the kernel's transparent
    huge pages, so the opt-out is checked by the heap's free memory, not by faults)."""
    code = (
        "import ctypes, ctypes.util, resource, torch, ntk.memory as m\n"
        "names = 'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()\n"
        "Info = type('Info', (ctypes.Structure,), {'_fields_': [(n, ctypes.c_size_t) for n in names]})\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')\n"
        "libc.mallinfo2.restype = Info\n"
        "on = m.reuse_freed_memory()\n"
        "torch.ones(2**20, dtype=torch.float64)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    held = [torch.ones(2**20, dtype=torch.float64) for _ in range(4)]\n"
        "    del held\n"
        "faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 80\n"
        "print(on, faults, libc.mallinfo2().fordblks / 2**20)\n"
    )
    runs = {}
    for setting in ("1", "0"):
        # glibc's own threshold fixed at 1 MiB (its dynamic threshold depends on the process's history: under
        # pytest and on CI it had risen and kept the arrays without the setting), so the opt-out is visible
        env = {**os.environ, "NTK_REUSE_MEMORY": setting, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == str(setting == "1")
        runs[setting] = {"faults per array": float(out[1]), "free MiB in the heap": float(out[2])}
    assert runs["1"]["faults per array"] < 500 and runs["1"]["free MiB in the heap"] >= 32, runs
    assert runs["0"]["free MiB in the heap"] < 8, runs
