"""The empirical NTK of models no rule was written for, any output, and the one-line refusals, against
torch.func: every reference below is a per-input `jacrev` of the model's output, contracted here."""

import functools

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import ntk
import ntk.planning
from scripts.model_zoo import FAMILIES
from scripts.model_zoo import build as build_family
from tests.conftest import rel_fro

TOL = 1e-10  # float64


def jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, *output shape, P): one jacrev per input (no vmap: recurrent layers have no batching rule),
    over the trainable parameters; tuple and dict outputs flattened and concatenated."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    fixed = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad} | dict(model.named_buffers())

    def flat(out):
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, (tuple, list)):
            return torch.cat([flat(o).reshape(-1) for o in out])
        return out[0]

    def f(p, xi):
        return flat(functional_call(model, {**fixed, **p}, (xi[None],)))

    rows = []
    for xi in x:
        j = jacrev(f)(params, xi)
        rows.append(torch.cat([v.reshape(*v.shape[: v.dim() - params[k].dim()], -1) for k, v in j.items()], -1))
    return torch.stack(rows)


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, N, O, O) over the flat outputs, or (N, N) for one output entry."""
    j = jacobians(model, x)
    j = j.reshape(j.shape[0], -1, j.shape[-1])
    k = torch.einsum("iap,jbp->ijab", j, j)
    return k[:, :, 0, 0] if k.shape[-1] == 1 else k


def family(name: str, out: int, n: int = 3):
    model, inputs = build_family(name, out, "test")
    x = inputs(n, torch.Generator().manual_seed(1))
    return model.double(), (x.double() if x.is_floating_point() else x)


@functools.cache
def family_and_reference(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A zoo family's test model, inputs and torch.func kernel, built once for the three methods."""
    out = 1 if name in ("unet", "img2img", "pinn") else 3  # images to images (2 x 8 x 8, 1 x 8 x 8 outputs), one residual
    model, x = family(name, out)
    return model, x, reference(model, x)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
def test_new_families_equal_torch_func(name, method):
    model, x, ref = family_and_reference(name)
    if name == "pinn" and method == "structured":  # the residual differentiates inside forward: refused in one line
        with pytest.raises(ValueError, match="inside a torch.func transform"):
            ntk.empirical_ntk(model, x, method=method)
        return
    kernel = ntk.empirical_ntk(model, x, method=method)
    assert rel_fro(kernel.reshape(ref.shape), ref) < TOL


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(3, 3, 4)
        self.act = nn.PReLU()
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(self.act(self.bil(x, x))).sum(1)


class RawOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 5))
        self.v = nn.Parameter(torch.randn(5, 2))

    def forward(self, x):
        return torch.einsum("ni,ij->nj", x, self.w).tanh() @ self.v


