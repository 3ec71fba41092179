"""The structured empirical NTK of general modules against Jacobian contraction (float64)."""

import pytest
import torch
from torch import nn

from ntk.empirical import empirical_ntk
from ntk.memory import NTKMemoryError
from ntk.methods import flop_counts
from ntk.structured import contraction_costs, plan
from ntk.structured.capture import checked_rules, inplace_outputs
from tests.conftest import rel_fro


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return module


class SmallCNN(nn.Module):
    def __init__(self, out: int = 1, groups: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=groups, dilation=dilation)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2 if dilation == 1 else 4, out)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.tanh(self.conv2(x)))
        return self.fc(x.flatten(1))


class Conv13(nn.Module):
    """Conv1d and Conv3d, with groups, stride, dilation and 'same' padding."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding="same", dilation=2)
        self.c3 = nn.Conv3d(1, 2, 2, stride=1)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * 6 + 2 * 8, out)

    def forward(self, x):
        seq, vol = x[:, :12].reshape(-1, 2, 6), x[:, 12:].reshape(-1, 1, 3, 3, 3)
        a = torch.tanh(self.gn(self.c1(seq))).flatten(1)
        b = torch.tanh(self.c3(vol)).flatten(1)
        return self.fc(torch.cat([a, b], 1))


class Depthwise(nn.Module):
    """Depthwise convolutions: 2-D with a channel multiplier, stride and dilation; 1-D; 3-D."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.c2 = nn.Conv2d(2, 4, 3, stride=2, dilation=2, padding=2, groups=2)
        self.c1 = nn.Conv1d(2, 2, 3, padding=1, groups=2, bias=False)
        self.c3 = nn.Conv3d(1, 2, 2, groups=1)
        self.d3 = nn.Conv3d(2, 2, 2, stride=(1, 2, 1), groups=2)
        self.fc = nn.Linear(4 * 4 * 4 + 2 * 8 + 2 * 2 * 1 * 2, out)

    def forward(self, x):
        a = torch.tanh(self.c2(x)).flatten(1)  # (N, 4, 4, 4)
        b = torch.tanh(self.c1(x[:, :, 0, :])).flatten(1)  # (N, 2, 8)
        v = x[:, :1].reshape(-1, 1, 4, 4, 4)
        c = torch.tanh(self.d3(torch.tanh(self.c3(v)))).flatten(1)  # (N, 2, 2, 1, 2)
        return self.fc(torch.cat([a, b, c], 1))


class TextModel(nn.Module):
    def __init__(self, out: int = 1):
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, out)

    def forward(self, ids):
        h = self.norm(self.emb(ids))  # (N, S, 6)
        return self.fc(torch.tanh(h).mean(1))


class SharedTwice(nn.Module):
    """One Linear used twice, and a tied weight used raw outside its module."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, out)
        self.scale = nn.Parameter(torch.tensor(0.7))  # a raw parameter: no rule covers it

    def forward(self, x):
        h = torch.tanh(self.inner(torch.tanh(self.inner(x))))
        h = h + 0.1 * torch.nn.functional.linear(h, self.inner.weight)  # the inner weight, used raw
        return self.scale * self.head(h)


class Mixed(nn.Module):
    """Covered layers around an uncovered recurrent cell and a BatchNorm in eval mode."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.bn = nn.BatchNorm1d(5)
        self.cell = nn.GRUCell(5, 4)
        self.fc2 = nn.Linear(4, out)

    def forward(self, x):
        return self.fc2(self.cell(torch.tanh(self.bn(self.fc1(x)))))


