"""`python -m dpresearch.eval ckpt_path=RUN/checkpoints/last.ckpt`: test a trained checkpoint.

The data module, model and fine-tuning scope are rebuilt from the run folder's config.yaml,
the checkpoint is verified against its digest, and the test split is evaluated. ``eval.json``
records the test metrics with the privacy facts carried over: the training run's guarantee,
and the epsilon of THESE weights, computed from the DP state the checkpoint holds (a
checkpoint saved mid-run has spent less than the run). Test metrics are computed on held-out
examples that training never read; the guarantee says nothing about them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from dpresearch.atomic import write_atomic
from dpresearch.checkpointing import LAST, sha256_file, verify_checkpoint
from dpresearch.module import ClassificationModule
from dpresearch.privacy.accounting import compute_epsilon
from dpresearch.privacy.callback import PrivacyState
from dpresearch.privacy.mechanisms import stream_from_state
from dpresearch.train import build, build_model, resolve_device

CARRIED = ("experiment", "status", "private", "epsilon", "delta", "noise_multiplier",
           "sample_rate", "steps", "accountant", "setting", "test_accuracy", "seed")  # fmt: skip


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a path names: a file, or a run folder's checkpoints/last.ckpt."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / LAST
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={path}: no such checkpoint; give a .ckpt file or a run folder that "
            "holds checkpoints/last.ckpt"
        )
    return path


def weights_epsilon(checkpoint: dict) -> dict | None:
    """The epsilon spent by the steps that produced these weights (from the checkpoint's DP
    state), or None for a non-private checkpoint."""
    state = checkpoint.get(PrivacyState.KEY)
    if not state:
        return None
    period = int(state.get("participation_period", 1))  # cyclic Poisson: one step in `period`
    accounted = stream_from_state(state).accounted(
        state["sample_rate"], state["noise_multiplier"], int(state["dp_steps"]), period
    )  # what the mechanism's accountant composes (see privacy.mechanisms)
    eps = compute_epsilon(*accounted, state["delta"], state["accountant"])
    return {"epsilon": eps.epsilon, "delta": state["delta"], "dp_steps": int(state["dp_steps"]),
            "accountant": eps.accountant}  # fmt: skip


def evaluate_checkpoint(ckpt_path: str | Path, out: Path, accelerator: str = "auto") -> dict:
    path = checkpoint_file(ckpt_path)
    verify_checkpoint(path)
    run_dir = path.parent.parent
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={path}: its run folder {run_dir} has no config.yaml to rebuild the "
            "data and model from; give a checkpoint inside a dpresearch run folder"
        )
    cfg = OmegaConf.load(config_path)
    trained = {}
    if (run_dir / "summary.json").is_file():
        trained = json.loads((run_dir / "summary.json").read_text())
    # As training built them (the same seed, the same order), so a seeded random base is the
    # same one; the checkpoint's frozen-base digest checks that it is.
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    sampling, privacy = build(cfg.sampler), build(cfg.privacy)
    scope = build(cfg.finetune)
    datamodule = build(cfg.dataset)
    datamodule.attach_sampler(sampling, privacy.sampler_seed(cfg.seed))
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    model = build_model(cfg.model, datamodule, scope)
    module = ClassificationModule(model, optimizer=instantiate(cfg.optimizer))
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    module.load_checkpoint_state(checkpoint)
    device = resolve_device(accelerator)
    trainer = pl.Trainer(accelerator=device.type, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    record = {
        "checkpoint": str(path.resolve()),
        "checkpoint_sha256": sha256_file(path),
        "run_dir": str(run_dir.resolve()),
        "test_accuracy": metrics.get("test_acc"),
        "test_loss": metrics.get("test_loss"),
        "num_test": len(datamodule.test_dataloader().dataset),
        "wall_s": time.perf_counter() - start,
        "weights_privacy": weights_epsilon(checkpoint),
        "trained": {k: trained.get(k) for k in CARRIED},
        "privacy_statement": trained.get("privacy_statement"),
        "note": "test metrics are computed on the held-out test split, which training never "
        "read: they are outside the training guarantee. weights_privacy is the (epsilon, "
        "delta) of these weights, from the DP state saved with them.",
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "eval.json", json.dumps(record, indent=2, default=str) + "\n")
    return record


def print_record(record: dict, out: Path) -> None:
    table = Table(title=f"eval of {record['checkpoint']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("test accuracy", f"{record['test_accuracy']:.4f}")
    table.add_row("test examples", str(record["num_test"]))
    w = record["weights_privacy"]
    spent = "non-private" if w is None else (
        f"{w['epsilon']:.4g} (delta {w['delta']:.1e}, {w['dp_steps']} steps)")  # fmt: skip
    table.add_row("epsilon of these weights", spent)
    Console().print(table)
    Console().print(f"wrote {out / 'eval.json'}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    build(cfg.extras).apply()
    out = Path(HydraConfig.get().runtime.output_dir)
    print_record(evaluate_checkpoint(cfg.ckpt_path, out, cfg.accelerator), out)


if __name__ == "__main__":
    main()
