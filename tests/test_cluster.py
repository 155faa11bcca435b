"""Surviving the cluster: each fault a long job meets, what must happen, checked.

| fault                                    | expected                                           |
|------------------------------------------|----------------------------------------------------|
| disk full while saving, run folder on    | last.ckpt whole and verified, no temporary file    |
|   another filesystem than $TMPDIR        |                                                    |
| SIGUSR1 / SIGTERM during training        | checkpoint at the step, "preempted", exit 75; a    |
|                                          |   resume=auto rerun ends equal to an uninterrupted |
| plain rerun into a folder with a run     | refused, folder untouched; resume=auto continues   |
| a second process in the same folder      | refused naming the holder; a dead holder's lock is |
|                                          |   taken over                                       |
| a resume that fails after a completed    | summary.json / config.yaml kept; the attempt's own |
|   run                                    |   summary.resume_N.json                            |
| corrupt, truncated or empty checkpoint   | refused naming the path and previous.ckpt          |
| divergence (lr 1e30)                     | "diverged" with the reason, exception raised       |
| disk full while writing summary.json     | the essentials written, no temporary file          |
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dpresearch import atomic
from dpresearch.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    verify_checkpoint,
)
from dpresearch.divergence import Diverged
from dpresearch.preemption import PREEMPTED_EXIT
from dpresearch.privacy import PrivacyConfigError
from dpresearch.run_folder import LOCK, RunFolderError, locked
from dpresearch.train import run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]
SIGMA = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]


def summary(out: Path, name: str = "summary.json") -> dict:
    return json.loads((out / name).read_text())


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a filesystem other than $TMPDIR's, and one that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_on_another_filesystem_keeps_the_checkpoint(small_disk) -> None:
    io = AtomicCheckpointIO()
    path = small_disk / "checkpoints" / "last.ckpt"
    good = {"w": torch.arange(60_000, dtype=torch.float32)}  # 240 kB
    io.save_checkpoint(good, path)
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"w": torch.zeros(300_000)}, path)  # 1.2 MB: does not fit
    assert err.value.errno == errno.ENOSPC
    verify_checkpoint(path)
    assert torch.equal(torch.load(path)["w"], good["w"])
    assert leftovers(small_disk) == []


def test_a_full_disk_while_saving_during_training_keeps_the_checkpoint(
    compose_cfg, tmp_path, monkeypatch
) -> None:
    """Fault injection where no tmpfs can be mounted: the checkpoint write itself fails."""
    out = tmp_path / "run"
    real, calls = atomic._write_file, []

    def full(path, data):
        if re.fullmatch(r"\.last\.ckpt\.\d+\.tmp", path.name):
            calls.append(path)
            if len(calls) == 2:
                real(path, data[:100])
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(path, data)

    monkeypatch.setattr(atomic, "_write_file", full)
    with pytest.raises(OSError, match="No space left"):
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=3"]), out)
    assert calls[1].parent == out / "checkpoints"  # the temporary file sits beside the target
    verify_checkpoint(out / "checkpoints" / "last.ckpt")
    assert leftovers(out) == [] and summary(out)["status"] == "failed"


def _start(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *FAST, *SIGMA, f"hydra.run.dir={out}", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _signal_after_epochs(proc: subprocess.Popen, out: Path, epochs: int, signum: int) -> int:
    """Send ``signum`` once ``metrics.jsonl`` holds ``epochs`` training epochs; the exit code."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if sum('"stage": "train"' in line for line in lines) >= epochs:
            proc.send_signal(signum)
            break
        time.sleep(0.05)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode is not None, log
    return proc.returncode


def test_stop_signals_save_the_step_and_a_requeue_resumes_exactly(tmp_path) -> None:
    args = ["trainer.max_epochs=10"]  # 50 steps: a signal lands mid-run
    whole = tmp_path / "whole"
    assert _start(whole, *args).wait(timeout=600) == 0
    out = tmp_path / "preempted"
    assert _signal_after_epochs(_start(out, *args), out, 1, signal.SIGUSR1) == PREEMPTED_EXIT
    first = summary(out)
    assert first["status"] == "preempted" and first["preempted_by"] == "SIGUSR1"
    assert 5 <= first["steps"] < 50 and first["epsilon"] > 0
    assert (
        first["checkpoint"].endswith("checkpoints/last.ckpt")
        and "run.resume=auto" in first["reason"]
    )
    rerun = _start(out, *args, "run.resume=auto")
    assert _signal_after_epochs(rerun, out, 3, signal.SIGTERM) == PREEMPTED_EXIT
    second = summary(out)
    assert second["status"] == "preempted" and second["preempted_by"] == "SIGTERM"
    assert second["attempt"] == 1 and second["steps"] > first["steps"]
    assert _start(out, *args, "run.resume=auto").wait(timeout=600) == 0
    done, reference = summary(out), summary(whole)
    assert done["status"] == "completed" and done["attempt"] == 2
    for key in ("steps", "epsilon", "test_accuracy"):
        assert done[key] == reference[key], key