class SmallSpatial(nn.Module):
    """Convolutions with few output positions and many channels: the Gram of Grams is the cheaper form."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 24, 3, stride=3, groups=2)
        self.conv2 = nn.Conv2d(24, 24, 3, padding=1, bias=False)
        self.fc = nn.Linear(24 * 4, out)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


class Attention(nn.Module):
    """nn.MultiheadAttention used directly: sequence-first, causal and padding masks, weights returned."""

    def __init__(self, out: int = 1):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.fc = nn.Linear(8 + 4, out)

    def forward(self, x):  # x (N, L, 8)
        seq = x.transpose(0, 1)  # (L, N, 8)
        causal = torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)
        padding = torch.zeros(x.shape[0], 4, dtype=torch.bool)
        padding[:, -1] = True
        y, w = self.attn(seq, seq, seq, key_padding_mask=padding, attn_mask=causal)
        return self.fc(torch.cat([y.mean(0), w[:, -1]], 1))


def transformer(out: int = 1) -> nn.Module:
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
            self.fc = nn.Linear(8, out)

        def forward(self, x):
            return self.fc(self.layer(x).mean(1))

    return T()


def inputs(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "image":
        return torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)
    if kind == "conv13":
        return torch.randn(n, 39, generator=g, dtype=torch.float64)
    if kind == "tokens":
        return torch.randint(0, 11, (n, 5), generator=g)
    if kind == "small_image":
        return torch.randn(n, 2, 7, 7, generator=g, dtype=torch.float64)
    if kind == "sequence":
        return torch.randn(n, 4, 8, generator=g, dtype=torch.float64)
    return torch.randn(n, {"mlp": 3, "shared": 4, "mixed": 3}[kind], generator=g, dtype=torch.float64)


ZOO = {
    "mlp": (lambda out: nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, out)), "mlp"),
    "cnn": (lambda out: SmallCNN(out), "image"),
    "cnn_groups_dilation": (lambda out: SmallCNN(out, groups=2, dilation=2), "image"),
    "depthwise": (lambda out: Depthwise(out), "image"),
    "conv1d_conv3d_groupnorm": (lambda out: Conv13(out), "conv13"),
    "text": (lambda out: TextModel(out), "tokens"),
    "shared": (lambda out: SharedTwice(out), "shared"),
    "mixed": (lambda out: Mixed(out), "mixed"),
    "transformer": (transformer, "sequence"),
    "attention": (lambda out: Attention(out), "sequence"),
    "conv_gram_of_grams": (lambda out: SmallSpatial(out), "small_image"),
    "inplace": (
        lambda out: nn.Sequential(nn.Linear(3, 16), nn.ReLU(inplace=True), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, out)),
        "mlp",
    ),
}


def build(name: str, out: int) -> nn.Module:
    make, _ = ZOO[name]
    model = seeded(make(out)).double().eval()
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("out", [1, 3])
@pytest.mark.parametrize("same", [True, False])
def test_structured_equals_jacobian_contraction(name, out, same):
    model = build(name, out)
    kind = ZOO[name][1]
    x1 = inputs(kind, 5, 1)
    x2 = None if same else inputs(kind, 3, 2)
    ref = empirical_ntk(model, x1, x2, method="jacobian")
    for block in (None, 2):
        kernel = empirical_ntk(model, x1, x2, method="structured", block_size=block)
        assert kernel.shape == ref.shape and kernel.dtype == torch.float64
        assert rel_fro(kernel, ref) < 1e-10, (name, block)
    if out > 1:
        traced = empirical_ntk(model, x1, x2, method="structured", trace=True)
        assert rel_fro(traced, ref.diagonal(dim1=2, dim2=3).sum(-1)) < 1e-10


def test_resnet18_small_images_equals_jacobian_contraction():
    torchvision = pytest.importorskip("torchvision")
    model = seeded(torchvision.models.resnet18(num_classes=2)).double().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = empirical_ntk(model, x, method="jacobian")
    assert rel_fro(empirical_ntk(model, x, method="structured"), ref) < 1e-10
    _, rest = plan(model)
    assert rest == []  # every parameter of a ResNet has a rule


def test_frozen_parameters_are_left_out_by_every_method():
    model = build("mlp", 2)
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    x = inputs("mlp", 4, 3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(4):
        for a in range(2):
            grads = torch.autograd.grad(model(x[i : i + 1])[0, a], trainable)
            rows.append(torch.cat([g.flatten() for g in grads]))
    j = torch.stack(rows).reshape(4, 2, -1)
    expected = torch.einsum("iap,jbp->ijab", j, j)
    for method in ("structured", "jacobian", "ntk_vp"):
        assert rel_fro(empirical_ntk(model, x, method=method), expected) < 1e-10, method


def test_attention_projections_are_covered_by_their_rule():
    model = build("transformer", 1)
    by_module, rest = plan(model)
    assert rest == []
    assert sorted(by_module[model.layer.self_attn].values()) == ["layer.self_attn.in_proj_bias", "layer.self_attn.in_proj_weight"]
    wrong, _ = checked_rules(model, inputs("sequence", 3, 0), by_module)
    assert not wrong  # the rule's gradient equals autograd's: no parameter handed to the Jacobian
    direct = build("attention", 1)  # sequence-first, masks, weights returned: the equivalent forward holds there too
    assert checked_rules(direct, inputs("sequence", 3, 0), plan(direct)[0]) == (set(), set())


class WideSmallSpatial(nn.Module):
    """Many channels on 2 x 2 images: the Gram of Grams is far cheaper than per-sample gradients."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 4, 1)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize("name", ["wide_small_spatial", "cnn"])
