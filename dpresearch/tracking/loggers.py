"""Logger factories for the ``logger`` config group.

wandb runs offline unless the user chose otherwise (``logger.mode``, WANDB_MODE, or wandb's own
record of a login): without a network, an online ``wandb.init`` retries for minutes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


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

    mode, why = wandb_mode(mode)
    log.info("wandb mode: %s (%s)", mode, why)
    print(f"wandb: {mode} ({why})", flush=True)
    os.environ["WANDB_MODE"] = mode
    # Hydra's instantiate hands dicts over as DictConfig: wandb would log str() of them.
    run_config, extra_config = (
        OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else c
        for c in (run_config, extra_config)
    )
    run_config = dict(run_config or {})
    clash = sorted(set(run_config) & set(extra_config or {}))
    if clash:  # the Hydra nodes are what dashboards plot (clipping.max_grad_norm)
        raise ValueError(f"wandb config: {clash} would overwrite the run's config nodes")
    run_config.update(extra_config or {})
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


def wandb_mode(mode: str | None = None) -> tuple[str, str]:
    """The wandb mode and why: as given (``logger.mode``), else WANDB_MODE, else online when
    wandb itself finds an API key (``wandb login``'s netrc entry for the configured host, or
    WANDB_API_KEY), else offline."""
    if mode:
        return mode, "logger.mode"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    if wandb_api_key() is not None:
        return "online", "logged in"
    return "offline", "not logged in: `wandb login`, or `wandb sync` the run later"


def wandb_api_key() -> str | None:
    """wandb's own lookup of the API key (environment, then netrc for the configured base URL);
    None when there is none or wandb cannot tell."""
    try:  # as `wandb` itself finds it (cli.py's _configured_api_key on wandb_setup's settings),
        # on a fresh Settings: building wandb's singleton now would freeze the environment
        # before WANDB_MODE is set, and wandb.init would then warn that changes are ignored.
        from wandb.sdk.lib import wbauth
        from wandb.sdk.wandb_settings import Settings

        settings = Settings()
        folder = os.getenv("WANDB_CONFIG_DIR")
        settings.settings_system = str(
            Path(folder).expanduser() / "settings" if folder
            else Path("~", ".config", "wandb", "settings").expanduser()
        )  # fmt: skip
        settings.update_from_system_settings()
        settings.update_from_env_vars(os.environ.copy())
        return settings.api_key or wbauth.read_netrc_auth(host=settings.base_url)
    except Exception as err:  # a broken settings file: say so, and stay offline
        log.warning("could not read the wandb login (%s); staying offline", err)
        return None


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
