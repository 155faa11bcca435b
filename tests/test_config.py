"""Every option of every config group composes and instantiates; experiments compose."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["dataset", "model", "clipping", "finetune", "sampler", "privacy", "optimizer",
          "trainer", "logger", "callbacks"]  # fmt: skip
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_required_groups_and_experiments_exist() -> None:
    for group in GROUPS + ["experiment"]:
        assert (CONF / group).is_dir(), group
    assert {"fixed", "automatic", "per_layer"} <= {o for g, o in OPTIONS if g == "clipping"}
    assert {"full"} <= {o for g, o in OPTIONS if g == "finetune"}
    assert {"poisson", "poisson_masked", "shuffle"} <= {o for g, o in OPTIONS if g == "sampler"}
    assert {"digits_dp", "digits_nonprivate", "mnist1d_dp", "cifar10_wrn_dp",
            "cifar10_vit_dp"} <= set(EXPERIMENTS)  # fmt: skip


def build(cfg, group: str, tmp_path: Path):
    node = cfg[group]
    if group == "model":
        if node._target_.endswith("HFTextClassifier"):  # text models: no input channels
            return instantiate(node, num_classes=10)
        return instantiate(node, num_classes=10, in_channels=3 if "vit" in node._target_ else 1)
    if group == "logger":
        return instantiate(node, save_dir=str(tmp_path), run_config=cfg, _recursive_=False)
    if group == "trainer":
        from dpresearch.train import instantiate_trainer

        return instantiate_trainer(node, logger=False, accelerator="cpu")
    if group == "optimizer":
        import torch

        return instantiate(node)([torch.nn.Parameter(torch.zeros(1))])
    if group == "callbacks":
        from dpresearch.train import build_callbacks

        return build_callbacks(node)
    return instantiate(node)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(compose_cfg, tmp_path, group, option) -> None:
    extra = {  # what these options need to build offline
        "text_files": ["dataset.train=a.csv", "dataset.test=b.csv"],
        "hf_text": ["model.pretrained=false", "model.architecture=bert",
                    "+model.config_overrides.num_hidden_layers=1"],
        "hf_vision": ["model.pretrained=false", "model.architecture=vit",
                      "+model.config_overrides.num_hidden_layers=1"],
        "timm": ["model.pretrained=false"],
    }.get(option, [])  # fmt: skip
    cfg = compose_cfg([f"{group}={option}", *extra])
    if option == "timm" and importlib.util.find_spec("timm") is None:
        with pytest.raises(InstantiationException, match="pip install"):
            build(cfg, group, tmp_path)  # timm needs torchvision, absent on CPU-only torch
        return
    assert build(cfg, group, tmp_path) is not None


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds(compose_cfg, tmp_path, name) -> None:
    cfg = compose_cfg([f"+experiment={name}"])
    assert cfg.name == name
    for group in ("dataset", "model", "clipping", "finetune", "sampler", "privacy", "optimizer"):
        assert build(cfg, group, tmp_path) is not None


def test_experiment_fields_can_be_overridden(compose_cfg) -> None:
    cfg = compose_cfg(["+experiment=digits_dp", "privacy.target_epsilon=1", "trainer.max_epochs=5"])
    assert cfg.privacy.target_epsilon == 1 and cfg.trainer.max_epochs == 5


def test_wrong_option_lists_what_exists(compose_cfg) -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(["dataset=imagenet"])
    assert "digits" in str(err.value) and "cifar10" in str(err.value)
