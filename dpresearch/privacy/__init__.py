"""All of the DP machinery: accounting, clipping specs, engines, and the training strategy.

The rest of the package talks to it through ``make_plan``, ``build_strategy`` and the
``PrivacyMetrics`` callback.
"""

from dpresearch.privacy.accounting import (
    AccountingError,
    EpsilonResult,
    calibrate_noise,
    compute_epsilon,
)
from dpresearch.privacy.callback import PrivacyMetrics, PrivacyState
from dpresearch.privacy.plan import PrivacyPlan, build_strategy, make_plan
from dpresearch.privacy.spec import (
    Clipping,
    DPSpec,
    FixedClipping,
    NoPrivacy,
    PrivacyConfigError,
)
from dpresearch.privacy.strategy import DPSGD, DPStrategy, PhysicalBatching, PhysicalBatchStrategy

__all__ = [
    "AccountingError",
    "DPSGD",
    "DPSpec",
    "DPStrategy",
    "EpsilonResult",
    "Clipping",
    "FixedClipping",
    "NoPrivacy",
    "PhysicalBatchStrategy",
    "PhysicalBatching",
    "PrivacyConfigError",
    "PrivacyMetrics",
    "PrivacyState",
    "PrivacyPlan",
    "build_strategy",
    "calibrate_noise",
    "compute_epsilon",
    "make_plan",
]
