"""Canaries: what an audited run carries so that an auditor can bound its epsilon from below
(the bounds are in ``dpresearch.privacy.audit_bounds``).

m canaries are each included independently with probability 1/2. During training each gets a
score, higher when it looks included; ``canaries.json`` (in the run folder) keeps the
inclusion flags, the scores and which test reads which score.

- ``GradientCanaries`` (white-box, the noise-and-accountant check): gradients added to the
  clipped sum. The auditor sees every step's noisy sum (all iterates, Nasr et al. 2023).
- ``InputCanaries`` (black-box): mislabeled training examples, scored by the final model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from dpresearch.data.base import TensorSet, take
from dpresearch.privacy.conformance import NOT_COVERED, clipped_gradients
from dpresearch.privacy.step import StepHook

CANARIES = "canaries.json"  # what an audited run leaves for the auditor: inclusion and scores
MAX_GRADIENT_CANARIES = 50_000  # audit.canaries=null: one per trainable coordinate up to this


def step_likelihood_ratio(y: torch.Tensor, q: float, spread: torch.Tensor | float) -> torch.Tensor:
    """log of the likelihood ratio of one step's observation y (in units of C) under "joined
    with probability q" against "absent": log(1 - q + q exp((y - 1/2) / spread)), spread the
    noise variance in the same units."""
    return torch.logaddexp(
        torch.tensor(math.log1p(-q), dtype=y.dtype), math.log(q) + (y - 0.5) / spread
    )


def zero_scores(m: int) -> dict[str, torch.Tensor]:
    """The two white-box scores of m canaries, before any step."""
    return {name: torch.zeros(m, dtype=torch.float64) for name in ("sum", "likelihood_ratio")}


class Canaries(StepHook, pl.Callback):
    """What an audit adds to a run, as an entry of its ``callbacks`` group: canaries in the
    data (``on_train_set``), in each DP step (a ``StepHook``: ``on_engine``,
    ``on_clipped_sum``, ``on_release``), and scores after training (``finish``, written to
    ``canaries.json`` in the run folder for the auditor).
    Each is included independently with probability 1/2 (``included``); ``scores`` (one array
    per score name) are higher for canaries that look included; ``methods`` names the bound
    (``audit_bounds.METHODS``) and the score each reported bound uses.

    ``sabotage``: the bug injected into the run (``dpresearch.privacy.sabotage``, which does
    the injecting); canaries only read it where they are its target (gradient canaries at 50 C
    under ``clipping``).
    """

    methods: dict[str, tuple[str, str]] = {}

    def __init__(self, canaries: int | None, seed: int, sabotage: str = "none"):
        if canaries is not None and canaries < 2:
            raise ValueError(f"audit.canaries must be >= 2, got {canaries}")
        self.sabotage, self.seed = sabotage, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.scores: dict[str, torch.Tensor] = {}
        self.steps = 0
        if canaries is not None:
            self._draw(canaries)

    def _draw(self, canaries: int) -> None:
        """Which of the m canaries are included."""
        self.m = canaries
        self.included = torch.rand(canaries, generator=self.generator) < 0.5

    def on_train_set(self, datamodule) -> None:
        """Called once the DataModule has its splits, before the privacy plan."""

    def on_release(self, sums: list[torch.Tensor]) -> None:
        self.steps += 1

    def finish(self, module: torch.nn.Module) -> None:
        """The trained LightningModule, after the last step."""

    def checks(self) -> list[dict]:
        """Conformance checks these canaries make (``conformance.CheckResult`` fields)."""
        return []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(pl_module)
        if trainer.is_global_zero:
            record = {"private": False, "note": NOT_COVERED,
                      "included": self.included.tolist(), "steps": self.steps,
                      "scores": {k: v.tolist() for k, v in self.scores.items()},
                      "methods": self.methods, "checks": self.checks()}  # fmt: skip
            path = Path(trainer.default_root_dir) / CANARIES
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record) + "\n")
            os.replace(tmp, path)


class GradientCanaries(Canaries):
    """White-box canaries: m gradients that the DP strategy adds to its clipped sum.

    Canary i is a Dirac gradient, s_i * C * e_{c_i}: norm C (the clipping threshold, the
    largest an example may contribute) on one coordinate c_i of the trainable parameters, with
    a random sign s_i. Each canary is included with probability 1/2; an included canary joins
    each step with probability q, like an example under Poisson sampling, so the run's
    (q, sigma, steps) guarantee covers it. Under cyclic Poisson sampling (participation period
    b) each canary belongs to one residue class and joins only the steps t = its residue
    mod b, each with the sampler's rate, as an example of its group would; the correlated
    noise of ``noise=banded_mf`` then covers it as it covers the examples.

    The auditor is the strongest the DP guarantee allows: it sees every step's noisy sum (all
    iterates) and knows every other example, hence the step's clipped sum of the others at
    c_i (recorded before the canaries join; their sampling is independent of the canaries').
    Its observation of canary i at step t, in units of the step's C, is
    y = s_i (released - others) / C = (1 if it joined) + sigma * noise. Two scores:
    ``sum`` (sum of y over steps: what the summed updates show) and ``likelihood_ratio``
    (sum over steps of log(1 - q + q exp((y - 1/2) / sigma^2)): the Neyman-Pearson test of
    each step's subsampled Gaussian, Nasr et al. 2023's white-box all-iterates auditor).
    Methods: ``steinke`` and ``fdp`` on ``sum``, ``all_iterates`` (f-DP) on the likelihood
    ratio. ``canaries=None``: one per trainable coordinate, up to MAX_GRADIENT_CANARIES.
    Sabotage ``clipping`` gives the canaries 50x the clipping threshold.
    """

    methods = {"steinke": ("steinke", "sum"), "fdp": ("fdp", "sum"),
               "all_iterates": ("fdp", "likelihood_ratio")}  # fmt: skip

    def on_engine(self, strategy) -> None:
        params = strategy.engine.params
        total = sum(p.numel() for p in params)
        if getattr(self, "m", None) is None:
            self._draw(min(total, MAX_GRADIENT_CANARIES))
        if self.m > total:
            raise ValueError(
                f"audit.canaries={self.m} exceeds the {total} trainable parameters (one "
                "coordinate each): lower audit.canaries"
            )
        self.signs = torch.randint(0, 2, (self.m,), generator=self.generator) * 2.0 - 1.0
        self.coords = torch.randperm(total, generator=self.generator)[: self.m]
        self.sizes = [p.numel() for p in params]
        self.sample_rate = strategy.sample_rate
        self.strategy = strategy  # its step counter (residue class), C and sigma of each step
        self.period = strategy.participation_period
        self.residues = None
        if self.period > 1:
            self.residues = torch.randint(0, self.period, (self.m,), generator=self.generator)
        self.scores = zero_scores(self.m)

    def _flat(self, sums: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([s.detach().reshape(-1).cpu() for s in sums]).double()

    def on_clipped_sum(self, sums: list[torch.Tensor]) -> None:
        self.others = self._flat(sums)[self.coords]  # the other examples' clipped sum at c_i
        self.eligible = torch.ones(self.m, dtype=torch.bool)
        if self.residues is not None:
            self.eligible = self.residues == self.strategy.dp_steps % self.period
        joined = self.included & self.eligible
        joined &= torch.rand(self.m, generator=self.generator) < self.sample_rate
        self.clip = self.strategy.clip_norm
        magnitude = self.clip * (50.0 if self.sabotage == "clipping" else 1.0)
        flat = torch.zeros(sum(self.sizes), dtype=sums[0].dtype)
        flat[self.coords[joined]] = magnitude * self.signs[joined].to(flat.dtype)
        for s, part in zip(sums, flat.split(self.sizes)):
            s.add_(part.view_as(s).to(s.device))

    def on_release(self, sums: list[torch.Tensor]) -> None:
        y = self.signs.double() * (self._flat(sums)[self.coords] - self.others) / self.clip
        y = torch.where(self.eligible, y, 0.0)
        sigma = self.strategy.gradient_noise_multiplier
        q = self.sample_rate
        if sigma > 0 and 0 < q < 1:
            lr = step_likelihood_ratio(y, q, sigma**2)
        else:  # no noise claimed, or every step: the sum is the likelihood ratio's order
            lr = y.clone()
        self.scores["sum"] += y
        self.scores["likelihood_ratio"] += torch.where(self.eligible, lr, 0.0)
        super().on_release(sums)


class InputCanaries(Canaries):
    """Black-box canaries: m training examples given a wrong label (hard to learn without
    memorizing them). They leave the training set; the included half comes back in, and each
    is then Poisson-sampled like any example. After training, canary i scores minus its loss
    under its wrong label: the auditor needs only the final model's outputs. Much weaker than
    gradient canaries, but it audits the whole pipeline, data to model.

    """

    methods = {"steinke": ("steinke", "loss"), "fdp": ("fdp", "loss")}

    def on_train_set(self, datamodule) -> None:
        train = datamodule.train_set
        n, classes = len(train), datamodule.num_classes
        if getattr(self, "m", None) is None:
            raise ValueError(
                f"audit.kind=input needs audit.canaries set (at most half of the {n} "
                "training examples)"
            )
        if self.m > n // 2:
            raise ValueError(
                f"audit.canaries={self.m} is more than half of the {n} training examples: "
                "lower audit.canaries"
            )
        chosen = torch.randperm(n, generator=self.generator)[: self.m]
        keep = torch.ones(n, dtype=torch.bool)
        keep[chosen] = False
        shift = torch.randint(1, classes, (self.m,), generator=self.generator)
        x, y = take(train.x, chosen), (train.y[chosen] + shift) % classes  # a wrong label
        self.canary_set = TensorSet(x, y, train.transform)
        inside = self.included.nonzero(as_tuple=True)[0]
        datamodule.train_set = TensorSet(
            _cat(take(train.x, keep.nonzero(as_tuple=True)[0]), take(x, inside)),
            torch.cat([train.y[keep], y[inside]]),
            train.transform,
        )
        if train.users is not None:  # user-level DP: each canary is a user of its own
            fresh = int(train.users.max()) + 1 + torch.arange(len(inside))
            datamodule.train_set.users = torch.cat([train.users[keep], fresh])

    @torch.no_grad()
    def finish(self, module: torch.nn.Module) -> None:
        was_training = module.training
        module.eval()
        losses = []
        for start in range(0, self.m, 256):
            x, y = self.canary_set.__getitems__(list(range(start, min(start + 256, self.m))))
            x = {k: v.to(module.device) for k, v in x.items()} if isinstance(x, dict) else x
            logits = module(x.to(module.device) if isinstance(x, torch.Tensor) else x)
            losses.append(F.cross_entropy(logits, y.to(module.device), reduction="none").cpu())
        self.scores = {"loss": -torch.cat(losses).double()}
        module.train(was_training)


def _cat(a, b):
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


class ExampleCanaries(Canaries):
    """Canary EXAMPLES through the run's own sampler and engine: m crafted training examples
    (a random training image with its pixels shuffled, under a random label: an input no
    other example resembles, with a gradient far above C). The
    included half joins the training set; from there the run's sampler draws each like any
    example and its engine clips it, so a sampling, clipping or scope bug reaches them.

    The auditor is white-box: it sees every step's released noisy sum and computes by plain
    autograd (torch.func, not the engine) each canary's gradient clipped as the run claims,
    g_i. Its observation of canary i, y = <released, g_i> / |g_i|^2, is 1 when the canary
    joined, 0 when not, plus the other examples' and canaries' overlap with g_i and noise of
    std sigma C / |g_i|. Scores and methods as for gradient canaries (``sum``,
    ``likelihood_ratio``). The overlap is what limits these bounds: at the start of training
    a small CNN's gradients are dominated by the label (two canaries of one label have cosine
    ~0.95), so canaries are near-duplicates in gradient space and one run tells them apart
    poorly; the tight bound is the gradient canaries'.

    What the canaries add to the checks: examples the run's own sampler draws and engine
    clips whose gradients are far above C in every layer, so a clipping bug on the real path
    is large on every batch holding one (``ConformanceChecks``' clipping check compares the
    engine with a brute force on those batches). Refused under user-level units (a canary
    is one example).
    """

    methods = GradientCanaries.methods

    def __init__(self, canaries: int | None, seed: int, sabotage: str = "none"):
        super().__init__(500 if canaries is None else canaries, seed, sabotage)

    def on_train_set(self, datamodule) -> None:
        train = datamodule.train_set
        if isinstance(train.x, dict) or train.users is not None:
            raise ValueError(
                "audit.kind=example crafts image-like inputs, one example per canary: use it "
                "on a tensor dataset at privacy.unit=example (or audit.kind=gradient)"
            )
        n, classes = len(train), datamodule.num_classes
        source = take(train.x, torch.randint(0, n, (self.m,), generator=self.generator))
        flat = source.reshape(self.m, -1)
        order = torch.argsort(torch.rand(flat.shape, generator=self.generator), dim=1)
        x = torch.gather(flat, 1, order).reshape(source.shape)  # pixels shuffled
        y = torch.randint(0, classes, (self.m,), generator=self.generator)
        self.canary_set = TensorSet(x, y, train.transform)
        inside = self.included.nonzero(as_tuple=True)[0]
        datamodule.train_set = TensorSet(
            _cat(train.x, take(x, inside)), torch.cat([train.y, y[inside]]), train.transform
        )
        self.inputs, self.labels = self.canary_set.__getitems__(list(range(self.m)))

    def on_engine(self, strategy) -> None:
        self.strategy = strategy
        self.scores = zero_scores(self.m)

    def on_release(self, sums: list[torch.Tensor]) -> None:
        released = torch.cat([s.detach().reshape(-1) for s in sums]).double()
        batch = (self.inputs.to(released.device), self.labels.to(released.device))
        with torch.no_grad():
            g = clipped_gradients(self.strategy, batch).double()
        sq = g.square().sum(1)
        valid = (sq > 0).cpu()
        obs = ((g @ released) / sq.clamp(min=1e-30)).cpu()
        scale = (self.strategy.gradient_noise_multiplier * self.strategy.clip_norm
                 / sq.sqrt().clamp(min=1e-30)).cpu()  # fmt: skip
        valid &= scale > 0
        q = self.strategy.sample_rate
        lr = step_likelihood_ratio(obs, q, scale.clamp(min=1e-30).square())
        self.scores["sum"] += torch.where(valid, obs, 0.0)
        self.scores["likelihood_ratio"] += torch.where(valid, lr, 0.0)
        super().on_release(sums)
