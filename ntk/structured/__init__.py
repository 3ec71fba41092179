"""Exact empirical NTK of any PyTorch module at structured-derivative cost (method="structured").

    Theta(x, x')[a, b] = sum_p  df_a(x)/dtheta_p  df_b(x')/dtheta_p      over the trainable parameters

For a layer whose output is linear in its weight, y_s = W a_s at positions s (the rows of a
Linear layer's input with extra dimensions, the patches of a convolution, the tokens of an
embedding), the gradient of f_a with respect to W is sum_s g_s a_s^T, with g_s = df_a / dy_s the
cotangent at the layer's output. Its share of the kernel is computed by the cheaper of the two exact
contractions of Novak et al. (ICML 2022, "Fast Finite Width Neural Tangent Kernel", Table 2):

  - Gram of Grams:    sum_{s, s'} (g_s . g'_s') (a_s . a'_s')       cost ~ N1 N2 S^2 (in + O^2 out)
  - explicit:         G = sum_s g_s a_s^T per sample and output, then G1 . G2    cost ~ N O S in out + N1 N2 O^2 in out

Rules cover nn.Linear, nn.Conv1d/2d/3d (zero padding, any stride, dilation, groups),
nn.Embedding, nn.LayerNorm, nn.GroupNorm and nn.BatchNorm1d/2d/3d in eval mode, weight and bias,
and nn.MultiheadAttention's packed input projection (its query, key and value blocks are three
linear maps of the attention's inputs; while the kernel is computed, the module runs an equivalent
forward that exposes them, checked against the module's own output).
One forward pass records every covered module's inputs (forward hooks; a module called several
times contributes every call, and the cross terms between calls); O backward passes give the
cotangents at the outputs of those modules, through zero "taps" added to each output. Every
trainable parameter no rule covers (a raw nn.Parameter used in a forward, nn.MultiheadAttention's
packed projections, recurrent cells, custom layers, a parameter shared by two modules) is handled
exactly by torch.func Jacobian contraction restricted to those parameters. Frozen parameters
(requires_grad False) are left out: the kernel is that of the parameters that training moves.

The check of the rules against autograd runs once per model and `capture.fingerprint` (the kind of
input, the trainable parameters, every submodule's class, forward and hooks): a model changed after
its first kernel is checked again on its next one, and the record dies with the model. Samples must
not interact: a BatchNorm in training mode is refused (put the model in eval mode).

The package, by concern, each file importing only those above it:

  coverage.py      which parameters a rule covers (`plan`), which go to the Jacobian
  records.py       what each rule records from a call (`Call`), in which layout
  contractions.py  each covered module's share of the kernel, the cheaper exact contraction
  capture.py       the forward and backward passes (`factors`) and the check of the rules
  cost.py          the weight blocks per input, for the memory estimate and the FLOP count
  kernel.py        `structured_kernel`: the shares plus the Jacobian of the rest, in blocks
"""

from __future__ import annotations

from ntk.structured.contractions import contraction_costs
from ntk.structured.coverage import check_independent_samples, covered, plan
from ntk.structured.kernel import structured_kernel

__all__ = ["check_independent_samples", "contraction_costs", "covered", "plan", "structured_kernel"]
