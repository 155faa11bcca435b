"""The ``privacy`` and ``clipping`` config groups as objects (built by ``_target_``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dpresearch.privacy.accounting import ACCOUNTANTS

ENGINE_CHOICES = ("auto", "hooks", "ghost", "bk", "vmap")
RANDOMNESS = ("seeded", "secure")
UNITS = ("example", "user")
EXAMPLES_PER_USER = 8  # privacy.unit=user's default bound on a user's examples per step
MAX_NOISE_MULTIPLIER = 1e6


class PrivacyConfigError(ValueError):
    """A privacy configuration that cannot be honoured; the message says what to change."""


@dataclass
class DPSpec:
    """Train with DP-SGD. Give exactly one of ``target_epsilon`` and ``noise_multiplier``."""

    target_epsilon: float | None = 3.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    accountant: str = "prv"
    noise_seed: int | None = None  # None: derived from the run's seed
    # What the guarantee rests on: the noise and the batch sampling. ``seeded``: both from the
    # run's seed (reproducible; a published seed voids the guarantee). ``secure``: both from
    # the OS's cryptographic generator, never recorded (not reproducible).
    randomness: str = "seeded"
    secure_rng: bool | None = None  # replaced by ``randomness``; set, it is refused by name
    # Augmentation multiplicity (De et al. 2022): each sampled example is augmented K times and
    # its gradient averaged over the K views BEFORE clipping: one unit, one clipped
    # contribution, the accountant unchanged (dpresearch.privacy.units).
    augmentations: int = 1
    # The privacy unit: ``example`` (one example in or out) or ``user`` (all of one user's
    # examples): users are sampled, each contributes up to ``examples_per_user`` examples,
    # clipped together once, and epsilon is user-level.
    unit: str = "example"
    examples_per_user: int | None = None  # null: 8 under privacy.unit=user

    enabled = True

    def __post_init__(self) -> None:
        if self.secure_rng is not None:
            raise PrivacyConfigError(
                f"privacy.secure_rng={self.secure_rng} was replaced by privacy.randomness, which "
                "covers the batch sampling as well as the noise: use privacy.randomness=secure "
                "(or seeded)"
            )
        if self.randomness not in RANDOMNESS:
            raise PrivacyConfigError(
                f"privacy.randomness={self.randomness!r} is not one of {list(RANDOMNESS)}"
            )
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyConfigError(
                f"privacy.accountant={self.accountant!r} is not one of {list(ACCOUNTANTS)}"
            )
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise PrivacyConfigError(
                "set exactly one of privacy.target_epsilon and privacy.noise_multiplier "
                f"(got {self.target_epsilon} and {self.noise_multiplier}); e.g. "
                "privacy.noise_multiplier=1.0 privacy.target_epsilon=null"
            )
        if self.target_epsilon is not None and not (
            self.target_epsilon > 0 and math.isfinite(self.target_epsilon)
        ):
            raise PrivacyConfigError(
                f"privacy.target_epsilon must be a positive finite number, got "
                f"{self.target_epsilon}; for training without privacy use privacy=none"
            )
        if self.noise_multiplier is not None and not (
            isinstance(self.noise_multiplier, (int, float))
            and 0 <= self.noise_multiplier <= MAX_NOISE_MULTIPLIER
        ):
            raise PrivacyConfigError(
                f"privacy.noise_multiplier must be a number in [0, {MAX_NOISE_MULTIPLIER:g}], "
                f"got {self.noise_multiplier}: noise beyond a million times the clipping bound "
                "drowns every gradient (and overflows float32 in the update); infinite noise "
                "would release nothing"
            )
        if not (0 < self.delta < 1):
            raise PrivacyConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if self.unit not in UNITS:
            raise PrivacyConfigError(f"privacy.unit={self.unit!r} is not one of {list(UNITS)}")
        if self.unit == "example" and self.examples_per_user is not None:
            raise PrivacyConfigError(
                f"privacy.examples_per_user={self.examples_per_user} bounds a user's examples "
                "per step, but privacy.unit=example has no users: set privacy.unit=user, or "
                "leave examples_per_user null"
            )
        if self.unit == "user" and self.examples_per_user is None:
            self.examples_per_user = EXAMPLES_PER_USER
        if self.unit == "user" and not (
            isinstance(self.examples_per_user, int) and self.examples_per_user >= 1
        ):
            raise PrivacyConfigError(
                "privacy.examples_per_user must be an integer >= 1 (the most examples of one "
                f"user in a step), got {self.examples_per_user!r}"
            )
        if not (isinstance(self.augmentations, int) and self.augmentations >= 1):
            raise PrivacyConfigError(
                f"privacy.augmentations must be an integer >= 1 (views per example, 1: no "
                f"multiplicity), got {self.augmentations!r}"
            )

    def sampler_seed(self, seed: int) -> int | None:
        """The sampler's seed, or None: a secret key drawn at training time."""
        return None if self.randomness == "secure" else seed

    def check_dataset(self, num_train: int) -> None:
        if self.delta >= 1.0 / num_train:
            raise PrivacyConfigError(
                f"privacy.delta={self.delta:g} is >= 1/N = {1.0 / num_train:.3g} for the "
                f"{num_train} training examples: such a delta allows publishing an example "
                f"outright; set privacy.delta below {1.0 / num_train:.3g} (e.g. 1/(10 N))"
            )


