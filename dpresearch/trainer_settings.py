"""The ``trainer`` group's Lightning settings that change what a run trains or releases.

Each is honoured (the noise is calibrated for the steps Lightning will really run) or refused
before anything runs, with the key, the value and what to change. Lightning would otherwise
accept them and quietly do something else: run one process for ``devices=2``, calibrate sigma
for epochs that ``max_steps`` cuts short, or train in a precision whose per-example norms and
noise are not the ones the accountant assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

# Precisions whose clipping and noise the accountant covers. Under bf16-mixed (autocast) the
# engines take per-example norms and the clipped sum in float32 from the same tensors, and
# the parameters, their gradients and the noise stay float32. *-true precisions keep the
# parameters and noise in half precision; 16-mixed scales the loss with a GradScaler whose
# unscaling and skipped steps happen outside the DP step: both refused.
PRIVATE_PRECISIONS = {"32", "32-true", "64", "64-true", "bf16-mixed"}
MIXED_PRECISIONS = {"bf16-mixed", "16-mixed"}


def _several(value) -> bool:
    """Whether a devices / num_nodes value asks for more than one."""
    if value is None or str(value) == "auto":
        return False
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
        return len(value) > 1
    text = str(value).strip()
    if "," in text:  # "0,1": a list of device ids
        return len([t for t in text.split(",") if t.strip()]) > 1
    return text == "-1" or (text.isdigit() and int(text) > 1)


def check_trainer(node: DictConfig, private: bool, ddp: bool) -> None:
    """Refuse Trainer settings the harness cannot honour (before data or models are built)."""
    if node.get("barebones", False):
        raise ValueError(
            "trainer.barebones=true switches off the logging, callbacks and checkpoints that "
            "the run's records (metrics.jsonl, summary.json, epsilon) are written by; remove it"
        )
    if not ddp:
        for key in ("devices", "num_nodes"):
            if _several(node.get(key)):
                raise ValueError(
                    f"trainer.{key}={node.get(key)} with a single-device trainer would still "
                    "train in one process: add trainer=ddp (trainer=ddp_cpu on CPUs) to use "
                    f"several, or set trainer.{key}=1"
                )
    if node.get("max_epochs") is None and node.get("max_steps", -1) in (None, -1):
        raise ValueError(
            "trainer.max_epochs=null needs trainer.max_steps=<steps> (+trainer.max_steps=N): "
            "the run's length decides the noise"
        )
    if not private:
        return
    precision = str(node.get("precision", "32-true"))
    if precision == "16-mixed":
        raise ValueError(
            "trainer.precision=16-mixed in a private run: its loss scaler (GradScaler) would "
            "unscale the noised gradient and skip steps outside the DP step; use "
            "trainer.precision=bf16-mixed (norms, clipped sum and noise in float32) or 32-true"
        )
    if precision not in PRIVATE_PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision} in a private run: parameters, clipped sums and "
            "noise in half precision are not the Gaussian mechanism the accountant counts; "
            "use trainer.precision=bf16-mixed (float32 norms, sums and noise) or 32-true"
        )
    if node.get("overfit_batches", 0):
        raise ValueError(
            f"trainer.overfit_batches={node.get('overfit_batches')} replays fixed batches, "
            "which is not the Poisson sampling the accountant assumes; remove it in private runs"
        )


def check_engine_precision(engine: str | None, precision: str) -> None:
    """The ghost engine's second backward pass recomputes each example's gradient through the
    half-precision graph, so its contribution is not the one whose norm was clipped: under
    mixed precision it could exceed C by the rounding. bk, hooks and vmap take norm and sum
    from the same float32 tensors."""
    if engine == "ghost" and str(precision) in MIXED_PRECISIONS:
        raise ValueError(
            f"clipping.engine=ghost with trainer.precision={precision}: its second backward "
            "pass re-rounds each example's gradient in half precision, so a clipped "
            "contribution can exceed clipping.max_grad_norm; use clipping.engine=bk (or hooks, "
            "vmap), or trainer.precision=32-true"
        )


@dataclass(frozen=True)
class RunLength:
    """How many optimizer steps Lightning will run: epochs of (limited) batches, cut by
    max_steps. ``debug``: fast_dev_run, which runs a step or so of everything."""

    epochs: int | None
    steps_per_epoch: int
    steps: int
    debug: bool = False


def run_length(node: DictConfig, batches_per_epoch: int, debug: bool = True) -> RunLength:
    """The steps Lightning's loops will take, as Lightning computes them (``debug=False``:
    as if fast_dev_run were off)."""
    per_epoch = batches_per_epoch
    limit = node.get("limit_train_batches")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
            raise ValueError(f"trainer.limit_train_batches must be > 0, got {limit}")
        if isinstance(limit, float) and limit <= 1.0:  # a fraction, as Lightning reads it
            per_epoch = int(per_epoch * limit)
        else:  # a count (an int, or an integral float above 1)
            per_epoch = min(per_epoch, int(limit))
        if per_epoch < 1:
            raise ValueError(
                f"trainer.limit_train_batches={limit} leaves no training step per epoch "
                f"({batches_per_epoch} batches); raise it"
            )
    fast = node.get("fast_dev_run", False) if debug else False
    if fast:
        n = 1 if fast is True else int(fast)
        return RunLength(1, min(per_epoch, n), min(per_epoch, n), debug=True)
    epochs = node.get("max_epochs")
    max_steps = node.get("max_steps", -1)
    if epochs is not None and epochs < 1:
        raise ValueError(f"trainer.max_epochs must be >= 1, got {epochs}")
    if max_steps not in (None, -1) and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"trainer.max_steps must be a positive integer or -1, got {max_steps}")
    steps = epochs * per_epoch if epochs is not None else max_steps
    if max_steps not in (None, -1):
        steps = min(steps, max_steps)
    return RunLength(epochs, per_epoch, steps)
