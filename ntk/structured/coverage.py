"""Which trainable parameters the structured kernel's rules cover, and which go to Jacobian contraction.

A rule covers the weight and bias of nn.Linear, `ntk.NTKDense`, nn.Conv1d/2d/3d (zero padding), nn.Embedding (no
max_norm), nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d/2d/3d in eval mode with running statistics, and
the packed input projection of nn.MultiheadAttention. `plan` splits a model's trainable parameters
between the rules and the Jacobian; `check_independent_samples` refuses models whose samples interact.
"""

from __future__ import annotations

from torch import nn

from ntk.forward import model_cache
from ntk.model import NTKDense

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR = (nn.Linear, NTKDense)  # y = W a + b, or NTKDense's z = W (scale a) + beta b

WEIGHT_BIAS = ("weight", "bias")
ATTENTION = ("in_proj_weight", "in_proj_bias")


def covered(module: nn.Module) -> bool:
    """Whether a rule covers `module` (its weight and bias)."""
    if isinstance(module, LINEAR):
        return True
    if isinstance(module, CONVS):
        return module.padding_mode == "zeros"
    if isinstance(module, nn.Embedding):
        return module.max_norm is None
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return module.affine and module.track_running_stats
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return getattr(module, "elementwise_affine", getattr(module, "affine", False))
    if isinstance(module, nn.MultiheadAttention):
        simple = module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
        return simple and not (module.training and module.dropout > 0)
    return False


def bias_scale(module: nn.Module) -> float:
    """d output / d bias: beta for an NTKDense (z = ... + beta b), 1 for every other rule."""
    return module.beta if isinstance(module, NTKDense) else 1.0


def _rule_names(module: nn.Module) -> tuple[str, ...]:
    return ATTENTION if isinstance(module, nn.MultiheadAttention) else WEIGHT_BIAS


def _own_params(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters(recurse=False) if p is not None}


def plan(model: nn.Module) -> tuple[dict[nn.Module, dict[str, str]], list[str]]:
    """Which trainable parameters the rules cover (module -> its parameter names) and which are left
    to Jacobian contraction (full names). A parameter shared by several modules, or one a rule does not
    know (say a covered module with an extra parameter), goes to the Jacobian. Kept with the model
    (`ntk.forward.model_cache`) until its structure or trainable parameters change."""
    cache = model_cache(model, "structured plan", None)
    if "plan" not in cache:
        cache["plan"] = _plan(model)
    by_module, rest = cache["plan"]
    return dict(by_module), list(rest)


def _plan(model: nn.Module) -> tuple[dict[nn.Module, dict[str, str]], list[str]]:
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in _own_params(module).items():
            owners.setdefault(id(p), []).append((module, name))
    by_module: dict[nn.Module, dict[str, str]] = {}  # module -> {its parameter name: full name}
    rest: list[str] = []
    for full, p in model.named_parameters():  # (named_parameters lists a shared parameter once)
        if not p.requires_grad:
            continue
        uses = owners[id(p)]
        module, name = uses[0]
        if len(uses) == 1 and covered(module) and name in _rule_names(module):
            by_module.setdefault(module, {})[name] = full
        else:
            rest.append(full)
    return by_module, rest


def uncovered_reasons(model: nn.Module) -> dict[str, str]:
    """Why each trainable parameter that `plan` leaves to Jacobian contraction has no rule, in words."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, p in _own_params(module).items():
            owners.setdefault(id(p), []).append((module, name))
    rest = set(plan(model)[1])
    reasons = {}
    for full, p in model.named_parameters():
        if full not in rest:
            continue
        uses = owners[id(p)]
        module, name = uses[0]
        if len(uses) > 1:
            reasons[full] = f"shared by {len(uses)} modules"
        elif not covered(module) and type(module) in RULE_CLASSES:
            reasons[full] = f"{type(module).__name__} in a form no rule covers (padding mode, max_norm, no running statistics, ...)"
        elif not covered(module):
            kind = "a raw parameter used in the forward of" if list(module.children()) else "no rule for"
            reasons[full] = f"{kind} {type(module).__name__}"
        else:
            reasons[full] = f"{name!r} is not a parameter the {type(module).__name__} rule knows"
    return reasons


RULE_CLASSES = (
    *LINEAR,
    *CONVS,
    nn.Embedding,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,
)


def check_independent_samples(model: nn.Module) -> None:
    """Refuse a model whose samples interact (batch statistics), whose NTK per input pair is undefined."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            raise ValueError(
                f"{name or 'the model'} ({type(module).__name__}) normalises by the statistics of the batch, so the output for one input "
                "depends on the others and the NTK is not a kernel of input pairs; call model.eval() (with running statistics) first"
            )
