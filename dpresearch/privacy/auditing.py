"""An empirical lower bound on epsilon from one training run (Steinke, Nasr, Jagielski 2023,
"Privacy Auditing with One (1) Training Run").

m canaries are each included independently with probability 1/2. After training, each gets a
score; the auditor guesses "included" for the k+ highest scores and "excluded" for the k-
lowest, and abstains on the rest. If the training is (epsilon, delta)-DP with respect to each
canary, the number of correct guesses out of r = k+ + k- is stochastically dominated by a
Binomial(r, e^eps / (1 + e^eps)), plus a term in delta (their Theorem 3 / Algorithm 2). The
lower bound is the largest epsilon that this test rejects at the chosen confidence.

Several guess counts may be tried; each is tested at (1 - confidence) / (number of counts)
(a union bound), so the reported bound holds at the stated confidence for all of them at once.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from scipy import stats
from torch.nn import functional as F

from dpresearch.data.base import TensorSet, take
from dpresearch.privacy.step import StepHook

CANARIES = "canaries.json"  # what an audited run leaves for the auditor: inclusion and scores


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under (epsilon, delta)-DP, m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(beta, 1.0)
    # alpha = max over i = 1..v of P[v - i <= Binomial(r, q) < v] / i
    i = np.arange(1, v + 1)
    alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest epsilon whose p-value for v correct out of r is below ``significance``
    (0 when even epsilon 0 cannot be rejected)."""
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance:
        low, high = high, 2 * high
        if high > 1e3:
            return low
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < significance else (low, mid)
    return low


@dataclass
class AuditResult:
    epsilon_lower_bound: float
    guesses: int  # r of the best count
    correct: int  # v of the best count
    canaries: int  # m
    included: int
    confidence: float
    delta: float
    per_count: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def audit(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    guess_fractions: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2),
) -> AuditResult:
    """Guess the top and bottom ``fraction * m / 2`` scores for each fraction (half "in", half
    "out"), count the correct guesses, and return the best lower bound (union bound over the
    fractions)."""
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0 or len(included) != m:
        raise ValueError(f"{m} scores but {len(included)} inclusion flags")
    significance = (1 - confidence) / len(guess_fractions)
    order = np.argsort(-scores, kind="stable")  # highest score first
    rows = []
    for fraction in guess_fractions:
        k = max(1, int(round(fraction * m / 2)))
        top, bottom = order[:k], order[m - k :]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        eps = epsilon_lower_bound(m, 2 * k, correct, delta, significance)
        rows.append({"guesses": 2 * k, "correct": correct, "epsilon_lower_bound": eps})
    best = max(rows, key=lambda r: r["epsilon_lower_bound"])
    return AuditResult(best["epsilon_lower_bound"], best["guesses"], best["correct"], m,
                       int(included.sum()), confidence, delta, rows)  # fmt: skip


