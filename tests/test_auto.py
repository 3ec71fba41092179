"""method="auto" checked on the model in hand: models whose forward defeats one method or another get
their exact kernel (against torch.func Jacobians or plain autograd, written here), failures are
reported, a refused call changes nothing, and the output diagonal equals the full kernel's."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev, vmap

import ntk
import ntk.planning
from tests.conftest import rel_fro

TOL = 1e-12


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Theta (N, N, O, O) from per-input jacrev of the model as a function of its parameters (float64)."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    buffers = {k: v.double() if v.is_floating_point() else v for k, v in model.named_buffers()}

    def f(p, xi):
        return functional_call(model, {**buffers, **p}, (xi.unsqueeze(0),)).reshape(-1)

    jac = [jacrev(f)(params, xi) for xi in x.double()]
    j = torch.stack([torch.cat([v.reshape(v.shape[0], -1) for v in jj.values()], 1) for jj in jac])  # (N, O, P)
    return torch.einsum("iap,jbp->ijab", j, j)


class ViT(nn.Module):
    """The issue's crash: an eval-mode pre-norm encoder layer (fused fast path) and a positional parameter."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 4, 16) * 0.02)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.enc(t).mean(1))


class Residual(nn.Module):
    """A PINN residual: the forward differentiates the network with torch.func."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return vmap(hessian(lambda xi: self.net(xi).squeeze()))(x).reshape(-1, 1)


class Counter(nn.Module):
    """Updates a buffer in place in every forward pass."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return torch.tanh(self.lin(x))


def test_eval_mode_fused_transformer_gets_its_kernel_by_every_method():
    torch.manual_seed(0)
    model = ViT().eval()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = reference(model, x)
    for method in ("auto", "structured", "jacobian", "ntk_vp", "autograd"):
        assert rel_fro(ntk.empirical_ntk(model, x, method=method), ref) < TOL, method
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on after the call


def test_eval_mode_multihead_attention_gets_its_kernel_by_forward_mode_too():
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    model = Attend().eval()
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    ref = reference(model, x)
    for method in ("auto", "ntk_vp", "jacobian"):
        assert rel_fro(ntk.empirical_ntk(model, x, method=method), ref) < TOL, method


def test_pinn_residual_auto_drops_structured_and_reports_why():
    torch.manual_seed(0)
    model = Residual()
    x = torch.rand(6, 1, generator=torch.Generator().manual_seed(1))
    k = ntk.empirical_ntk(model, x)
    assert rel_fro(k, reference(model, x)[:, :, 0, 0]) < 1e-10
    report = ntk.kernel_report(model, x)
    rows = {m.name: m for m in report.methods}
    assert "inside a torch.func transform" in rows["structured"].note
    assert report.chosen[0] in ("jacobian", "ntk_vp", "autograd")
    assert rows[report.chosen[0]].probe_s > 0 and rows[report.chosen[0]].predicted_s > 0
    assert "probe s" in str(report)


def test_in_place_buffer_update_gets_its_kernel_and_the_buffer_is_restored():
    torch.manual_seed(0)
    model = Counter()
    x = torch.randn(4, 3)
    k = ntk.empirical_ntk(model, x)
    assert model.calls.item() == 0
    assert rel_fro(k, reference(nn.Sequential(model.lin, nn.Tanh()), x)) < TOL  # the same function, without the counter


def test_every_method_failing_gives_one_line_naming_each():
    class GradShy(nn.Module):  # runs without gradients only
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            if torch.is_grad_enabled():
                raise RuntimeError("no gradients here")
            return self.lin(x)

    with pytest.raises(ValueError) as info:
        ntk.empirical_ntk(GradShy(), torch.randn(4, 3))
    message = str(info.value)
    assert "\n" not in message and message.startswith("no method computes this model's kernel")
    for name in ("structured", "jacobian", "ntk_vp", "autograd"):
        assert f"{name}: " in message


