"""End to end: real configs through dpresearch.train.run and through `python run.py`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpresearch.data.base import DataError
from dpresearch.privacy import PrivacyConfigError
from dpresearch.tracking.summary import SUMMARY_KEYS
from dpresearch.train import run
from tests.helpers.wandb_files import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]


def test_default_run_writes_complete_summary(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(FAST + ["trainer.max_epochs=2"])
    summary = run(cfg, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(saved)
    assert saved["status"] == "completed" and saved["private"] is True
    assert saved["experiment"] == "digits_dp" and saved["sampler"] == "poisson"
    assert saved["accounting_matches_sampler"] is True
    assert 0 < saved["epsilon"] <= 3.0 and saved["delta"] == 1e-5
    assert saved["steps"] == 2 * saved["steps_per_epoch"]
    assert saved["test_accuracy"] is not None and saved["train_examples_per_s"] > 0
    assert summary["epsilon"] == saved["epsilon"]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    eps_per_epoch = [m["epsilon"] for m in metrics if m["stage"] == "train"]
    assert len(eps_per_epoch) == 2 and eps_per_epoch[0] < eps_per_epoch[1] <= 3.0
    # A row holds its own stage's metrics (no previous epoch's training values in a validation
    # row), the epsilon spent when it was written, and its time.
    for m in metrics:
        stages = {k.split("_")[0] for k in m if k.startswith(("train_", "val_", "test_"))}
        assert stages <= {m["stage"]}, m
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["time"])
        assert m["elapsed_s"] >= 0
    vals = [m for m in metrics if m["stage"] == "val"]
    assert len(vals) == 2 and [m["epsilon"] for m in vals] == eps_per_epoch
    assert "dp_steps" not in vals[1]  # unchanged since the previous (training) row


def test_nonprivate_baseline_runs_same_steps(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(FAST + ["+experiment=digits_nonprivate", "trainer.max_epochs=6"])
    saved = run(cfg, tmp_path)
    assert saved["private"] is False and saved["epsilon"] is None
    assert saved["noise_multiplier"] is None and saved["accounting_matches_sampler"] is None
    assert saved["steps"] == 6 * saved["steps_per_epoch"]
    assert saved["test_accuracy"] > 0.5  # a few epochs without noise already learn


def test_shuffle_sampler_is_flagged(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(FAST + ["sampler=shuffle", "sampler.expected_batch_size=256",
                              "trainer.max_epochs=1"])  # fmt: skip
    saved = run(cfg, tmp_path)
    assert saved["accounting_matches_sampler"] is False


def test_enormous_noise_keeps_model_near_chance(compose_cfg, tmp_path) -> None:
    """A private wrapper that never trains the real model would still learn here."""
    noisy = run(compose_cfg(FAST + ["privacy.target_epsilon=null", "privacy.noise_multiplier=1e4",
                                    "trainer.max_epochs=10"]), tmp_path / "noisy")  # fmt: skip
    clean = run(compose_cfg(FAST + ["privacy.target_epsilon=null", "privacy.noise_multiplier=0",
                                    "trainer.max_epochs=10"]), tmp_path / "clean")  # fmt: skip
    assert noisy["test_accuracy"] < 0.3
    assert clean["test_accuracy"] > 0.7


@pytest.mark.parametrize(
    "overrides,engine",
    [
        ([], "bk"),  # clipping.engine=auto resolves to bk for the GroupNorm CNN
        (["clipping.engine=ghost"], "ghost"),
        (["clipping=per_layer", "clipping.engine=hooks"], "hooks"),
        (["clipping=automatic", "clipping.engine=hooks"], "hooks"),
        (["clipping=automatic", "sampler=poisson_masked", "sampler.max_physical_batch_size=64"],
         "bk"),
    ],
)  # fmt: skip
def test_clipping_and_engine_choices_train(compose_cfg, tmp_path, caplog, overrides, engine):
    cfg = compose_cfg(FAST + ["trainer.max_epochs=2"] + overrides)
    with caplog.at_level("INFO", logger="dpresearch.privacy.validation"):
        saved = run(cfg, tmp_path)
    assert saved["status"] == "completed" and saved["engine"] == engine
    assert saved["accounting_matches_sampler"] is True and 0 < saved["epsilon"] <= 3.0
    assert saved["test_accuracy"] is not None and saved["train_examples_per_s"] > 0
    if not overrides:
        assert "clipping.engine=auto -> bk" in caplog.text


def test_self_check_is_in_the_summary_and_statement_and_off_is_recorded(compose_cfg, tmp_path):
    saved = run(compose_cfg(FAST + ["trainer.max_epochs=1"]), tmp_path / "on")
    check = saved["self_check"]
    assert check["enabled"] and check["passed"] and check["engine"] == "bk"
    assert check["max_rel_error"] < 1e-9 and check["dtype"] == "float64" and check["seconds"] > 0
    statement = saved["privacy_statement"]["mechanism"]["per_example_gradients"]
    assert "matched a brute-force loop" in statement
    saved = run(compose_cfg(FAST + ["trainer.max_epochs=1", "clipping.self_check=false"]),
                tmp_path / "off")  # fmt: skip
    assert saved["self_check"] == {"enabled": False, "passed": None}
    assert "NOT checked" in saved["privacy_statement"]["mechanism"]["per_example_gradients"]
    assert "NOT checked" in (tmp_path / "off" / "privacy_statement.md").read_text()


def test_vmap_engine_trains_end_to_end(compose_cfg, tmp_path) -> None:
    saved = run(compose_cfg(FAST + ["trainer.max_epochs=1", "clipping.engine=vmap"]), tmp_path)
    assert saved["status"] == "completed" and saved["engine"] == "vmap"
    assert saved["self_check"]["passed"] and 0 < saved["epsilon"] <= 3.0


def test_tiny_clip_moves_weights_at_most_lr_times_c() -> None:
    from tests.conftest import dp_strategy, fit_batches
    from tests.helpers.models import mixed_model

    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6) * 10, torch.randint(0, 5, (16,))
    model = mixed_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    lr, clip = 0.5, 1e-3
    fit_batches(model, x, y, [list(range(16))], dp_strategy(0.0, clip, 16), lr=lr)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (after - before).norm().item()
    assert 0 < moved <= lr * clip * (1 + 1e-4)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["privacy.target_epsilon=1e-7"], "no noise multiplier"),
        (["privacy.delta=0.01"], "1/N"),
        (["model.norm=batch"], "model.norm=group"),
        (["privacy.noise_multiplier=1.0"], "exactly one of"),
        (["sampler.expected_batch_size=5000"], "expected_batch_size"),
        (["privacy.noise_multiplier=-1", "privacy.target_epsilon=null"], "noise_multiplier"),
        (["clipping.max_grad_norm=nan"], "max_grad_norm"),
        (["clipping.max_grad_norm=0"], "max_grad_norm"),
        (["privacy.accountant=moments"], "accountant"),
        (["clipping.engine=fast"], "clipping.engine"),
        (["trainer.compile=true", "clipping.engine=hooks"], "clipping.engine=bk"),
        (["optimizer.lr=-0.1"], "optimizer.lr"),
        (["optimizer.lr=nan"], "optimizer.lr"),
        (["privacy.noise_multiplier=nan", "privacy.target_epsilon=null"], "noise_multiplier"),
        (
            ["model._target_=tests.ddp_helpers.FunctionalReuseNet", "clipping.engine=bk"],
            r"'bk' engine's per-example gradients are wrong.*head\.weight.*pass the same check: "
            r"vmap; set clipping.engine=vmap",
        ),
        (["finetune=lora", "finetune.target_modules=[nonexistent]"], "target_modules"),
        (
            ["model=minilm"],
            r"HFTextClassifier cannot take dataset digits.*fit this model: "
            r"mnli, qnli, sentiment_templates, sst2, text_files",
        ),
        (["dataset=cifar10", "dataset.data_dir=/nonexistent/data"], "dataset.download=true"),
        (
            [
                "dataset=text_files",
                "dataset.train=TMP/a.csv",
                "dataset.test=TMP/a.csv",
                "model=minilm",
                "dataset.label_column=stars",
            ],
            "dataset.label_column",
        ),
        (["run.resume=true"], "hydra.run.dir"),
        (["privacy.noise_multiplier=inf", "privacy.target_epsilon=null"], "noise_multiplier"),
        (["privacy.noise_multiplier=1e300", "privacy.target_epsilon=null"], "1e\\+06"),
        (["privacy.randomness=random"], "privacy.randomness"),
        (["privacy.secure_rng=true"], "privacy.randomness=secure"),
        (["trainer.precision=bf16-true"], "trainer.precision=bf16-true"),
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed.*GradScaler"),
        (["trainer.precision=bf16-mixed", "clipping.engine=ghost"], "engine=ghost with trainer"),
        (["trainer.devices=2"], "trainer=ddp"),
        (["+trainer.num_nodes=2"], "trainer.num_nodes=2"),
        (["trainer.max_epochs=null"], "trainer.max_steps"),
        (["+trainer.barebones=true"], "trainer.barebones"),
        (["+trainer.overfit_batches=2"], "trainer.overfit_batches"),
        (["+trainer.limit_train_batches=0.01"], "trainer.limit_train_batches"),
        (["+callbacks.odd={_target_:collections.OrderedDict}"], "callbacks.odd .* neither"),
        (["trainer.max_epochs=two"], r"trainer.max_epochs='two' is a str, but .* whole number"),
        (["trainer.max_epochs=2.5"], r"trainer.max_epochs=2.5 is a float, but .* whole number"),
        (["sampler.expected_batch_size=abc"], r"sampler.expected_batch_size='abc' is a str"),
        (["privacy.delta=1e-5x"], r"privacy.delta='1e-5x' is a str, but privacy.delta takes a"),
        (["clipping.self_check=maybe"], r"clipping.self_check='maybe' .* takes true or false"),
        (["seed=x"], r"seed='x' is a str"),
        (["optimizer=sgd", "optimizer.momentum=-0.5"], r"optimizer.momentum=-0.5.*momentum"),
        (["optimizer.weight_decay=-1"], r"optimizer.weight_decay=-1\).*weight_decay value"),
        (
            [
                "privacy=none",
                "+callbacks.canaries={_target_:dpresearch.privacy.auditing.GradientCanaries,"
                "canaries:10,seed:0}",
            ],
            "callbacks.canaries observes DP steps, so it needs a DP run",
        ),  # fmt: skip
    ],
)
def test_bad_input_is_refused_before_training(compose_cfg, tmp_path, overrides, match) -> None:
    (tmp_path / "a.csv").write_text("text,label\nsome text,0\nmore text,1\n")
    out = tmp_path / "run"
    cfg = compose_cfg(FAST + [o.replace("TMP", str(tmp_path)) for o in overrides])
    with pytest.raises((PrivacyConfigError, ValueError, DataError), match=match):
        run(cfg, out)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["status"] == "failed" and re.search(match, saved["error"])
    assert saved["steps"] is None
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def _run_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_multirun_writes_one_summary_per_run(tmp_path) -> None:
    out = _run_py("-m", "privacy.target_epsilon=1,8", "trainer.max_epochs=1", *FAST,
                  "extras.print_config=true", f"hydra.sweep.dir={tmp_path}/sweep",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # One line per job naming its saved config, not a config tree per job.
    assert "── dataset" not in out.stdout and out.stdout.count("config: ") == 2
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    eps = [json.loads(p.read_text())["epsilon"] for p in summaries]
    assert eps[0] <= 1.0 < eps[1] <= 8.0


def report_keys() -> dict[str, set[str]]:
    """The config, summary and history keys the wandb Report's panels and run sets read."""
    import wandb_workspaces.reports.v2 as wr

    from dpresearch.report.wandb_report import build

    keys: dict[str, set[str]] = {"config": set(), "summary": set(), "history": set()}

    def add(value) -> None:
        if isinstance(value, wr.Config):
            keys["config"].add(value.name)
        elif isinstance(value, wr.SummaryMetric):
            keys["summary"].add(value.name)
        elif isinstance(value, str):
            keys["history"].add(value)
        elif isinstance(value, list):
            for v in value:
                add(v)

    for block in build("someone", "dpresearch").blocks:
        if not isinstance(block, wr.PanelGrid):
            continue
        for runset in block.runsets:
            keys["config"].update(runset.groupby)
            keys["config"].update(re.findall(r"Config\('([^']+)'\)", runset.filters))
        for panel in block.panels:
            for attr in ("x", "y", "z", "metrics", "groupby"):
                value = getattr(panel, attr, None)
                if attr == "groupby" and isinstance(value, str):
                    keys["config"].add(value)
                elif value is not None:
                    add(value)
    assert {"optimizer.lr", "clipping.max_grad_norm", "setting"} <= keys["config"]
    return keys