def test_the_kernel_costs_what_the_cheaper_contraction_predicts(name):
    """FLOPs counted by torch while the kernel runs (an independent count) against the cost model: within
    a factor 2 of the predicted structured cost, and below half of what the costlier contraction of
    every layer would take (Gram of Grams wins on the 2 x 2 images, per-sample gradients on the 8 x 8 ones)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ntk.structured.cost import one_input_blocks

    model, x = (
        (seeded(WideSmallSpatial()).double().eval(), torch.randn(32, 64, 2, 2, dtype=torch.float64))
        if name != "cnn"
        else (
            build("cnn", 1),
            inputs("image", 8, 0),
        )
    )
    n = x.shape[0]
    empirical_ntk(model, x, method="structured")  # the check of the rules, once per model: not counted
    counter = FlopCounterMode(display=False)
    with counter:
        empirical_ntk(model, x, method="structured")
    measured = counter.get_total_flops()
    predicted = flop_counts(model, x, n)["structured"]
    costs = [
        (b.groups, contraction_costs(n, n, 1, b.positions, b.positions, b.fan_in + 1, b.fan_out, True, True))
        for b in one_input_blocks(model, x[:1], plan(model)[0])
    ]
    costlier = predicted + sum(2 * g * (max(c) - min(c)) for g, c in costs)
    assert costlier > 3 * predicted  # the two contractions differ enough for the count to tell them apart
    assert predicted / 2 < measured < 2 * predicted
    assert measured < costlier / 2


def test_outputs_modified_in_place_are_copied_and_only_those():
    model = build("inplace", 1)
    by_module, _ = plan(model)
    assert inplace_outputs(model, inputs("mlp", 3, 0), by_module) == {model[0]}  # ReLU(inplace=True) follows it


def test_uncovered_parameters_go_to_the_jacobian():
    by_module, rest = plan(build("mixed", 1))
    assert sorted(rest) == ["cell.bias_hh", "cell.bias_ih", "cell.weight_hh", "cell.weight_ih"]
    assert {type(m).__name__ for m in by_module} == {"Linear", "BatchNorm1d"}


def test_batchnorm_in_training_mode_is_refused():
    model = build("mixed", 1).train()
    with pytest.raises(ValueError, match=r"bn \(BatchNorm1d\) normalises by the statistics of the batch.*call model.eval\(\)"):
        empirical_ntk(model, inputs("mixed", 4, 0), method="structured")


def test_auto_picks_structured_for_a_general_module_and_plans_its_memory():
    model = build("cnn", 1)
    x = inputs("image", 6, 0)
    ref = empirical_ntk(model, x, method="jacobian")
    assert rel_fro(empirical_ntk(model, x), ref) < 1e-10
    blocked = empirical_ntk(model, x, method="structured", memory_limit=200_000)  # forces small blocks
    assert rel_fro(blocked, ref) < 1e-10
    with pytest.raises(NTKMemoryError, match="method='structured' needs about"):
        empirical_ntk(model, x, method="structured", memory_limit=1000)


def test_flop_counts_count_the_forward_pass_and_favour_structure_on_wide_linear_layers():
    small = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    assert flop_counts(small, inputs("mlp", 4, 0), 4)["forward"] == 2 * (3 * 16 + 16 * 1)  # one multiply-add per weight
    wide = nn.Sequential(nn.Linear(3, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1)).double()
    counts = flop_counts(wide, inputs("mlp", 64, 0), 64)
    # one position per layer: Gram of Grams costs N^2 (in + out) per layer against N^2 in out for the Jacobian's contraction
    assert counts["structured"] < counts["jacobian"] / 10 and counts["jacobian"] < counts["ntk_vp"]


def test_a_model_changed_after_its_first_kernel_is_checked_again_and_can_be_freed():
    """The rules are checked once per model and kind of input; a model changed afterwards (here a Linear
    whose forward now doubles its weight, so that its rule no longer gives the whole gradient) is
    checked again, and its kernel still equals Jacobian contraction. Nothing keeps the model alive."""
    import gc
    import weakref

    model, x = build("inplace", 1), inputs("mlp", 4, 0)
    empirical_ntk(model, x, method="structured")
    layer = model[2]
    layer.forward = lambda a, w=layer.weight, b=layer.bias: nn.functional.linear(a, 2 * w, b)
    assert rel_fro(empirical_ntk(model, x, method="structured"), empirical_ntk(model, x, method="jacobian")) < 1e-10
    alive = weakref.ref(model)
    del model, layer
    gc.collect()
    assert alive() is None


def test_ntk_dense_layers_have_their_rule():
    """NTKDense (z = W (a / sqrt(n)) + beta b) is covered, its bias with the factor beta: the structured
    kernel of an NTKMLP equals its layer-wise kernel, with no parameter left to the Jacobian."""
    from ntk.model import NTKMLP

    model = NTKMLP(3, 16, 3, out_dim=2, beta=0.3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = inputs("mlp", 5, 0)
    assert plan(model)[1] == []
    assert checked_rules(model, x, plan(model)[0])[0] == set()
    assert rel_fro(empirical_ntk(model, x, method="structured"), empirical_ntk(model, x, method="layerwise")) < 1e-12
