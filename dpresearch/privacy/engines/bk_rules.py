"""Per-layer rules of the book-keeping engine: from a layer's input activations A and output
gradients B, each trainable parameter's per-example squared gradient norms and a function
that returns the factor-weighted sum of its per-example gradients.

For weight matrices (Linear) the per-example gradient is G_i = B_i^T A_i with T positions per
example. Its norm comes from whichever is cheaper (the "mixed" rule of Bu et
al.): the ghost-norm identity ||G_i||^2 = <A_i A_i^T, B_i B_i^T>, costing ~T^2 per entry pair,
or the materialized G_i (d_in x d_out per example); ghost when 2 T^2 < d_in * d_out. The clipped
sum is then one matrix product, (c * B)^T A, or sum_i c_i G_i. Convolutions never unfold
their input: see ``conv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from dpresearch.privacy.engines.base import without_padding
from dpresearch.privacy.units import Units


@dataclass
class PerExample:
    """One parameter's per-example gradients, kept in whichever form is cheaper."""

    param: nn.Parameter
    sq_norms: torch.Tensor  # (N,)
    weighted_sum: Callable[[torch.Tensor], torch.Tensor]  # c (N,) -> sum_i c_i g_i
    mode: str  # "ghost" or "materialized"
    per_example: Callable[[], torch.Tensor]  # () -> (N, *param.shape), to add up shared uses
    # Units of several rows (``dpresearch.privacy.units``): each unit's squared norm without
    # per-example gradients, where the rule can (a weight matrix: the unit's positions pooled).
    unit_sq_norms: Callable[[Units], torch.Tensor] | None = None


Rule = Callable[..., list[PerExample]]  # (module, input A, output gradient B, trainable ids)
RULES: dict[type, Rule] = {}
OUTPUT_ONLY: set[type] = set()  # layers whose rule reads only B: their input is not kept


def register_bk_rule(*layer_types: type, reads_input: bool = True) -> Callable[[Rule], Rule]:
    """Register ``rule`` for exactly these layer types (as Opacus' ``register_grad_sampler``):
    the bk engine keeps the input A of a trainable layer only when its rule reads it."""

    def decorate(rule: Rule) -> Rule:
        for layer_type in layer_types:
            RULES[layer_type] = rule
            if not reads_input:
                OUTPUT_ONLY.add(layer_type)
        return rule

    return decorate


def materialized(param: nn.Parameter, grads: torch.Tensor, mode: str = "materialized"):
    """Small per-example gradients (N, ...) kept as they are."""
    return PerExample(
        param,
        grads.reshape(len(grads), -1).pow(2).sum(1),
        lambda c: torch.einsum("n,n...->...", c.to(grads.dtype), grads).view_as(param),
        mode,
        lambda: grads.reshape(len(grads), *param.shape),
    )


def _matrix(
    param: nn.Parameter, a: torch.Tensor, b: torch.Tensor, transposed: bool = False
) -> PerExample:
    """Weight of shape (O, I) (viewed; (I, O) if ``transposed``) from A (N, T, I), B (N, T, O)."""
    n, t, i = a.shape
    o = b.shape[-1]

    def shaped(g: torch.Tensor) -> torch.Tensor:  # (O, I) -> the parameter's layout
        return (g.mT if transposed else g).reshape(param.shape)

    def per_example() -> torch.Tensor:
        g = b.mT @ a  # (N, O, I)
        return (g.mT if transposed else g).reshape(n, *param.shape)

    units = partial(_pooled_sq_norms, a, b)
    if t == 1:
        a1, b1 = a[:, 0], b[:, 0]
        sq = a1.pow(2).sum(1) * b1.pow(2).sum(1)
        return PerExample(
            param, sq, lambda c: shaped((b1 * c[:, None].to(b1.dtype)).T @ a1), "ghost",
            per_example, units,
        )  # fmt: skip
    if 2 * t * t < i * o:
        sq = ((a @ a.mT) * (b @ b.mT)).sum((1, 2))

        def weighted(c: torch.Tensor) -> torch.Tensor:
            cb = (b * c[:, None, None].to(b.dtype)).reshape(-1, o)
            return shaped(cb.T @ a.reshape(-1, i))

        return PerExample(param, sq, weighted, "ghost", per_example, units)
    grads = b.mT @ a  # (N, O, I)
    return materialized(param, grads.mT if transposed else grads)


