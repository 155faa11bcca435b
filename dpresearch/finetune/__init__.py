"""Fine-tuning scopes: which parameters are trained (the ``finetune`` config group)."""

from dpresearch.finetune.scopes import (
    BiasOnly,
    Full,
    HeadOnly,
    LoRA,
    Scope,
    find_head,
    parameter_counts,
)

__all__ = ["BiasOnly", "Full", "HeadOnly", "LoRA", "Scope", "find_head", "parameter_counts"]
