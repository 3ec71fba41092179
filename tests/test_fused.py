"""The compiled steps of the infinite-width recursion (ntk.fused): the same kernels as the eager path,
an eager fallback when compiling fails, one-line errors for a mode that is not one."""

import shutil
import warnings

import pytest
import torch

import ntk
import ntk.fused as fused
from ntk.blocks import Conv, Dense, Elementwise, Flatten, GlobalAvgPool
from tests.conftest import rel_fro


def pooled_cnn(activation: str = "relu") -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    return torch.nn.Sequential(
        Conv(1, 1, 3, padding=1, beta=0.1, generator=g),
        Elementwise(activation),
        Conv(1, 1, 3, 2, 1, generator=g),
        Elementwise(activation),
        GlobalAvgPool(),
        Dense(1, 1, beta=0.1, generator=g),
    )


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="no C++ compiler for inductor (the fallback is tested without one)"
)


def images(n: int, side: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def fresh(monkeypatch):
    """No step compiled or failed before the test, none kept after it."""
    monkeypatch.setattr(fused, "_STEPS", {})
    fused.reset_stats()
    yield
    fused.reset_stats()


def test_a_compiler_that_fails_falls_back_to_eager_with_one_warning(fresh, monkeypatch):
    def broken(*args, **kwargs):
        def call(*a):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return call

    monkeypatch.setattr(fused.torch, "compile", broken)
    model, x = pooled_cnn(), images(3)
    eager = ntk.limiting_kernels(model, x, compile="off")
    with pytest.warns(RuntimeWarning, match="running it eagerly") as caught:
        forced = ntk.limiting_kernels(model, x, compile="on")
    assert all(torch.equal(a, b) for a, b in zip(forced, eager))
    reasons = fused.compile_stats()["fallbacks"]
    assert reasons and all(r == "RuntimeError: no C++ compiler found" for r in reasons.values())
    assert len(caught) == len(reasons)  # one warning per step, not per call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ntk.limiting_kernels(model, x, compile="on")  # the failed steps stay eager, silently
    assert all(torch.equal(a, b) for a, b in zip(again, eager))


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_a_long_series_is_not_expanded_twice(fresh, monkeypatch, activation):
    """On the fused path a Hermite series longer than FUSED_TERMS (tanh: 80-107 terms) runs eagerly from
    the coefficients already computed, not from a second expansion (which made compiled softplus slower
    than eager). The compiler is replaced by the identity, so the fused path's logic runs without inductor."""
    import ntk.analytic

    monkeypatch.setattr(fused.torch, "compile", lambda fn, **kwargs: fn)
    calls = []
    expand = ntk.analytic.hermite_coefficients
    monkeypatch.setattr(ntk.analytic, "hermite_coefficients", lambda *a, **k: calls.append(1) or expand(*a, **k))
    model, x = pooled_cnn(activation), images(3)
    counts, kernels = [], []
    for mode in ("off", "on"):
        calls.clear()
        kernels.append(ntk.limiting_kernels(model, x, compile=mode))
        counts.append(len(calls))
    assert counts[1] == counts[0] > 0
    assert all(rel_fro(a, b) < 1e-12 for a, b in zip(*kernels))


def test_auto_leaves_small_kernels_eager(fresh, monkeypatch):
    monkeypatch.setattr(fused.torch, "compile", lambda *a, **k: pytest.fail("compiled a kernel too small to pay for it"))
    ntk.limiting_kernels(pooled_cnn(), images(3), compile="auto")
    assert fused.compile_stats()["calls"] == 0


def test_bad_modes_get_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown compile mode 'fast'; allowed: auto, on, off"):
        ntk.limiting_kernels(pooled_cnn(), images(2), compile="fast")
    monkeypatch.setenv("NTK_COMPILE", "yes")
    with pytest.raises(ValueError, match=r"NTK_COMPILE='yes' is not a compile mode; allowed: auto, on, off"):
        ntk.limiting_kernels(pooled_cnn(), images(2))


@needs_compiler
def test_compiled_kernels_equal_eager_to_rounding(fresh):
    """One compiled run (the activation, window sums and pooling of a strided, pooled CNN, pairs in
    chunks of different sizes): equal to the eager path to 1e-12, the compilation timed apart."""
    model, x = pooled_cnn("erf"), images(5)
    eager = ntk.limiting_kernels(model, x, images(3, seed=2), compile="off")
    compiled = ntk.limiting_kernels(model, x, images(3, seed=2), compile="on", memory_limit=3_000_000)  # a few pairs per chunk
    assert rel_fro(compiled[0], eager[0]) < 1e-12 and rel_fro(compiled[1], eager[1]) < 1e-12
    stats = fused.compile_stats()
    assert stats["fallbacks"] == {} and stats["compiled_calls"] >= 1 and stats["compile_s"] > 0
    assert stats["calls"] > stats["compiled_calls"]  # later chunks reuse what compiled: no recompilation per chunk size
    # rows of 8 and 4 positions: the window sums compile to scalar C++ on the CPU (`fused.SCALAR_BELOW`: inductor's
    # SIMD code runs such rows as masked vectors, 4x slower), the Gaussian maps to SIMD code
    windows = [step for key, step in fused._STEPS.items() if key[:2] == ("affine", "conv")]
    assert windows and all(step.scalar for step in windows)
    assert not any(step.scalar for key, step in fused._STEPS.items() if key[0] == "activation")


@needs_compiler
def test_window_sums_of_long_rows_keep_simd(fresh, monkeypatch):
    """Rows of SCALAR_BELOW positions and more (here 16: NTKCNN of depth 2 at 32 x 32) compile to SIMD code
    (short ones to scalar code: `test_compiled_kernels_equal_eager_to_rounding`); equal to the eager kernels to 1e-12."""
    options = []
    real = torch.compile
    monkeypatch.setattr(fused.torch, "compile", lambda fn, **kw: options.append(kw.get("options")) or real(fn, **kw))
    model, x = ntk.NTKCNN(1, 1, 2, generator=torch.Generator().manual_seed(0)), images(3, 32)
    eager = ntk.limiting_kernels(model, x, compile="off")
    compiled = ntk.limiting_kernels(model, x, compile="on")
    assert rel_fro(compiled[0], eager[0]) < 1e-12 and rel_fro(compiled[1], eager[1]) < 1e-12
    convs = [step for key, step in fused._STEPS.items() if key[:2] == ("affine", "conv")]
    assert convs and not any(step.scalar for step in convs) and options and set(options) == {None}


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("activation", ["relu", "gelu", "sin", "abs"])
@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_compiled_closed_forms_equal_eager(fresh, activation, head):
    model = pooled_cnn(activation)
    if head == "flatten":
        model = torch.nn.Sequential(*list(model)[:4], Flatten(), Dense(16, 1, beta=0.1, generator=torch.Generator().manual_seed(5)))
    x = images(4)
    eager = ntk.limiting_kernels(model, x, compile="off")
    compiled = ntk.limiting_kernels(model, x, compile="on")
    assert rel_fro(compiled[0], eager[0]) < 1e-12 and rel_fro(compiled[1], eager[1]) < 1e-12
    assert fused.compile_stats()["fallbacks"] == {}


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("activation", ["gelu", "softplus"])
def test_compiled_hermite_maps_equal_eager(fresh, activation):
    """The Hermite series' per-entry half (correlation, Horner's scheme, the product with Theta) runs
    compiled, its coefficients eagerly (series of up to 48 terms, padded with zeros to 48): equal to
    the eager map to 1e-12, every layer on the fused step."""
    model, x = pooled_cnn(activation), images(3)
    eager = ntk.limiting_kernels(model, x, method="hermite", compile="off")
    compiled = ntk.limiting_kernels(model, x, method="hermite", compile="on")
    assert rel_fro(compiled[0], eager[0]) < 1e-12 and rel_fro(compiled[1], eager[1]) < 1e-12
    stats = fused.compile_stats()
    assert stats["fallbacks"] == {} and any(name.startswith("hermite") for name in stats["steps"])
    assert not any(name.startswith("activation") and "(eager)" not in name for name in stats["steps"])


@pytest.mark.parametrize("activation", ["softplus", "gelu", "relu"])
def test_a_second_call_reuses_the_first_ones_steps(fresh, activation):
    """The steps are keyed by the activation's maps, made once per process: a second call of the same
    model makes no new step (the Hermite steps were made anew by every call, and so compiled again,
    16-18 s a call for softplus at 28 x 28)."""
    model, x = pooled_cnn(activation), images(3)
    ntk.limiting_kernels(model, x, compile="off")
    keys = set(fused._STEPS)
    ntk.limiting_kernels(model, x, compile="off")
    assert set(fused._STEPS) == keys


@pytest.mark.parametrize("mode", ["off", "on"])
def test_every_step_reports_its_time_and_bytes(fresh, mode):
    """`compile_stats()["steps"]`: one row per step and layer output shape, with the bytes it wrote
    (float64: 8 per entry, two kernels) and read, for the eager path as for the compiled one."""
    ntk.limiting_kernels(pooled_cnn(), images(3), compile=mode)
    steps = fused.compile_stats()["steps"]
    assert {name.split(" ")[0] for name in steps} == {"activation", "affine"}
    for name, row in steps.items():
        assert row["calls"] > 0 and row["seconds"] > 0 and row["bytes_read"] > 0, name
        assert row["bytes_written"] == 2 * 8 * row["entries"], name  # Sigma and Theta