def test_run_py_prints_final_table_and_wandb_goes_offline(tmp_path) -> None:
    env_out = _run_py("+experiment=mnist1d_dp", "trainer.max_epochs=1", "logger=wandb",
                      "logger.mode=offline", "extras.print_config=false",
                      f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)  # fmt: skip
    assert env_out.returncode == 0, env_out.stderr[-3000:]
    for label in ("test accuracy", "epsilon", "delta", "noise multiplier", "sample rate",
                  "steps", "examples/s"):  # fmt: skip
        assert label in env_out.stdout
    assert "wandb: offline (logger.mode)" in env_out.stdout  # the mode chosen, and why
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["dataset"] == "mnist1d" and saved["model"] == "conv1d"
    # What wandb recorded, read back from the offline run file: the Hydra nodes intact beside
    # the short labels, and every key a panel of the wandb Report reads.
    (folder,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    logged = read_offline_run(folder)
    assert logged.config["clipping.max_grad_norm"] == 1.0
    assert logged.config["sampler.expected_batch_size"] > 0
    assert logged.config["labels.clipping"] == "fixed" and logged.config["job_type"] == "train"
    assert logged.config["setting"] == saved["setting"] and logged.exit_code == 0
    wanted = report_keys()
    assert not wanted["config"] - set(logged.config), wanted["config"] - set(logged.config)
    assert not wanted["summary"] - set(logged.summary)
    assert not wanted["history"] - logged.history_keys


@pytest.mark.parametrize("debug,private", [("limit", True), ("overfit", False), ("fdr", True)])
def test_debug_runs_are_marked_debug(compose_cfg, tmp_path, debug, private) -> None:
    cfg = compose_cfg([*FAST, f"debug={debug}", "trainer.max_epochs=2"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "debug" and summary["debug"] == debug
    assert summary["private"] is private  # overfit replays one batch: never under DP