def _pooled(units: Units, x: torch.Tensor) -> torch.Tensor:
    """(N, T, d) rows -> (U, S T, d): each unit's rows' positions side by side, zero-padded to
    the largest unit's S rows (zero positions add nothing to a gradient)."""
    sizes = units.sizes().to(x.device)
    index = units.index.to(x.device)
    within = torch.arange(len(x), device=x.device) - (sizes.cumsum(0) - sizes)[index]
    out = x.new_zeros(units.count, int(sizes.max()), *x.shape[1:])
    out[index, within] = x
    return out.reshape(units.count, -1, x.shape[-1])


def _pooled_sq_norms(a: torch.Tensor, b: torch.Tensor, units: Units) -> torch.Tensor:
    """Squared norms of the units' weighted weight-gradient sums sum_i w_i B_i^T A_i = B_u^T A_u
    with the unit's positions pooled: the ghost norm on them, or B_u^T A_u materialized per
    UNIT, whichever is cheaper (as for one example)."""
    if units.weights is not None:
        b = b * units.weights.to(b.device, b.dtype).view(-1, 1, 1)
    pa, pb = _pooled(units, a), _pooled(units, b)
    s = pa.shape[1]
    if 2 * s * s < a.shape[-1] * b.shape[-1]:
        return ((pa @ pa.mT) * (pb @ pb.mT)).sum((1, 2))
    return (pb.mT @ pa).pow(2).sum((1, 2))


def _bias(param: nn.Parameter, b: torch.Tensor) -> PerExample:
    """Bias gradient per example: B summed over positions; b is (N, T, O)."""
    return materialized(param, b.sum(1))


def _wants(param: nn.Parameter | None, trainable: set[int]) -> bool:
    return param is not None and id(param) in trainable


@register_bk_rule(nn.Linear)
def linear(m: nn.Module, a, b, trainable: set[int], transposed: bool = False):
    """y = x W^T + b on any leading dimensions; ``transposed``: W stored as (in, out), as
    transformers' Conv1D (GPT-2) stores it."""
    b3 = b.reshape(len(b), -1, b.shape[-1])
    out = []
    if _wants(m.weight, trainable):
        out.append(_matrix(m.weight, a.reshape(len(a), -1, a.shape[-1]), b3, transposed))
    if _wants(m.bias, trainable):
        out.append(_bias(m.bias, b3))
    return out


_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight,
                3: torch.nn.grad.conv3d_weight}  # fmt: skip


def _explicitly_padded(m: nn.modules.conv._ConvNd, a: torch.Tensor) -> torch.Tensor:
    """The input as the convolution reads it: padded by its mode ('same' may pad unevenly;
    reflect, replicate and circular are not zeros), so the rules below use padding 0."""
    pad = m._reversed_padding_repeated_twice
    if not any(pad):
        return a
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    return F.pad(a, pad, mode=mode)


def _per_example_conv_weight(m: nn.modules.conv._ConvNd, x: torch.Tensor, b: torch.Tensor):
    """Each example's weight gradient, (N, *weight.shape), by the convolution's own weight-
    gradient kernel with the batch as groups (any dimension, groups, stride, dilation)."""
    n, dims = len(x), x.dim() - 2
    g = m.groups
    grads = _WEIGHT_GRAD[dims](
        x.reshape(1, -1, *x.shape[2:]), (n * m.out_channels, *m.weight.shape[1:]),
        b.reshape(1, -1, *b.shape[2:]), stride=m.stride, padding=0, dilation=m.dilation,
        groups=n * g,
    )  # fmt: skip
    return grads.view(n, *m.weight.shape)


GHOST_CONV_BYTES = 512 * 2**20  # the patch Gram matrices' budget (N x positions^2 floats)


