"""The ``extras`` config group: conveniences applied before a run (lightning-hydra-template's
``extras``): silencing the warnings known to be harmless here, and printing the config."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

# (category, message regex) of warnings that say nothing about the user's run.
HARMLESS_WARNINGS = (
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates (internal to Lightning).
    (None, r".*isinstance\(treespec, LeafSpec\)` is deprecated"),
    # A machine with SLURM installed, running outside srun (a login node, a test).
    (None, r"The `srun` command is available on your system but is not used"),
)
# Lightning INFO lines that advertise other products.
HARMLESS_LOG_PREFIXES = ("💡 Tip:",)
LIGHTNING_LOGGERS = (  # whichever Lightning package set rank_zero's logger last
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(HARMLESS_LOG_PREFIXES)


@dataclass
class Extras:
    ignore_warnings: bool = True
    print_config: bool = True

    def apply(self) -> None:
        if not self.ignore_warnings:
            return
        for category, message in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category or Warning)
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _DropTips) for f in logger.filters):
                logger.addFilter(_DropTips())
