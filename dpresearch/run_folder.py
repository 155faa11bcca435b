"""The run folder: one run at a time, one history, records that a later failure cannot spoil.

- A lock (``run.lock``, an ``flock`` held for the whole run, its content the holder's PID and
  host) refuses a second process writing into the same folder; the kernel drops it when the
  holder dies, so a lock file left by a killed run is stale by construction and is taken over.
- ``run.resume``: ``false`` refuses a folder that already holds a run (a plain rerun would
  restart at epoch 0 and mix two histories); ``true`` continues from its ``last.ckpt``;
  ``auto`` continues when there is a checkpoint and starts otherwise (one command for the
  first start and every requeue). A checkpoint is verified before it is used.
- A resume is an attempt: its config is saved as ``config.resume_N.yaml``, and a failed
  attempt's summary goes to ``summary.resume_N.json``, leaving the folder's ``summary.json``
  and ``config.yaml`` (a completed run's, say) as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from dpresearch.checkpointing import LAST, verify_checkpoint

log = logging.getLogger(__name__)

LOCK = "run.lock"
RESUME_CHOICES = (False, True, "auto")


class RunFolderError(ValueError):
    """The folder cannot take this run (busy, or holding another run)."""


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the folder's lock for the block; refuse at once when another process holds it."""
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(path)
        os.close(fd)
        raise RunFolderError(
            f"{out} is in use by another run ({holder}); wait for it to end, or write to "
            "another folder (hydra.run.dir=...)"
        ) from None
    stale = _holder(path) if os.fstat(fd).st_size else None
    if stale is not None:
        log.warning("%s: took over the lock left by a run that is gone (%s)", out, stale)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())  # fmt: skip
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def existing_run(out: Path) -> str | None:
    """What of a run the folder holds that a new start would lose (None: nothing). A run that
    stopped before producing anything (failed or preempted, with no checkpoint and no
    metrics: a refused config, say) loses nothing, so its folder may be reused."""
    found = []
    if (out / "checkpoints" / LAST).is_file():
        found.append(f"checkpoints/{LAST}")
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        found.append("metrics.jsonl")
    summary = out / "summary.json"
    if summary.is_file():
        status = _status(out)
        if found or status not in ("failed", "preempted"):
            found.insert(0, f"a {status} run's summary.json" if status else "a summary.json")
    return ", ".join(found) or None


def requeued() -> bool:
    """Whether this process is a SLURM job that was requeued (a timed-out or preempted
    submitit task, or an sbatch job, coming back with the same command)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def resume_choice(cfg: DictConfig) -> bool | str:
    """run.resume; in a requeued SLURM job, ``false`` acts as ``auto``: the job re-runs its
    own command, so the folder it finds is its own interrupted run, to be continued."""
    value = cfg.get("run", {}).get("resume", False)
    if value not in RESUME_CHOICES or isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"run.resume={value!r} is not one of false, true, auto")
    if value is False and not cfg.get("ckpt_path") and requeued():
        log.warning("requeued SLURM job (SLURM_RESTART_COUNT=%s): run.resume=auto",
                    os.environ["SLURM_RESTART_COUNT"])  # fmt: skip
        return "auto"
    return value


def resume_path(cfg: DictConfig, out: Path, check_folder: bool = True) -> str | None:
    """The checkpoint to continue from: ``ckpt_path=FILE`` (into this new folder), or this
    folder's ``last.ckpt`` under ``run.resume=true|auto``. Checked before anything is built
    or written: missing or corrupt checkpoints, and (``check_folder``: rank 0 only, the one
    that writes the folder) a folder holding a run it would spoil."""
    explicit = cfg.get("ckpt_path")
    resume = resume_choice(cfg)
    if explicit and resume is not False:
        raise ValueError(f"give either ckpt_path=FILE or run.resume={resume}, not both")
    last = out / "checkpoints" / LAST
    there = existing_run(out) if check_folder else None
    if explicit or resume is False:
        if there is not None:
            raise RunFolderError(
                f"{out} already holds a run ({there}): continue it with run.resume=auto, or "
                "write this run to another folder (hydra.run.dir=...)"
            )
        if not explicit:
            return None
        path = Path(explicit)
        if not path.is_file():
            raise ValueError(f"ckpt_path={explicit} is not a file")
        verify_checkpoint(path)
        return str(path)
    if last.is_file():
        verify_checkpoint(last)
        return str(last)
    if resume is True:
        raise ValueError(
            f"run.resume=true but {last} does not exist: pass the interrupted run's folder "
            "as hydra.run.dir=<folder>, give ckpt_path=<file>, or use run.resume=auto"
        )
    if check_folder and there is not None:  # auto, no checkpoint, but results there
        raise RunFolderError(
            f"run.resume=auto but {out} holds a run with results and no checkpoint to continue "
            f"({there}): write this run to another folder (hydra.run.dir=...)"
        )
    return None  # nothing there, or an attempt that stopped before producing anything


def _status(out: Path) -> str | None:
    try:
        return json.loads((out / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def attempt_number(out: Path) -> int:
    """0 for a first start; N for the folder's N-th resume."""
    return len(list(out.glob("config.resume_*.yaml"))) + 1


def record_names(attempt: int) -> tuple[str, str]:
    """(config, summary) file names of an attempt; a resume's summary replaces the folder's
    ``summary.json`` unless it failed (see ``summary_name``)."""
    if attempt == 0:
        return "config.yaml", "summary.json"
    return f"config.resume_{attempt}.yaml", f"summary.resume_{attempt}.json"


def summary_name(attempt: int, status: str) -> str:
    """Where an attempt's summary goes: a failed resume never replaces the folder's record."""
    if attempt and status == "failed":
        return record_names(attempt)[1]
    return "summary.json"
