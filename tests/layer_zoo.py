"""The layers users bring, one small model each: Opacus' grad-sample test list (Linear 2/3/4-D
and sequence-first, Conv1d/2d/3d with stride, padding, dilation, groups and padding modes,
Embedding at 2/3/4-D, EmbeddingBag, GroupNorm, InstanceNorm1d/2d/3d, LayerNorm, RMSNorm,
DPLSTM/DPGRU/DPRNN, DPMultiheadAttention, SequenceBias) plus tied, shared, functional and frozen
weights and torch's own recurrent and attention layers.

Each model maps a batch-first input to 3 logits through a fixed random projection (a buffer),
so the layer under test holds every trainable parameter. Shared by the conformance test and
``experiments/engine_conformance``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.layers import DPGRU, DPLSTM, DPRNN, DPMultiheadAttention, SequenceBias
from torch import nn
from torch.nn import functional as F

from dpresearch.module import classification_losses
from dpresearch.privacy.self_check import SelfCheck
from dpresearch.privacy.spec import (
    AutomaticClipping,
    FixedClipping,
    PerLayerClipping,
    PrivacyConfigError,
)
from dpresearch.privacy.validation import select_engine

CLASSES = 3


class Probe(nn.Module):
    """``body`` then a fixed projection of the flattened output to CLASSES logits."""

    def __init__(self, body: nn.Module, example: torch.Tensor, seq_first: bool = False):
        super().__init__()
        self.body = body
        self.seq_first = seq_first
        with torch.no_grad():
            features = self._features(example).shape[1]
        g = torch.Generator().manual_seed(1)
        self.register_buffer("projection", torch.randn(features, CLASSES, generator=g) / 3)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.seq_first:  # the layer sees (T, N, ...): batch in the second dimension
            out = self.body(x.transpose(0, 1))
            out = out[0] if isinstance(out, tuple) else out
            out = out.transpose(0, 1)
        else:
            out = self.body(x)
            out = out[0] if isinstance(out, tuple) else out
        return out.reshape(len(x), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x) @ self.projection


class Attention(nn.Module):
    """Self-attention of a (DP)MultiheadAttention: q = k = v = x."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, x, x, need_weights=False)[0]


class TiedHead(nn.Module):
    """GPT-2 style: the embedding's weight is also the output layer's."""

    def __init__(self, vocab: int = 11, dim: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.hidden(self.emb(ids))))


class SharedLinears(nn.Module):
    """Two Linear modules holding one weight."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class CalledTwice(nn.Module):
    """One Linear module applied twice in a forward pass."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)

    def forward(self, x):
        return self.a(torch.tanh(self.a(x)))


class FunctionalUse(nn.Module):
    """A weight used through ``F.linear`` besides its module: no layer hook sees that use."""

    def __init__(self, vocab: int = 11, dim: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)

    def forward(self, ids):
        return F.linear(self.emb(ids), self.emb.weight)


class PartlyFrozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 4)
        self.a.weight.requires_grad_(False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _floats(*shape: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda n, g: torch.randn(n, *shape, generator=g)


def _ids(high: int, *shape: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda n, g: torch.randint(0, high, (n, *shape), generator=g)


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]  # the layer (or structure) under test
    inputs: Callable[[int, torch.Generator], torch.Tensor]
    seq_first: bool = False
    # A layer no engine may train (BatchNorm mixes examples; Embedding(max_norm) rewrites its
    # weights from the batch): every engine refuses, naming the layer.
    never_private: bool = False

    def model(self) -> Probe:
        torch.manual_seed(0)
        example = self.inputs(2, torch.Generator().manual_seed(0))
        return Probe(self.build(), example, self.seq_first)

    def batch(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = self.inputs(n, g)
        return x, torch.randint(0, CLASSES, (n,), generator=g)


def _conv_case(name: str, dim: int, size: int, **kw) -> Case:
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    return Case(name, lambda: cls(4, 4, **kw), _floats(4, *([size] * dim)))


def _cases() -> list[Case]:
    cases = [
        Case("Linear 2-D", lambda: nn.Linear(6, 5), _floats(6)),
        Case("Linear 3-D", lambda: nn.Linear(6, 5), _floats(4, 6)),
        Case("Linear 4-D", lambda: nn.Linear(6, 5), _floats(2, 4, 6)),
        Case("Linear sequence-first", lambda: nn.Linear(6, 5), _floats(3, 6), seq_first=True),
        _conv_case("Conv1d", 1, 9, kernel_size=3),
        _conv_case(
            "Conv1d stride 2 padding 1 dilation 2",
            1,
            11,
            kernel_size=3,
            stride=2,
            padding=1,
            dilation=2,
        ),  # fmt: skip
        _conv_case("Conv1d groups 2", 1, 9, kernel_size=3, groups=2),
        _conv_case("Conv1d padding 'same'", 1, 9, kernel_size=3, padding="same"),
        _conv_case(
            "Conv1d padding_mode reflect", 1, 9, kernel_size=3, padding=1, padding_mode="reflect"
        ),  # fmt: skip
        _conv_case("Conv2d", 2, 6, kernel_size=3),
        _conv_case("Conv2d stride 2 padding 1", 2, 7, kernel_size=3, stride=2, padding=1),
        _conv_case("Conv2d dilation 2", 2, 7, kernel_size=2, dilation=2),
        _conv_case("Conv2d groups 2", 2, 6, kernel_size=3, groups=2),
        _conv_case("Conv2d depthwise (groups 4)", 2, 6, kernel_size=3, groups=4, padding=1),
        _conv_case("Conv2d padding 'valid'", 2, 6, kernel_size=3, padding="valid"),
        _conv_case("Conv2d padding 'same'", 2, 6, kernel_size=3, padding="same"),
        _conv_case(
            "Conv2d padding_mode reflect", 2, 6, kernel_size=3, padding=1, padding_mode="reflect"
        ),  # fmt: skip
        _conv_case(
            "Conv2d padding_mode circular", 2, 6, kernel_size=3, padding=1, padding_mode="circular"
        ),  # fmt: skip
        _conv_case(
            "Conv2d padding_mode replicate",
            2,
            6,
            kernel_size=3,
            padding=1,
            padding_mode="replicate",
        ),  # fmt: skip
        _conv_case("Conv2d no bias", 2, 6, kernel_size=3, bias=False),
        _conv_case("Conv3d", 3, 4, kernel_size=2),
        _conv_case(
            "Conv3d stride 2 padding 1 groups 2", 3, 5, kernel_size=3, stride=2, padding=1, groups=2
        ),  # fmt: skip
        Case("Embedding 2-D", lambda: nn.Embedding(9, 4), _ids(9)),
        Case("Embedding 3-D", lambda: nn.Embedding(9, 4), _ids(9, 5)),
        Case("Embedding 4-D", lambda: nn.Embedding(9, 4), _ids(9, 2, 3)),
        Case("Embedding padding_idx", lambda: nn.Embedding(9, 4, padding_idx=0), _ids(9, 6)),
        Case(
            "Embedding scale_grad_by_freq",
            lambda: nn.Embedding(5, 4, scale_grad_by_freq=True),
            _ids(5, 6),
        ),  # fmt: skip
        Case(
            "Embedding max_norm",
            lambda: nn.Embedding(9, 4, max_norm=1.0),
            _ids(9, 5),
            never_private=True,
        ),  # fmt: skip
        Case("Embedding sparse", lambda: nn.Embedding(9, 4, sparse=True), _ids(9, 5)),
        Case("EmbeddingBag sum", lambda: nn.EmbeddingBag(5, 4, mode="sum"), _ids(5, 6)),
        Case("EmbeddingBag mean", lambda: nn.EmbeddingBag(5, 4, mode="mean"), _ids(5, 6)),
        Case("EmbeddingBag max", lambda: nn.EmbeddingBag(5, 4, mode="max"), _ids(5, 6)),
        Case("GroupNorm", lambda: nn.GroupNorm(2, 4), _floats(4, 5)),
        Case("GroupNorm 2-D", lambda: nn.GroupNorm(2, 4), _floats(4, 3, 3)),
        Case("InstanceNorm1d", lambda: nn.InstanceNorm1d(4, affine=True), _floats(4, 6)),
        Case("InstanceNorm2d", lambda: nn.InstanceNorm2d(4, affine=True), _floats(4, 3, 3)),
        Case("InstanceNorm3d", lambda: nn.InstanceNorm3d(4, affine=True), _floats(4, 2, 2, 3)),
        Case("LayerNorm", lambda: nn.LayerNorm(6), _floats(4, 6)),
        Case("LayerNorm 2-D shape", lambda: nn.LayerNorm((4, 6)), _floats(4, 6)),
        Case("LayerNorm bias=False", lambda: nn.LayerNorm(6, bias=False), _floats(4, 6)),
        Case("RMSNorm", lambda: nn.RMSNorm(6), _floats(4, 6)),
        Case("DPLSTM", lambda: DPLSTM(4, 5, batch_first=True), _floats(3, 4)),
        Case(
            "DPLSTM 2 layers bidirectional",
            lambda: DPLSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True),
            _floats(3, 4),
        ),  # fmt: skip
        Case("DPGRU", lambda: DPGRU(4, 5, batch_first=True), _floats(3, 4)),
        Case("DPRNN", lambda: DPRNN(4, 5, batch_first=True), _floats(3, 4)),
        Case("DPLSTM sequence-first", lambda: DPLSTM(4, 5), _floats(3, 4), seq_first=True),
        Case(
            "DPMultiheadAttention batch-first",
            lambda: Attention(DPMultiheadAttention(6, 2, batch_first=True)),
            _floats(4, 6),
        ),  # fmt: skip
        Case(
            "DPMultiheadAttention sequence-first",
            lambda: Attention(DPMultiheadAttention(6, 2)),
            _floats(4, 6),
            seq_first=True,
        ),  # fmt: skip
        Case(
            "DPMultiheadAttention add_bias_kv",
            lambda: Attention(DPMultiheadAttention(6, 2, add_bias_kv=True, batch_first=True)),
            _floats(4, 6),
        ),  # fmt: skip
        Case("SequenceBias", lambda: SequenceBias(6, batch_first=True), _floats(4, 6)),
        Case(
            "SequenceBias sequence-first", lambda: SequenceBias(6), _floats(4, 6), seq_first=True
        ),  # fmt: skip
        Case(
            "nn.MultiheadAttention",
            lambda: Attention(nn.MultiheadAttention(6, 2, batch_first=True)),
            _floats(4, 6),
        ),  # fmt: skip
        Case("nn.LSTM", lambda: nn.LSTM(4, 5, batch_first=True), _floats(3, 4)),
        Case("nn.GRU", lambda: nn.GRU(4, 5, batch_first=True), _floats(3, 4)),
        Case("tied embedding and head", TiedHead, _ids(11, 5)),
        Case("two Linears sharing a weight", SharedLinears, _floats(3, 5)),
        Case("one Linear called twice", CalledTwice, _floats(3, 5)),
        Case("weight used through F.linear", FunctionalUse, _ids(11, 5)),
        Case("partly frozen", PartlyFrozen, _floats(5)),
        Case(
            "InstanceNorm2d track_running_stats",
            lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
            _floats(4, 3, 3),
            never_private=True,
        ),  # fmt: skip
        Case("BatchNorm1d", lambda: nn.BatchNorm1d(4), _floats(4, 5), never_private=True),
    ]
    return cases


CASES = _cases()

ENGINES = ("auto", "bk", "hooks", "ghost", "vmap")
CLIPPING = {
    "fixed": FixedClipping(max_grad_norm=0.3),
    "automatic": AutomaticClipping(max_grad_norm=0.3),
    "per_layer": PerLayerClipping(max_grad_norm=0.3),
}


def cell(case: Case, engine: str, clipping) -> dict:
    """One cell of the conformance table: "exact" (the engine selection accepts the engine and
    it then matches the brute force on an unseen batch too), "refused" (with the message), or
    CRASH / WRONG, which must never happen."""
    model = case.model()
    check = SelfCheck(model, classification_losses, case.batch(5, seed=0), clipping).run
    try:
        chosen, _ = select_engine(model, engine, clipping.per_layer, check)
    except PrivacyConfigError as err:
        return {"outcome": "refused", "ran": "", "detail": str(err)}
    except Exception as err:  # noqa: BLE001 - a crash is a failed cell
        return {"outcome": "CRASH", "ran": "", "detail": f"{type(err).__name__}: {err}"}
    unseen = SelfCheck(model, classification_losses, case.batch(7, seed=1), clipping).run(chosen)
    if unseen.passed:
        return {"outcome": "exact", "ran": chosen, "detail": f"{unseen.max_rel_error:.1e}"}
    return {"outcome": "WRONG", "ran": chosen, "detail": unseen.reason()}
