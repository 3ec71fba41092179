import pytest
import torch

import ntk.backends
from ntk.empirical import empirical_ntk, memory_estimate, ntk_row, ntk_vector_product
from ntk.memory import NTKMemoryError, parse_bytes
from ntk.methods import METHOD_NAMES
from tests.conftest import mlp, rel_fro


def make(depth, width, activation="relu", out_dim=1, dtype=torch.float64, in_dim=3, seed=0):
    return mlp(in_dim, width, depth, seed, dtype, out_dim=out_dim, activation=activation)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh", "identity"])
@pytest.mark.parametrize("depth,width", [(1, 4), (2, 16), (3, 9), (4, [12, 5, 20]), (5, 6)])
@pytest.mark.parametrize("out_dim", [1, 3])
@pytest.mark.parametrize("same", [True, False])
def test_all_methods_equal_jacobian_contraction(activation, depth, width, out_dim, same):
    model = make(depth, width, activation, out_dim)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(7, 3, generator=g, dtype=torch.float64)
    x2 = None if same else torch.randn(4, 3, generator=g, dtype=torch.float64)
    ref = empirical_ntk(model, x1, x2, method="jacobian")
    shape = (7, 7 if same else 4) + ((out_dim, out_dim) if out_dim > 1 else ())
    assert ref.shape == shape
    for method, block in [("layerwise", None), ("layerwise", 3), ("ntk_vp", None), ("ntk_vp", 2)]:
        kernel = empirical_ntk(model, x1, x2, method=method, block_size=block)
        assert kernel.shape == shape and kernel.dtype == torch.float64
        assert rel_fro(kernel, ref) < 1e-10, (method, block)
    if out_dim > 1:
        traced = ref.diagonal(dim1=2, dim2=3).sum(-1)
        for method in ("layerwise", "ntk_vp", "jacobian"):
            assert rel_fro(empirical_ntk(model, x1, x2, method=method, trace=True), traced) < 1e-10


def test_kernel_of_float32_model_is_computed_in_float64():
    model = make(3, 10, dtype=torch.float32)
    x = torch.randn(5, 3)
    fast = empirical_ntk(model, x)  # auto -> layerwise, float64
    ref = empirical_ntk(model, x, method="jacobian")
    assert fast.dtype == ref.dtype == torch.float64
    assert rel_fro(fast, ref) < 1e-12
    assert torch.equal(fast, fast.T)


def test_ntk_is_the_gram_matrix_of_output_gradients():
    """Independent of torch.func: autograd gradients of f(x_i), one at a time."""
    model = make(3, 7)
    x = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for i in range(4):
        g = torch.autograd.grad(model(x[i : i + 1]).sum(), list(model.parameters()))
        grads.append(torch.cat([t.flatten() for t in g]))
    jac = torch.stack(grads)
    assert rel_fro(empirical_ntk(model, x), jac @ jac.T) < 1e-12


