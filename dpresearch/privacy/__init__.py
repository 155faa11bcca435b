"""All of the DP machinery: accounting, clipping specs, engines, and the training strategy.

The rest of the package talks to it through ``make_plan``, ``choose_engine``,
``build_strategy`` and the ``PrivacyMetrics`` and ``PrivacyState`` callbacks.
"""

from dpresearch.privacy.accounting import (
    AccountingError,
    EpsilonResult,
    calibrate_noise,
    compute_epsilon,
)
from dpresearch.privacy.callback import PrivacyMetrics, PrivacyState
from dpresearch.privacy.plan import PrivacyPlan, build_strategy, choose_engine, make_plan
from dpresearch.privacy.spec import (
    Clipping,
    DPSpec,
    FixedClipping,
    NoPrivacy,
    PrivacyConfigError,
)
from dpresearch.privacy.strategy import (
    DPStepping,
    DPStrategy,
    PhysicalBatching,
    PhysicalBatchStrategy,
)

__all__ = [
    "AccountingError",
    "DPStepping",
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
    "choose_engine",
    "calibrate_noise",
    "compute_epsilon",
    "make_plan",
]
