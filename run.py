"""Entry point: `python run.py [+experiment=NAME] [overrides]`. All logic lives in dpresearch."""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from dpresearch.train import run

    hydra_cfg = HydraConfig.get()
    summary = run(cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices))
    return summary.get("val_accuracy")


if __name__ == "__main__":
    main()