def conv_norm_mode(m: nn.modules.conv._ConvNd, x: torch.Tensor, b: torch.Tensor) -> str:
    """How a groups-1 Conv1d/2d gets its per-example norms, by cost per example (measured on
    this CPU, experiments/engines/): ``ghost``, the patch Gram (input Gram over padded positions
    Tp^2 C, summed over kernel offsets, times the output Gram T^2 O) when that beats
    ``materialized``, the per-example weight gradients by the convolution's own kernel with
    the batch as groups (T O C K), and the Gram matrices fit the budget."""
    t = b[0].numel() // b.shape[1]
    tp = x[0].numel() // x.shape[1]
    k = m.weight[0, 0].numel()
    ghost = tp * tp * x.shape[1] + t * t * b.shape[1]
    fits = len(x) * (tp * tp + 2 * t * t) * x.element_size() <= GHOST_CONV_BYTES
    return "ghost" if fits and ghost < t * b.shape[1] * x.shape[1] * k else "materialized"


def _patch_gram(m: nn.modules.conv._ConvNd, x: torch.Tensor, out_shape) -> torch.Tensor:
    """<a_t, a_s> for every pair of output positions, a_t the (padded) input patch that
    position t reads, without unfolding: the Gram of the padded input's positions, summed over
    the kernel's offsets (stride and dilation as the convolution reads). (N, T, T)."""
    n, c = x.shape[:2]
    x2 = x.unsqueeze(2) if x.dim() == 3 else x  # Conv1d as 1 x L
    hp, wp = x2.shape[2:]
    flat = x2.reshape(n, c, hp * wp)
    gram = (flat.mT @ flat).view(n, hp, wp, hp, wp)
    ho, wo = (1, *out_shape) if x.dim() == 3 else out_shape
    kh, kw = (1, *m.kernel_size) if x.dim() == 3 else m.kernel_size
    sh, sw = (1, *m.stride) if x.dim() == 3 else m.stride
    dh, dw = (1, *m.dilation) if x.dim() == 3 else m.dilation
    total = None
    for u in range(kh):
        rows = slice(u * dh, u * dh + sh * (ho - 1) + 1, sh)
        for v in range(kw):
            cols = slice(v * dw, v * dw + sw * (wo - 1) + 1, sw)
            part = gram[:, rows, cols, rows, cols]
            total = part.clone() if total is None else total.add_(part)
    return total.reshape(n, ho * wo, ho * wo)


def _conv_weight(m: nn.modules.conv._ConvNd, a: torch.Tensor, b: torch.Tensor) -> PerExample:
    """A groups-1 Conv1d/2d weight from its input a and output gradient b. Norms come from the
    cheaper of the patch Gram (ghost) and the per-example gradients (materialized). A ghost
    layer's clipped sum is ONE call of the convolution's weight-gradient kernel on the
    factor-scaled b, the kernel non-private training runs. It keeps the unpadded input and
    pads it again when the sum is taken: the padded copy is transient, not held to the end."""
    dims = a.dim() - 2
    grad_weight = _WEIGHT_GRAD[dims]
    x = _explicitly_padded(m, a)

    def weighted(c: torch.Tensor) -> torch.Tensor:
        cb = b * c.to(b.dtype).view(-1, *([1] * (b.dim() - 1)))
        return grad_weight(_explicitly_padded(m, a), m.weight.shape, cb, stride=m.stride,
                           padding=0, dilation=m.dilation)  # fmt: skip

    def per_example() -> torch.Tensor:
        return _per_example_conv_weight(m, _explicitly_padded(m, a), b)

    if conv_norm_mode(m, x, b) == "materialized":  # their weighted sum is an N-term einsum
        return materialized(m.weight, _per_example_conv_weight(m, x, b))
    bf = b.reshape(len(b), b.shape[1], -1)  # (N, O, T)
    sq = (_patch_gram(m, x, b.shape[2:]) * (bf.mT @ bf)).sum((1, 2))
    return PerExample(m.weight, sq, weighted, "ghost", per_example)