def test_grid_kernel_of_wide_network_builds_no_jacobian(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a Jacobian was built")

    monkeypatch.setattr(ntk.backends, "jacrev", forbidden)
    model = make(4, 2000, in_dim=2, dtype=torch.float32)
    grid = torch.randn(101, 2)
    theta = empirical_ntk(model, grid[:1], grid)
    assert theta.shape == (1, 101) and torch.isfinite(theta).all()


def test_generic_module_methods_agree_and_auto_follows_memory():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    ref = empirical_ntk(model, x, method="jacobian")
    assert ref.shape == (6, 6, 2, 2)
    assert rel_fro(empirical_ntk(model, x, method="ntk_vp"), ref) < 1e-12
    assert rel_fro(empirical_ntk(model, x), ref) < 1e-12
    # a budget that the Jacobians exceed but one ntk_vp column fits: auto takes structured, ntk_vp where structured does not fit
    jac = memory_estimate(model, "jacobian", 6, 6, True, torch.float64, x_example=x[:1])
    vp = memory_estimate(model, "ntk_vp", 6, 6, True, torch.float64, 1, x_example=x[:1])
    assert vp < jac
    limit = int((vp + jac) / 2)
    assert rel_fro(empirical_ntk(model, x, memory_limit=limit), ref) < 1e-12
    with pytest.raises(NTKMemoryError, match=r"method='jacobian' needs about .* use method='structured' \(from .*\) or method='ntk_vp'"):
        empirical_ntk(model, x, method="jacobian", memory_limit=limit)
    with pytest.raises(ValueError, match="method='layerwise' needs an NTKMLP"):
        empirical_ntk(model, x, method="layerwise")


def test_memory_guard_refuses_and_names_the_method_that_fits(monkeypatch):
    model = make(3, 50)
    x = torch.randn(40, 3, dtype=torch.float64)
    monkeypatch.setenv("NTK_MEMORY_LIMIT", "200K")
    with pytest.raises(NTKMemoryError, match=r"method='jacobian' needs about .* more than the 205 kB available; use method='layerwise'"):
        empirical_ntk(model, x, method="jacobian")
    # layerwise fits by blocking, and the blocked result is the full kernel
    monkeypatch.delenv("NTK_MEMORY_LIMIT")
    full = empirical_ntk(model, x)
    assert rel_fro(empirical_ntk(model, x, memory_limit=150_000), full) < 1e-14
    with pytest.raises(NTKMemoryError, match="no method fits"):
        empirical_ntk(model, x, memory_limit=1000)


def test_memory_sizes_are_parsed():
    assert parse_bytes("4G") == 4 * 1024**3 and parse_bytes("512M") == 512 * 1024**2 and parse_bytes(1000) == 1000
    with pytest.raises(ValueError, match="cannot read a memory size"):
        parse_bytes("lots")


@pytest.mark.parametrize("generic", [False, True])
def test_matrix_free_products_and_rows(generic):
    model = make(3, 20)
    if generic:
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    kernel = empirical_ntk(model, x, method="jacobian")
    v = torch.randn(10, dtype=torch.float64)
    assert rel_fro(ntk_vector_product(model, x, v), kernel @ v) < 1e-12
    assert rel_fro(ntk_row(model, x[3], x), kernel[3]) < 1e-12


def test_blocked_kernel_of_many_points_matches_unblocked():
    model = make(3, 64, in_dim=5)
    x = torch.randn(300, 5, dtype=torch.float64)
    y = torch.randn(130, 5, dtype=torch.float64)
    for x2 in (None, y):
        whole = empirical_ntk(model, x, x2)
        assert rel_fro(empirical_ntk(model, x, x2, block_size=64), whole) < 1e-13


@pytest.mark.parametrize(
    "x1,x2,method,message",
    [
        (torch.randn(3, 3), None, "fast", f"unknown NTK method 'fast'; allowed: {', '.join(METHOD_NAMES)}$"),
        (torch.randn(3, 3), torch.randn(3, 2), "jacobian", "x2 has input dimension 2, the model expects 3"),
        (torch.randn(3, 2), None, "auto", "x1 has input dimension 2, the model expects 3"),
        (torch.randn(3), None, "auto", r"x1 must have shape \(N, input_dim\)"),
        (torch.randn(3, 3), torch.full((2, 3), float("nan")), "auto", "x2 contains non-finite values"),
        (torch.tensor([[0.0, 1.0, float("inf")], [0.0, 0.0, 0.0]]), None, "auto", "x1 contains non-finite values"),
        (torch.tensor([[float("inf"), float("-inf"), 0.0]]), None, "auto", "x1 contains non-finite values"),
    ],
)
def test_bad_inputs(x1, x2, method, message):
    with pytest.raises(ValueError, match=message):
        empirical_ntk(make(2, 4), x1, x2, method=method)


def test_finite_inputs_whose_sum_overflows_are_accepted():
    x = torch.full((2, 3), 3e38)  # float32: finite entries, infinite sum
    assert not torch.isfinite(x.sum())
    assert empirical_ntk(make(2, 4, dtype=torch.float32), x, method="jacobian").shape == (2, 2)


def test_ntk_vector_product_refuses_beyond_the_memory_limit(monkeypatch):
    model = make(3, 50)
    x = torch.randn(20, 3, dtype=torch.float64)
    monkeypatch.setenv("NTK_MEMORY_LIMIT", "10K")
    with pytest.raises(NTKMemoryError, match="ntk_vector_product needs about .* more than the 10.2 kB available"):
        ntk_vector_product(model, x, torch.ones(20, dtype=torch.float64))


@pytest.mark.slow
def test_layerwise_kernel_of_ten_thousand_points_in_blocks():
    model = make(3, 256, in_dim=10, dtype=torch.float32)
    x = torch.randn(10_000, 10, generator=torch.Generator().manual_seed(0))
    kernel = empirical_ntk(model, x, memory_limit=1_500_000_000)  # the kernel alone is 800 MB: blocks are needed
    assert kernel.shape == (10_000, 10_000) and torch.equal(kernel, kernel.T)
    rows = torch.tensor([0, 1234, 9999])
    assert rel_fro(kernel[rows][:, rows], empirical_ntk(model, x[rows], method="jacobian")) < 1e-10
    assert rel_fro(kernel[rows, :500], empirical_ntk(model, x[rows], x[:500])) < 1e-12
