"""Logger factories for the ``logger`` config group.

wandb runs offline unless the user chose otherwise (WANDB_MODE set, or an API key present):
without a network, an online ``wandb.init`` retries for minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def wandb_logger(
    save_dir: str,
    project: str = "dpresearch",
    group: str | None = None,
    tags: list[str] | None = None,
    job_type: str = "train",
    mode: str | None = None,
    run_config: DictConfig | dict | None = None,
    name: str | None = None,
    extra_tags: list[str] | None = None,
    extra_config: dict | None = None,
):
    from pytorch_lightning.loggers import WandbLogger

    mode = wandb_mode(mode)
    os.environ["WANDB_MODE"] = mode
    if isinstance(run_config, DictConfig):
        run_config = OmegaConf.to_container(run_config, resolve=True)
    run_config = {**(run_config or {}), **(extra_config or {})}  # method etc. for grouping
    job_type = (extra_config or {}).get("job_type", job_type)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        group=group,
        tags=[*(tags or []), *(extra_tags or [])],
        job_type=job_type,
        name=name,
        config=run_config,
        mode=mode,
        log_model=False,
    )


def wandb_mode(mode: str | None = None) -> str:
    """The wandb mode to use: as given, else WANDB_MODE, else online only when logged in."""
    return mode or os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def csv_logger(save_dir: str, **_: object):
    """csv/metrics.csv; a resumed run (the folder already has one) writes csv/resumed_N/
    instead of replacing it."""
    from pytorch_lightning.loggers import CSVLogger

    root, version, n = Path(save_dir) / "csv", "", 0
    while (root / version / "metrics.csv").exists():
        n += 1
        version = f"resumed_{n}"
    return CSVLogger(save_dir=save_dir, name="csv", version=version)


def no_logger(save_dir: str, **_: object) -> bool:
    return False