@register_bk_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(m: nn.modules.conv._ConvNd, a, b, trainable: set[int]) -> list[PerExample]:
    """Conv1d/2d with groups 1: no im2col (``_conv_weight``). Grouped (depthwise) convolutions
    and Conv3d: per-example gradients materialized by the convolution's weight-gradient kernel.
    Any padding mode: the input is padded first, then read with padding 0."""
    n = len(b)
    out = []
    if _wants(m.weight, trainable):
        if m.groups == 1 and isinstance(m, (nn.Conv1d, nn.Conv2d)):
            out.append(_conv_weight(m, a, b))
        else:
            x = _explicitly_padded(m, a)
            out.append(materialized(m.weight, _per_example_conv_weight(m, x, b)))
    if _wants(m.bias, trainable):
        out.append(_bias(m.bias, b.reshape(n, b.shape[1], -1).mT))
    return out


@register_bk_rule(nn.Embedding)
def embedding(m: nn.Embedding, ids, b, trainable: set[int]) -> list[PerExample]:
    if not _wants(m.weight, trainable):
        return []
    n, d = len(b), b.shape[-1]
    ids = ids.reshape(n, -1)
    b = b.reshape(n, -1, d)
    b = without_padding(m, ids, b)  # the padding row never receives a gradient
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(b.dtype)
    if m.scale_grad_by_freq:  # each row's gradient over its count in the (one-example) batch
        b = b / same.sum(2, keepdim=True)
    return [_rows_by_id(m.weight, ids, b, same)]


def _rows_by_id(weight: nn.Parameter, ids: torch.Tensor, rows: torch.Tensor,
                same: torch.Tensor) -> PerExample:  # fmt: skip
    """A lookup table's per-example gradients: position l of example i adds rows[i, l] to row
    ids[i, l]; ``same`` (N, L, L) marks equal ids, whose rows add up before the norm."""
    n, d = rows.shape[0], rows.shape[-1]
    sq = (same * (rows @ rows.mT)).sum((1, 2))

    def weighted(c: torch.Tensor) -> torch.Tensor:
        scaled = (rows * c[:, None, None].to(rows.dtype)).reshape(-1, d)
        return torch.zeros_like(weight).index_add_(0, ids.reshape(-1), scaled)

    def per_example() -> torch.Tensor:
        flat_ids = ids + len(weight) * torch.arange(n, device=ids.device).unsqueeze(1)
        flat = torch.zeros(n * len(weight), d, dtype=rows.dtype, device=rows.device)
        return flat.index_add_(0, flat_ids.reshape(-1), rows.reshape(-1, d)).view(n, -1, d)

    return PerExample(weight, sq, weighted, "ghost", per_example)


def _affine(m: nn.Module, normalized: torch.Tensor | None, b, channel_view, trainable):
    out = []
    if _wants(m.weight, trainable):
        out.append(materialized(m.weight, channel_view(normalized * b)))
    if _wants(getattr(m, "bias", None), trainable):
        out.append(materialized(m.bias, channel_view(b)))
    return out


@register_bk_rule(nn.LayerNorm)
def layer_norm(m: nn.LayerNorm, a, b, trainable: set[int]) -> list[PerExample]:
    shape = m.normalized_shape
    normalized = F.layer_norm(a, shape, eps=m.eps) if _wants(m.weight, trainable) else None
    return _affine(m, normalized, b, lambda t: t.reshape(len(t), -1, *shape).sum(1), trainable)


@register_bk_rule(nn.GroupNorm)
def group_norm(m: nn.GroupNorm, a, b, trainable: set[int]) -> list[PerExample]:
    normalized = F.group_norm(a, m.num_groups, eps=m.eps) if _wants(m.weight, trainable) else None
    return _affine(
        m, normalized, b, lambda t: t.reshape(len(t), m.num_channels, -1).sum(-1), trainable
    )