class Canaries(StepHook, pl.Callback):
    """What an audit adds to a run, as an entry of its ``callbacks`` group: canaries in the
    data (``on_train_set``), in each DP step (a ``StepHook``: ``on_engine``,
    ``on_clipped_sum``, ``on_release``), and scores after training (``finish``, written to
    ``canaries.json`` in the run folder for the auditor).
    Each is included independently with probability 1/2 (``included``); ``scores`` are higher
    for canaries that look included.

    ``sabotage`` breaks the mechanism on purpose, to show the audit catches it: ``noise`` adds
    no noise while the accountant still counts sigma; ``clipping`` leaves gradients unclipped.
    """

    SABOTAGE = ("none", "noise", "clipping")

    def __init__(self, canaries: int, seed: int, sabotage: str = "none"):
        if canaries < 2:
            raise ValueError(f"audit.canaries must be >= 2, got {canaries}")
        if sabotage not in self.SABOTAGE:
            raise ValueError(f"audit.sabotage={sabotage!r} is not one of {list(self.SABOTAGE)}")
        self.m, self.sabotage = canaries, sabotage
        self.noise_factor = 0.0 if sabotage == "noise" else 1.0
        self.generator = torch.Generator().manual_seed(seed)
        self.included = torch.rand(canaries, generator=self.generator) < 0.5
        self.scores = torch.zeros(canaries, dtype=torch.float64)
        self.steps = 0

    def on_train_set(self, datamodule) -> None:
        """Called once the DataModule has its splits, before the privacy plan."""

    def on_release(self, sums: list[torch.Tensor]) -> None:
        self.steps += 1

    def finish(self, module: torch.nn.Module) -> None:
        """The trained LightningModule, after the last step."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(pl_module)
        if trainer.is_global_zero:
            record = {"included": self.included.tolist(), "scores": self.scores.tolist(),
                      "steps": self.steps}  # fmt: skip
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
    noise of ``noise=banded_mf`` then covers it as it covers the examples. The auditor sees
    every step's noisy sum (all iterates: the strongest observer) and scores canary i by
    s_i * (sum over steps of that sum at c_i). The other examples' gradients at c_i only add
    noise to the scores.
    Sabotage ``clipping`` gives the canaries 50x the clipping threshold.
    """

    def __init__(self, canaries: int, seed: int, sabotage: str = "none"):
        super().__init__(canaries, seed, sabotage)
        self.signs = torch.randint(0, 2, (canaries,), generator=self.generator) * 2.0 - 1.0

    def on_engine(self, strategy) -> None:
        params = strategy.engine.params
        sample_rate, clip = strategy.sample_rate, strategy.max_grad_norm
        total = sum(p.numel() for p in params)
        if self.m > total:
            raise ValueError(
                f"audit.canaries={self.m} exceeds the {total} trainable parameters (one "
                "coordinate each): lower audit.canaries"
            )
        self.coords = torch.randperm(total, generator=self.generator)[: self.m]
        self.sizes = [p.numel() for p in params]
        self.sample_rate = sample_rate
        self.magnitude = clip * (50.0 if self.sabotage == "clipping" else 1.0)
        self.strategy = strategy  # its step counter: which residue class joins this step
        self.period = strategy.participation_period
        self.residues = None
        if self.period > 1:
            self.residues = torch.randint(0, self.period, (self.m,), generator=self.generator)

    def on_clipped_sum(self, sums: list[torch.Tensor]) -> None:
        joined = self.included & (torch.rand(self.m, generator=self.generator) < self.sample_rate)
        if self.residues is not None:
            joined &= self.residues == self.strategy.dp_steps % self.period
        flat = torch.zeros(sum(self.sizes), dtype=sums[0].dtype)
        flat[self.coords[joined]] = self.magnitude * self.signs[joined].to(flat.dtype)
        for s, part in zip(sums, flat.split(self.sizes)):
            s.add_(part.view_as(s).to(s.device))

    def on_release(self, sums: list[torch.Tensor]) -> None:
        flat = torch.cat([s.detach().reshape(-1).cpu() for s in sums]).double()
        self.scores += self.signs.double() * flat[self.coords]
        super().on_release(sums)


class InputCanaries(Canaries):
    """Black-box canaries: m training examples given a wrong label (hard to learn without
    memorizing them). They leave the training set; the included half comes back in, and each
    is then Poisson-sampled like any example. After training, canary i scores minus its loss
    under its wrong label: the auditor needs only the final model's outputs. Much weaker than
    gradient canaries, but it audits the whole pipeline, data to model.

    Sabotage ``clipping`` switches per-example clipping off for every example.
    """

    def on_train_set(self, datamodule) -> None:
        train = datamodule.train_set
        n, classes = len(train), datamodule.num_classes
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

    def on_engine(self, strategy) -> None:
        if self.sabotage == "clipping":
            strategy.engine.factors = torch.ones_like  # every example keeps its whole gradient

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
        self.scores = -torch.cat(losses).double()
        module.train(was_training)


def _cat(a, b):
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])