def test_a_plain_rerun_is_refused_and_resume_auto_continues(compose_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    fresh = run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=1", "run.resume=auto"]), out)
    assert fresh["attempt"] == 0 and fresh["resumed_from"] is None
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RunFolderError, match=r"already holds a run \(a completed run's summary"):
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2"]), out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    more = run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2", "run.resume=auto"]), out)
    assert more["attempt"] == 1 and more["steps"] == 10 and more["resumed_from"]
    assert (out / "config.resume_1.yaml").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["stage"] == "train"] == [0, 1]  # one history
    with pytest.raises(ValueError, match="run.resume='maybe'"):
        run(compose_cfg([*FAST, "run.resume=maybe"]), tmp_path / "other")


def test_a_second_run_in_the_same_folder_is_refused(compose_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with locked(out):
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}"):
            run(compose_cfg([*FAST, "trainer.max_epochs=1"]), out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    # A lock file left by a process that is gone holds no lock: it is taken over.
    (out / LOCK).write_text(json.dumps({"pid": 999999, "host": "gone", "since": "then"}))
    done = run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=1"]), out)
    assert done["status"] == "completed" and not (out / LOCK).exists()


def test_a_failed_resume_keeps_the_completed_records(compose_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=1"]), out)
    completed, config = (out / "summary.json").read_text(), (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="optimizer.lr"):
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2", "run.resume=auto",
                         "optimizer.lr=-1"]), out)  # fmt: skip
    assert (out / "summary.json").read_text() == completed
    assert (out / "config.yaml").read_text() == config
    assert summary(out, "summary.resume_1.json")["status"] == "failed"
    assert "lr: -1" in (out / "config.resume_1.yaml").read_text()


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_a_damaged_checkpoint_is_refused_naming_the_fallback(compose_cfg, tmp_path, damage):
    out = tmp_path / "run"
    run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2"]), out)
    last = out / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    if damage == "random":  # 4 KB of random bytes in the middle
        middle = len(data) // 2
        data = data[:middle] + os.urandom(4096) + data[middle + 4096 :]
    last.write_bytes({"random": data, "truncated": data[: len(data) // 3], "empty": b""}[damage])
    match = "is empty" if damage == "empty" else "is corrupt"
    with pytest.raises(CheckpointError, match=rf"{last}.*{match}.*ckpt_path=.*previous\.ckpt"):
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=3", "run.resume=auto"]), out)
    assert summary(out)["status"] == "completed"  # the folder's record is untouched
    fallback = f"ckpt_path={out / 'checkpoints' / 'previous.ckpt'}"
    resumed = run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=3", fallback]), tmp_path / "b")
    assert resumed["status"] == "completed" and resumed["steps"] == 15


def test_divergence_ends_as_diverged(compose_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Diverged, match="non-finite parameters after step"):
        run(compose_cfg([*FAST, "trainer.max_epochs=2", "optimizer.lr=1e30"]), out)
    record = summary(out)
    assert record["status"] == "diverged" and "lower optimizer.lr" in record["error"]
    assert record["steps"] >= 1 and record["epsilon"] > 0  # what was spent until then
    with pytest.raises(Diverged, match="training loss is nan|non-finite parameters"):
        run(compose_cfg([*FAST, "privacy=none", "trainer.max_epochs=2", "optimizer.lr=1e30"]),
            tmp_path / "nonprivate")  # fmt: skip


def test_a_full_disk_still_leaves_the_summary_essentials(compose_cfg, tmp_path, monkeypatch):
    real = atomic._write_file

    def full(path, data):
        if path.name.startswith(".summary.json") and len(data) > 400:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(path, data)

    monkeypatch.setattr(atomic, "_write_file", full)
    out = tmp_path / "run"
    run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=1"]), out)
    brief = summary(out)
    assert brief["status"] == "completed" and "No space left" in brief["summary_error"]
    assert leftovers(out) == []


def test_an_altered_dp_state_is_refused(compose_cfg, tmp_path) -> None:
    """A checkpoint rewritten with fewer steps spent (and a fresh file digest, so only the DP
    state's own digest can tell) would under-count epsilon: refused."""
    out = tmp_path / "run"
    run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=2"]), out)
    last = out / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    state["dp_state"]["dp_steps"] = 1
    AtomicCheckpointIO().save_checkpoint(state, last)
    with pytest.raises(PrivacyConfigError, match="does not match its digest"):
        run(compose_cfg([*FAST, *SIGMA, "trainer.max_epochs=3", "run.resume=auto"]), out)
