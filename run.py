"""Entry point: `python run.py [+experiment=NAME] [overrides]`. All logic lives in dpresearch."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from dpresearch.train import run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return run(cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices), multirun)


if __name__ == "__main__":
    from dpresearch.sweeps.sweeper import register

    register()  # our Optuna sweeper, for `-m hparams_search=...`
    main()
