"""Preemption: SIGTERM (SLURM preemption, its time limit, scancel), SIGUSR1 (the warning
``sbatch --signal=USR1@90`` sends before the limit) and SIGUSR2 (submitit's warning, for jobs
of the hydra/launcher=slurm launcher) stop the run at the next step boundary.

During training, both go through Lightning's own SIGTERM handling, which finishes the current
optimizer step on every rank and raises ``SIGTERMException``; this callback then saves
``last.ckpt`` at that step. Outside training (building, the self-check, testing) the signal
interrupts at once: nothing new is lost (training's checkpoint is already on disk). Either
way the run's records say ``"status": "preempted"`` and the process exits with
``PREEMPTED_EXIT`` (75, EX_TEMPFAIL: try again), which ``slurm/*.sbatch`` turn into a requeue;
``run.resume=auto`` then continues from the checkpoint. Under submitit, once the records are
written, the signal is handed to submitit's own handler, which requeues the task (it comes
back with the same command, and a requeued job resumes: ``run_folder.resume_choice``).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

PREEMPTED_EXIT = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(BaseException):  # noqa: N818 - a stop, like KeyboardInterrupt, not an error
    """A stop signal arrived outside training."""


class Preemption(pl.Callback):
    """Installs the handlers for the run's whole life (``install``/``restore``) and saves the
    checkpoint when training stops on a signal."""

    def __init__(self) -> None:
        self.signal: str | None = None  # the first stop signal received
        self.fitting = False
        self.checkpoint: Path | None = None  # where training's stop saved its state
        self._previous: dict[int, object] = {}
        self._handed: dict[int, object] = {}

    def install(self) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._handed = dict(self._previous)  # for hand_over, once the records are written
        self._previous.clear()

    def hand_over(self) -> None:
        """After the records are written: give the stop signal to the handler that was
        there before ours when it is a Python one (submitit's, which requeues the task and
        exits); a default or ignoring handler has nothing to do."""
        if self.signal is None:
            return
        signum = signal.Signals[self.signal]
        previous = self._handed.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            log.warning("%s: handing over to %s", self.signal, getattr(previous, "__qualname__",
                                                                       previous))  # fmt: skip
            previous(signum, None)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        self.signal = self.signal or name
        if not self.fitting:
            raise Preempted(f"{name} received outside training")
        if signum != signal.SIGTERM:  # Lightning stops training on SIGTERM: send it one
            os.kill(os.getpid(), signal.SIGTERM)
        # SIGTERM during training: Lightning's handler (which chains to this one) has it.

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fitting = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fitting = False

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        self.fitting = False
        if not isinstance(exception, SIGTERMException):
            return
        self.signal = self.signal or "SIGTERM"
        callback = trainer.checkpoint_callback
        if callback is None or callback.dirpath is None:
            log.warning(
                "%s: training stopped; run.checkpoint=false, so nothing is saved", self.signal
            )
            return
        path = Path(callback.dirpath) / f"{callback.filename}.ckpt"
        trainer.save_checkpoint(path)
        self.checkpoint = path
        log.warning("%s: training stopped after step %d; saved %s", self.signal,
                    trainer.global_step, path)  # fmt: skip
