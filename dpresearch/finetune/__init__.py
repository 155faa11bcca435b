"""Fine-tuning scopes: which parameters are trained (the ``finetune`` config group)."""

from dpresearch.finetune.scopes import Full, Scope, parameter_counts

__all__ = ["Full", "Scope", "parameter_counts"]