@dataclass
class NoPrivacy:
    """Train without privacy: same data, model, sampler and steps, for comparison."""

    enabled = False
    randomness = "seeded"
    augmentations = 1
    unit = "example"

    def sampler_seed(self, seed: int) -> int:
        return seed


@dataclass
class Clipping:
    """What every clipping function shares: the bound C on each example's contribution, the
    engine that computes the clipped sum, and its self-check. Subclasses give ``factors``."""

    max_grad_norm: float = 1.0
    engine: str = "auto"  # the fastest of bk, hooks, vmap that passes the self-check
    # Before training, prove the engine on synthetic examples against a brute-force loop over
    # single examples (dpresearch.privacy.self_check); false skips it, and the records say so.
    self_check: bool = True

    name = "clipping"
    per_layer = False  # factors from each example's total norm, one per example

    def factors(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-example scale factors from per-example gradient norms (each example's
        contribution must have norm at most C: the noise is calibrated to it)."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        if not isinstance(self.max_grad_norm, (int, float)) or not (
            self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)
        ):
            raise PrivacyConfigError(
                f"clipping.max_grad_norm must be a positive number, got {self.max_grad_norm}"
            )
        if not isinstance(self.self_check, bool):
            raise PrivacyConfigError(
                f"clipping.self_check must be true or false, got {self.self_check!r}"
            )
        if self.engine not in ENGINE_CHOICES:
            raise PrivacyConfigError(
                f"clipping.engine={self.engine!r} is not available; choose one of "
                f"{list(ENGINE_CHOICES)}"
            )


@dataclass
class FixedClipping(Clipping):
    """Flat clipping: each example's gradient is scaled by min(1, C / ||g_i||)."""

    name = "fixed"

    def factors(self, norms: torch.Tensor) -> torch.Tensor:
        return (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


@dataclass
class AutomaticClipping(Clipping):
    """Automatic clipping, AUTO-S (Bu et al. 2023): g_i * C / (||g_i|| + gamma).

    Every example's contribution has norm below C, so the noise is still sigma*C; C only
    rescales the update (absorbed by the learning rate), so it need not be tuned.
    """

    gamma: float = 0.01

    name = "automatic"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.gamma, (int, float)) and self.gamma > 0):
            raise PrivacyConfigError(f"clipping.gamma must be > 0, got {self.gamma}")

    def factors(self, norms: torch.Tensor) -> torch.Tensor:
        return self.max_grad_norm / (norms + self.gamma)


@dataclass
class PerLayerClipping(Clipping):
    """Per-layer flat clipping: each trainable parameter tensor p of each example is clipped
    to C / sqrt(P) on its own (P tensors), so the example's whole gradient still has norm at
    most C and the noise stays sigma*C. Layers with small gradients keep them unscaled."""

    name = "per_layer"
    per_layer = True

    def factors(self, norms: torch.Tensor) -> torch.Tensor:
        """(N, P) per-example, per-parameter norms -> (N, P) factors."""
        threshold = self.max_grad_norm / math.sqrt(norms.shape[1])
        return (threshold / (norms + 1e-6)).clamp(max=1.0)