@register_bk_rule(nn.EmbeddingBag)
def embedding_bag(m: nn.EmbeddingBag, ids, b, trainable: set[int]) -> list[PerExample]:
    """EmbeddingBag on (N, L) ids (one bag per example), mode sum or mean: every id of bag i
    gets b_i (over L for mean), so repeated ids add up before the norm."""
    if not _wants(m.weight, trainable):
        return []
    keep = torch.ones_like(ids, dtype=b.dtype)
    if m.padding_idx is not None:  # padding ids are left out of the bag (and of its mean)
        keep = (ids != m.padding_idx).to(b.dtype)
    scale = keep / keep.sum(1, keepdim=True).clamp(min=1) if m.mode == "mean" else keep
    rows = scale.unsqueeze(-1) * b.unsqueeze(1)  # (N, L, D): what each position adds
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(b.dtype)
    return [_rows_by_id(m.weight, ids, rows, same)]


@register_bk_rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def instance_norm(m: nn.modules.instancenorm._InstanceNorm, a, b, trainable: set[int]):
    normalized = F.instance_norm(a, eps=m.eps) if _wants(m.weight, trainable) else None
    return _affine(m, normalized, b, lambda t: t.reshape(len(t), m.num_features, -1).sum(-1),
                   trainable)  # fmt: skip


@register_bk_rule(nn.RMSNorm)
def rms_norm(m: nn.RMSNorm, a, b, trainable: set[int]) -> list[PerExample]:
    shape = tuple(m.normalized_shape)
    normalized = F.rms_norm(a, shape, eps=m.eps) if _wants(m.weight, trainable) else None
    return _affine(m, normalized, b, lambda t: t.reshape(len(t), -1, *shape).sum(1), trainable)


def sequence_bias(m: nn.Module, a, b, trainable: set[int]) -> list[PerExample]:
    """Opacus' SequenceBias appends the bias as one more position: its per-example gradient
    is the output gradient there (the last position, in either layout)."""
    if not _wants(m.bias, trainable):
        return []
    return [materialized(m.bias, b[:, -1] if m.batch_first else b[-1])]


def hf_vit_embeddings(m: nn.Module, a, b, trainable: set[int]) -> list[PerExample]:
    """Hugging Face ViTEmbeddings: cat(cls_token, patches) + position_embeddings (dropout 0,
    checked), so the class token's per-example gradient is B[:, 0] and the position
    embedding's is B. Its patch projection is a Conv2d with its own rule."""
    out = []
    if _wants(m.cls_token, trainable):
        out.append(materialized(m.cls_token, b[:, :1]))
    if _wants(m.position_embeddings, trainable):
        out.append(materialized(m.position_embeddings, b))
    return out


try:  # Opacus' DP layers: DPLSTM/DPGRU/DPRNN cells are RNNLinear, called once per time step
    from opacus.layers.dp_multihead_attention import SequenceBias as _SequenceBias
    from opacus.layers.dp_rnn import RNNLinear as _RNNLinear

    register_bk_rule(_RNNLinear)(linear)
    register_bk_rule(_SequenceBias, reads_input=False)(sequence_bias)
except ImportError:  # pragma: no cover
    _SequenceBias = None

try:  # Hugging Face layers, when transformers is installed
    from transformers.models.vit.modeling_vit import ViTEmbeddings as _HFViTEmbeddings
    from transformers.pytorch_utils import Conv1D as _HFConv1D

    register_bk_rule(_HFConv1D)(partial(linear, transposed=True))  # GPT-2's linear layers
    register_bk_rule(_HFViTEmbeddings, reads_input=False)(hf_vit_embeddings)
except ImportError:  # pragma: no cover
    _HFViTEmbeddings = None


def unsupported_reason(m: nn.Module) -> str | None:
    """Why the bk engine cannot handle ``m``; None if it can."""
    if type(m) not in RULES:
        return "the bk engine has no rule for this layer type"
    if _HFViTEmbeddings is not None and isinstance(m, _HFViTEmbeddings):
        if getattr(m, "mask_token", None) is not None or m.dropout.p > 0:
            return "bk handles ViTEmbeddings without mask token and with dropout 0 only"
    if isinstance(m, nn.EmbeddingBag) and (m.mode != "sum" and m.mode != "mean"):
        return f"bk handles EmbeddingBag in mode sum or mean (mode={m.mode!r})"
    return None