def test_the_choice_is_kept_per_kernel_shape_and_probes_once(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    probes = []
    original = ntk.planning._timed_probe
    monkeypatch.setattr(ntk.planning, "_timed_probe", lambda m, *a, **k: probes.append(m.name) or original(m, *a, **k))
    x = torch.randn(40, 1, 8, 8)
    first = ntk.empirical_ntk(model, x)
    assert probes  # probed on the first call
    count = len(probes)
    second = ntk.empirical_ntk(model, x)
    assert len(probes) == count  # kept with the model: no probe on the second call
    assert torch.equal(first, second)
    ntk.empirical_ntk(model, x[:20])  # another kernel shape: planned anew
    assert len(probes) > count


def test_reproducible_auto_takes_the_predicted_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(30, 3)
    with ntk.planning.reproducible_auto():
        report = ntk.kernel_report(model, x)
    notes = {m.name: m.note for m in report.methods}
    assert notes.pop(report.chosen[0]) == ""  # the first that runs, by prediction; the others not tried
    assert all(note.startswith("not probed") for note in notes.values()), notes
    predicted = {m.name: m.predicted_s for m in report.methods if m.predicted_s == m.predicted_s and m.fits}
    assert report.chosen[0] == min(predicted, key=predicted.get)


def _state(model: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        torch.get_rng_state(),
    )


def _same(a: tuple, b: tuple) -> bool:
    return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1:4] == b[1:4] and torch.equal(a[4], b[4])


def test_a_refused_call_changes_nothing_on_a_train_mode_batchnorm_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 1)).train()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        probe = copy.deepcopy(model)
        probe(x)
    assert not torch.equal(probe[1].running_mean, model[1].running_mean)  # a forward pass would change it
    before = _state(model)
    calls = {
        "plan_method": lambda: ntk.plan_method(model, x, 6, 6, True, "auto", None, torch.float64, 2**30),
        "kernel_report": lambda: ntk.kernel_report(model, x),
        "empirical_ntk": lambda: ntk.empirical_ntk(model, x),
        "empirical_nngp": lambda: ntk.empirical_nngp(model, x),
    }
    for name, call in calls.items():
        try:
            call()
        except ValueError:
            pass
        assert _same(before, _state(model)), name
    with pytest.raises(ValueError, match="batch"):
        ntk.empirical_ntk(model, x)


def test_complex_inputs_and_a_wrong_shape_get_their_own_lines():
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match=r"^x1 is complex \(torch.complex64\)"):
        ntk.empirical_ntk(model, torch.randn(4, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"fails on inputs of shape \(N, 5\) like x1's: RuntimeError: mat1 and mat2"):
        ntk.empirical_ntk(model, torch.randn(4, 5))


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntk_vp", "autograd"])
def test_output_diagonal_equals_the_full_kernels_diagonal(method):
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 5))
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(6, 2, 6, 6, generator=g), torch.randn(3, 2, 6, 6, generator=g)
    for xb in (None, x2):
        full = reference(cnn, x1) if xb is None else None
        if full is None:
            params = {k: v.detach().double() for k, v in cnn.named_parameters()}
            jac = lambda x: torch.stack(  # noqa: E731
                [
                    torch.cat(
                        [v.reshape(5, -1) for v in jacrev(lambda p, xi: functional_call(cnn, p, (xi[None],))[0])(params, xi).values()], 1
                    )
                    for xi in x.double()
                ]
            )
            full = torch.einsum("iap,jbp->ijab", jac(x1), jac(xb))
        d = ntk.empirical_ntk(cnn, x1, xb, method=method, diagonal_axes=-1)
        assert d.shape == (6, 6 if xb is None else 3, 5)
        assert rel_fro(d, torch.diagonal(full, dim1=2, dim2=3)) < TOL


def test_output_diagonal_of_the_ntk_mlp_and_of_an_image_output():
    model = ntk.NTKMLP(3, 40, 3, out_dim=4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    full = ntk.empirical_ntk(model, x, method="jacobian")
    assert rel_fro(ntk.empirical_ntk(model, x, diagonal_axes=1), torch.diagonal(full, dim1=2, dim2=3)) < TOL
    conv = nn.Conv2d(2, 3, 3, padding=1)
    xc = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    full = ntk.empirical_ntk(conv, xc, method="jacobian")  # (4, 4, 3, 5, 5, 3, 5, 5)
    channels = ntk.empirical_ntk(conv, xc, diagonal_axes=1, trace_axes=(2, 3))  # each channel with itself, space traced
    assert rel_fro(channels, torch.einsum("ijaxyaxy->ija", full)) < TOL
    kept = ntk.empirical_ntk(conv, xc, diagonal_axes=1)  # space kept: (N1, N2, 5, 5, 5, 5, 3)
    assert rel_fro(kept, torch.einsum("ijaxyauv->ijxyuva", full)) < TOL
    both = ntk.empirical_ntk(conv, xc, diagonal_axes=(0, 1), trace_axes=(2, 3))  # inputs' and channels' diagonal
    assert rel_fro(both, torch.einsum("iiaxyaxy->ia", full)) < TOL
    with pytest.raises(ValueError, match="both traced"):
        ntk.empirical_ntk(conv, xc, diagonal_axes=1, trace_axes=(1,))