@dataclass
class AdaptiveClipping(FixedClipping):
    """Quantile-based adaptive clipping (Andrew et al., NeurIPS 2021): flat clipping whose
    threshold follows the ``target_quantile`` of the per-unit gradient norms. After each step,
    C <- C * exp(-learning_rate * (b - target_quantile)), where b is the NOISY fraction of
    units whose norm was at most C: (sum_i (1[||g_i|| <= C] - 1/2) + N(0, count_noise^2)) / E
    + 1/2, E the expected batch size. Each unit moves the centred count by at most 1/2, so
    the gradient sum (sensitivity C, noise sigma_g C) and the count (sensitivity 1/2, noise
    count_noise) are together one Gaussian mechanism of noise multiplier sigma, where
    sigma^-2 = sigma_g^-2 + (2 count_noise)^-2 (the paper's Thm. 1): the accountant composes
    sigma, and the gradient's noise is raised to sigma_g to pay for the count.

    ``max_grad_norm`` is the initial threshold. ``count_noise`` null: E / 20, the paper's
    choice. Flat clipping only: automatic clipping has no threshold to adapt (C only scales
    its update) and per-layer clipping would need one quantile per layer."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float | None = None

    name = "adaptive"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.target_quantile, (int, float)) and 0 < self.target_quantile < 1):
            raise PrivacyConfigError(
                f"clipping.target_quantile must be in (0, 1), got {self.target_quantile!r}"
            )
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise PrivacyConfigError(
                f"clipping.learning_rate must be > 0, got {self.learning_rate!r}"
            )
        if self.count_noise is not None and not (
            isinstance(self.count_noise, (int, float)) and self.count_noise >= 0
        ):
            raise PrivacyConfigError(
                f"clipping.count_noise must be >= 0 or null, got {self.count_noise!r}"
            )
        self.initial = float(self.max_grad_norm)
        self.counting = False  # on while training: the self-check's calls do not count
        self._count: torch.Tensor | None = None

    def count_std(self, expected_batch_size: int) -> float:
        if self.count_noise is not None:
            return float(self.count_noise)
        return expected_batch_size / 20

    def gradient_multiplier(self, sigma: float, expected_batch_size: int) -> float:
        """sigma_g with sigma_g^-2 + (2 count_std)^-2 = sigma^-2 (0 when sigma is 0: no
        privacy is asked for, and the count is then not noised either)."""
        if sigma == 0:
            return 0.0
        count = self.count_std(expected_batch_size)
        if 2 * count <= sigma:
            raise PrivacyConfigError(
                f"clipping=adaptive: the count's noise {count:g} must exceed noise_multiplier / 2 "
                f"= {sigma / 2:g}, or it alone spends the whole budget; raise "
                "clipping.count_noise (or the expected batch size)"
            )
        return (sigma**-2 - (2 * count) ** -2) ** -0.5

    def factors(self, norms: torch.Tensor) -> torch.Tensor:
        """Flat clipping at the current C; while training, counts the units it leaves
        unclipped, centred (a unit of norm exactly 0, a padding row, counts 0)."""
        if self.counting:
            real = norms > 0
            unclipped = (real & (norms <= self.max_grad_norm)).sum() - 0.5 * real.sum()
            self._count = unclipped if self._count is None else self._count + unclipped
        return super().factors(norms)

    def take_count(self, device: torch.device) -> torch.Tensor:
        """This step's centred count of unclipped units (on this process), and reset it."""
        count = self._count if self._count is not None else torch.zeros(())
        self._count = None
        return count.to(device=device, dtype=torch.float64).reshape(1)

    def update(self, noised_count: float, expected_batch_size: int) -> float:
        """The paper's geometric step from the noised centred count; returns the new C."""
        unclipped = noised_count / expected_batch_size + 0.5
        self.max_grad_norm *= math.exp(-self.learning_rate * (unclipped - self.target_quantile))
        return self.max_grad_norm