class Tied(nn.Module):
    """An encoder and a decoder sharing one weight (the decoder uses its transpose)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 3)

    def forward(self, x):
        return nn.functional.linear(torch.tanh(self.enc(x)), self.enc.weight.T)


class GRUAlone(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]  # the states (N, L, 4): an output of three axes


class BiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def weight_normed() -> nn.Module:
    """weight_norm by parametrization: the weight is computed from two raw parameters (original0, original1)."""
    wn = nn.utils.parametrizations.weight_norm
    return nn.Sequential(wn(nn.Linear(3, 5)), nn.Tanh(), wn(nn.Linear(5, 2)))


UNCOVERED = {
    "bidirectional_lstm": (BiLSTM, lambda n, g: torch.randn(n, 4, 3, generator=g)),
    "weight_norm": (weight_normed, lambda n, g: torch.randn(n, 3, generator=g)),
    "gru_alone": (GRUAlone, lambda n, g: torch.randn(n, 5, 3, generator=g)),
    "bilinear_prelu_layernorm": (Bilinear, lambda n, g: torch.randn(n, 3, generator=g)),
    "raw_parameters_only": (RawOnly, lambda n, g: torch.randn(n, 3, generator=g)),
    "tied_weights": (Tied, lambda n, g: torch.randn(n, 4, generator=g)),
}


@pytest.mark.parametrize("name", sorted(UNCOVERED))
@pytest.mark.parametrize("method", ["auto", "structured"])
def test_models_with_few_or_no_covered_parameters_get_their_exact_kernel(name, method):
    make, inputs = UNCOVERED[name]
    torch.manual_seed(0)
    model = make().double().eval()
    x = inputs(4, torch.Generator().manual_seed(2)).double()
    ref = reference(model, x)
    kernel = ntk.empirical_ntk(model, x, method=method)
    assert rel_fro(kernel.reshape(ref.shape), ref) < TOL


def test_lora_is_not_planned_as_structured_and_half_frozen_models_count_only_trainable_parameters():
    model, x = family("lora", 1, n=5)
    report = ntk.kernel_report(model, x)
    notes = {m.name: m.note for m in report.methods}
    assert notes["structured"] == "not tried by auto" and report.chosen[0] != "structured"  # no rule covers A or B
    half = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    half[0].requires_grad_(False)
    xs = torch.randn(4, 3, dtype=torch.float64)
    assert rel_fro(ntk.empirical_ntk(half, xs), reference(half, xs)) < TOL


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntk_vp"])
def test_a_model_without_trainable_parameters_gets_one_line(method):
    model = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ntk.empirical_ntk(model, torch.randn(4, 3), method=method)


@pytest.mark.parametrize(
    "layer",
    [nn.Dropout(0.1), nn.Dropout2d(0.2), nn.AlphaDropout(0.1), nn.RReLU()],
    ids=lambda m: type(m).__name__,
)
def test_random_layers_in_training_mode_are_refused_by_name(layer):
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^1 \({type(layer).__name__}\) is random in training mode"):
        ntk.empirical_ntk(model, x)
    model.eval()  # deterministic: two calls agree, and equal torch.func
    assert torch.equal(ntk.empirical_ntk(model, x), ntk.empirical_ntk(model, x))
    assert rel_fro(ntk.empirical_ntk(model, x), reference(model, x)) < TOL


def test_attention_dropout_in_training_mode_is_refused():
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=8, dropout=0.1, batch_first=True)
    with pytest.raises(ValueError, match="is random in training mode"):
        ntk.empirical_ntk(model, torch.randn(2, 3, 8), trace=True)


class ImageToImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.tanh(self.c1(x)))  # (N, 2, 4, 5)


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntk_vp"])
def test_image_outputs_with_and_without_traced_axes_and_the_diagonal(method):
    torch.manual_seed(0)
    model = ImageToImage().double()
    x = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    j = jacobians(model, x)  # (N, C, H, W, P)
    cases = {
        (): ("ichwp,jdgvp->ijchwdgv", (3, 3, 2, 4, 5, 2, 4, 5)),
        (2, 3): ("ichwp,jdhwp->ijcd", (3, 3, 2, 2)),
        (-3,): ("ichwp,jcgvp->ijhwgv", (3, 3, 4, 5, 4, 5)),
        (1, -1): ("ichwp,jcgwp->ijhg", (3, 3, 4, 4)),
    }
    for axes, (formula, shape) in cases.items():
        kernel = ntk.empirical_ntk(model, x, method=method, trace_axes=axes)
        assert kernel.shape == shape
        assert rel_fro(kernel, torch.einsum(formula, j, j)) < TOL
    full = ntk.empirical_ntk(model, x, method=method, trace=True)
    assert rel_fro(full, torch.einsum("ichwp,jchwp->ij", j, j)) < TOL
    assert torch.allclose(ntk.empirical_ntk(model, x, method=method, trace_axes=(1, 2, 3)), full, rtol=1e-12, atol=0)
    diag = ntk.empirical_ntk(model, x, method=method, trace_axes=(2, 3), diagonal=True)
    assert diag.shape == (3, 2, 2) and rel_fro(diag, torch.einsum("ichwp,idhwp->icd", j, j)) < TOL


class Heads(nn.Module):
    """A dict of a tensor and a tuple: 2 + (4 + 1) = 7 output entries per input."""

    def __init__(self):
        super().__init__()
        self.trunk, self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2), nn.Linear(5, 4)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return {"a": self.a(h), "rest": (self.b(h), h.sum(1))}


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntk_vp"])
def test_tuple_and_dict_outputs_are_flattened_in_order(method):
    torch.manual_seed(0)
    model = Heads().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    x2 = torch.randn(2, 3, dtype=torch.float64)
    ref = reference(model, x)
    kernel = ntk.empirical_ntk(model, x, method=method)
    assert kernel.shape == (5, 5, 7, 7) and rel_fro(kernel, ref) < TOL
    j, j2 = jacobians(model, x), jacobians(model, x2)
    assert rel_fro(ntk.empirical_ntk(model, x, x2, method=method), torch.einsum("iap,jbp->ijab", j, j2)) < TOL
    assert rel_fro(ntk.empirical_ntk(model, x, method=method, trace=True), torch.einsum("iap,jap->ij", j, j)) < TOL
    diag = ntk.empirical_ntk(model, x, method=method, diagonal=True)
    assert rel_fro(diag, torch.einsum("iap,ibp->iab", j, j)) < TOL
    with pytest.raises(ValueError, match="trace_axes needs a tensor output"):
        ntk.empirical_ntk(model, x, method=method, trace_axes=(1,))


def test_the_diagonal_of_many_inputs_equals_the_full_kernel_diagonal():
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(70, 3, dtype=torch.float64)  # more than one diagonal block
    full = ntk.empirical_ntk(model, x)
    diag = ntk.empirical_ntk(model, x, diagonal=True)
    assert diag.shape == (70, 2, 2) and rel_fro(diag, torch.diagonal(full, dim1=0, dim2=1).movedim(-1, 0)) < TOL


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(trace_axes=(0,)), r"trace_axes 0 is not an output axis: the output \(N, 2, 4, 5\) has axes 1 \.\.\. 3"),
        (dict(trace_axes=(4,)), "trace_axes 4 is not an output axis"),
        (dict(trace_axes=("h",)), "trace_axes must be integers"),
        (dict(diagonal=True, x2=torch.randn(2, 1, 4, 5)), "the inputs. diagonal"),
    ],
)
def test_bad_output_options_get_one_line(kwargs, match):
    x2 = kwargs.pop("x2", None)
    with pytest.raises(ValueError, match=match):
        ntk.empirical_ntk(ImageToImage(), torch.randn(3, 1, 4, 5), x2, **kwargs)


def test_bad_inputs_get_one_line_naming_what_was_expected():
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"x1 has shape \(6,\), but inputs are \(N, \.\.\.\).*x\[:, None\] for 6 scalar inputs"):
        ntk.empirical_ntk(model, torch.randn(6))
    with pytest.raises(ValueError, match="x1 must be a torch.Tensor of inputs"):
        ntk.empirical_ntk(model, [[0.1], [0.2]])
    with pytest.raises(ValueError, match=r"x1 holds integers \(torch.int64\) and the model fails on them"):
        ntk.empirical_ntk(model, torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x2 must be a torch.Tensor"):
        ntk.empirical_ntk(model, torch.randn(3, 1), (1.0,))
    broken = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        broken[2].weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '2.weight' holds non-finite values"):
        ntk.empirical_ntk(broken, torch.randn(3, 1))
    ids = torch.randint(0, 5, (4,))  # one token id per input: integers a model that embeds them takes
    emb = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 1)).double()
    assert ntk.empirical_ntk(emb, ids).shape == (4, 4)


def test_the_report_names_every_parameter_and_the_planners_choice():
    model, x = family("vit", 2, n=4)
    report = ntk.kernel_report(model, x)
    rows = {p.name: p for p in report.parameters}
    assert set(rows) == {name for name, _ in model.named_parameters()}
    assert rows["cls"].form == "jacobian" and "raw parameter" in rows["cls"].handled_by
    assert rows["patches.weight"].handled_by == "Conv2d rule" and rows["patches.bias"].form == "with the weight"
    assert rows["encoder.layers.0.self_attn.in_proj_weight"].handled_by == "MultiheadAttention rule"
    measured = [m for m in report.methods if m.estimated_s == m.estimated_s]  # probed: the measured time, scaled, decides
    assert report.chosen == min((m.estimated_s, m.name, m.block) for m in measured)[1:]
    # the per-parameter FLOPs of the rules add up to the structured method's contraction by formula
    rules = sum(p.gflop for p in report.parameters if p.form not in ("jacobian", "-"))
    assert rules > 0 and "| parameter | shape |" in str(report)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 1))
    with ntk.planning.reproducible_auto():  # by prediction alone: the structured rules cover every parameter
        assert ntk.kernel_report(cnn, torch.randn(8, 1, 8, 8)).chosen[0] == "structured"
