"""Checkpoints of a run: written so nothing can destroy the last good one, verified before use.

Every epoch end writes ``<run>/checkpoints/last.ckpt`` (and a preempted run writes it at the
step where it stopped). ``AtomicCheckpointIO`` writes it through ``dpresearch.atomic``: a
temporary file in the same directory, flushed, then renamed over the old one, so a crash, a
kill or a full disk while saving leaves the previous checkpoint whole. The checkpoint it
replaces stays as ``previous.ckpt`` (a hard link: no copy). Beside each checkpoint,
``<name>.sha256`` holds its digest, written BEFORE the rename together with the digest of the
file it replaces, so the pair agrees at every instant; ``verify_checkpoint`` checks it before
a resume. A checkpoint holds the model, the optimizer, the loop counters, the sampler's
generator (the DataModule's state), the DP state (``PrivacyState``, with its own digest) and
the global random number generators (``RandomState``): a resumed run draws exactly what the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from dpresearch.atomic import fsync_dir, write_atomic

log = logging.getLogger(__name__)

LAST = "last.ckpt"
PREVIOUS = "previous.ckpt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: missing, truncated, or not what was written."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, rename: on every layout
    (Lightning's own writer stages the file in $TMPDIR, and a move across filesystems is a
    copy that truncates the old checkpoint first)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        old = read_checksum(path) if path.exists() else None
        if path.exists() and path.name == LAST:  # keep the one it replaces, by hard link
            keep = path.with_name(f".{PREVIOUS}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                keep.unlink()
            os.link(path, keep)
            os.replace(keep, path.with_name(PREVIOUS))
            if old is not None:
                write_atomic(checksum_path(path.with_name(PREVIOUS)),
                             json.dumps({"sha256": old}) + "\n")  # fmt: skip
        record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "replaces": old}
        write_atomic(checksum_path(path), json.dumps(record) + "\n")
        write_atomic(path, data)
        fsync_dir(path.parent)


def read_checksum(path: Path) -> str | None:
    """The digest recorded for the checkpoint at ``path`` (None: none recorded)."""
    try:
        return json.loads(checksum_path(path).read_text())["sha256"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint that is empty or differs from what was written (its digest, or the
    digest of the file it was replacing when a save was cut short). A checkpoint from
    elsewhere, with no digest beside it, is used with a warning."""
    path = Path(path)
    fallback = path.with_name(PREVIOUS)
    hint = (
        f"; the checkpoint before it, {fallback}, verifies: resume from it with "
        f"ckpt_path={fallback}"
        if path.name == LAST and fallback.is_file() and _verifies(fallback)
        else "; start a new run, or give another checkpoint with ckpt_path=FILE"
    )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes){hint}")
    try:
        record = json.loads(checksum_path(path).read_text())
    except FileNotFoundError:
        log.warning("checkpoint %s has no digest beside it: it is not verified", path)
        return
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"the digest file {checksum_path(path)} is unreadable ({err}){hint}"
        ) from None
    actual = sha256_file(path)
    if actual not in (record.get("sha256"), record.get("replaces")):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {size} bytes with sha256 {actual[:12]}..., but "
            f"{record.get('size')} bytes with sha256 {str(record.get('sha256'))[:12]}... were "
            f"written{hint}"
        )


def _verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except (CheckpointError, OSError):
        return False
    return True


class RandomState(pl.Callback):
    """Saves and restores torch's global generators (dropout, augmentation, data order)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_state"] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_callback(out: Path) -> ModelCheckpoint:
    """last.ckpt at every training epoch end, each replacing the one before (with no monitor,
    Lightning's top-1 is the newest)."""
    return ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename=Path(LAST).stem,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
