"""Parameter-efficient checkpoints hold what was trained (plus a digest of the frozen base,
checked on load); `python -m dpresearch.eval` tests a checkpoint with its privacy records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dpresearch.eval import evaluate_checkpoint
from dpresearch.frozen_base import KEY, FrozenBaseMismatch, restore_frozen, strip_frozen
from dpresearch.train import run

ROOT = Path(__file__).resolve().parents[1]
TINY_BIAS_ONLY = ["+experiment=minilm_sentiment_bias_only_dp", "model.pretrained=false",
                  "+model.config_overrides.num_hidden_layers=1", "logger=none",
                  "extras.print_config=false", "trainer.enable_progress_bar=false",
                  "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]  # fmt: skip


def test_a_bias_only_checkpoint_holds_what_was_trained_resumes_and_evaluates(
    compose_cfg, tmp_path
) -> None:
    out = tmp_path / "run"
    summary = run(compose_cfg([*TINY_BIAS_ONLY, "trainer.max_epochs=1"]), out)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    stored = sum(t.numel() for t in ckpt["state_dict"].values())
    base = ckpt[KEY]
    assert base["numel"] > 20 * stored  # the frozen base is left out, by reference
    assert summary["trainable_params"] <= stored < summary["trainable_params"] + 2_000  # + buffers
    assert not set(base["keys"]) & set(ckpt["state_dict"])

    # Resuming rebuilds the base from the config, checks its digest, and goes on.
    resumed = run(compose_cfg([*TINY_BIAS_ONLY, "trainer.max_epochs=2", "run.resume=true"]), out)
    assert resumed["status"] == "completed" and resumed["steps"] == 2 * summary["steps"]

    record = evaluate_checkpoint(out, tmp_path / "eval")
    assert record["test_accuracy"] == pytest.approx(resumed["test_accuracy"], abs=1e-9)
    assert record["weights_privacy"]["dp_steps"] == resumed["steps"]
    assert record["weights_privacy"]["epsilon"] == pytest.approx(resumed["epsilon"], rel=1e-9)
    assert record["trained"]["status"] == "completed" and record["privacy_statement"]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["checkpoint_sha256"] == record["checkpoint_sha256"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.base.requires_grad_(False)


def test_a_different_frozen_base_is_refused_and_full_models_keep_everything() -> None:
    model = Tiny()
    checkpoint = {"state_dict": model.state_dict()}
    strip_frozen(model, checkpoint)
    assert set(checkpoint["state_dict"]) == {"head.weight", "head.bias"}
    assert checkpoint[KEY]["keys"] == ["base.bias", "base.weight"]
    restore_frozen(model, {**checkpoint, "state_dict": dict(checkpoint["state_dict"])})
    with torch.no_grad():
        model.base.weight[0, 0] += 1e-3  # another pretrained version, another seed
    with pytest.raises(FrozenBaseMismatch, match="sha256 differs"):
        restore_frozen(model, checkpoint)
    full = Tiny().requires_grad_(True)
    checkpoint = {"state_dict": full.state_dict()}
    strip_frozen(full, checkpoint)
    assert KEY not in checkpoint and len(checkpoint["state_dict"]) == 4


def test_eval_refuses_what_it_cannot_evaluate(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoints/last.ckpt"):
        evaluate_checkpoint(tmp_path, tmp_path / "eval")
    stray = tmp_path / "elsewhere" / "checkpoints" / "x.ckpt"
    stray.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, stray)
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        evaluate_checkpoint(stray, tmp_path / "eval")


def test_the_eval_entry_point_runs_from_the_command_line(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "run.py", "trainer.max_epochs=1", "logger=none",
           "extras.print_config=false", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={out}"]  # fmt: skip
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    result = subprocess.run([sys.executable, "-m", "dpresearch.eval", f"ckpt_path={out}",
                             f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epsilon of these weights" in result.stdout
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert record["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
