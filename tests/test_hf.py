"""Hugging Face encoders under DP: per-example clipping exact on BERT-family (the real
pretrained MiniLM) and GPT-2 architectures, under every scope; clear errors offline."""

from __future__ import annotations

import copy

import pytest
import torch

from dpresearch.finetune import BiasOnly, Full, LoRA
from dpresearch.models.hf import HFTextClassifier, PretrainedUnavailable
from dpresearch.privacy.spec import FixedClipping
from dpresearch.privacy.validation import resolve_engine
from tests.helpers.references import assert_sums_close, brute_force_sum, engine_sum

NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
}


def tiny(architecture: str) -> HFTextClassifier:
    sizes = {
        "bert": {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                 "intermediate_size": 32, "vocab_size": 60, "max_position_embeddings": 16},
        "gpt2": {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 60, "n_positions": 16},
    }[architecture]  # fmt: skip
    torch.manual_seed(0)
    return HFTextClassifier(3, name=architecture, pretrained=False, architecture=architecture,
                            config_overrides={**sizes, **NO_DROPOUT[architecture]})  # fmt: skip


def minilm() -> HFTextClassifier:
    torch.manual_seed(0)
    return HFTextClassifier(3, config_overrides=NO_DROPOUT["bert"])  # train mode as built


def batch(n: int, length: int, vocab: int = 60) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # one padded sequence
    ids[1, 1] = ids[1, 2]  # a repeated token
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (n,), generator=g)


def check_exact(model, engine: str, n: int = 4, length: int = 8) -> None:
    inputs, y = batch(n, length)
    factors = FixedClipping(max_grad_norm=0.1).factors
    want = brute_force_sum(copy.deepcopy(model), inputs, y, factors)
    got, _ = engine_sum(model, inputs, y, engine, factors)
    assert_sums_close(got, want)


@pytest.mark.parametrize("scope", [Full(), BiasOnly(), LoRA(r=2)], ids=["full", "bias", "lora"])
@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_bk_exact_on_hf_architectures_under_every_scope(architecture: str, scope) -> None:
    model = scope.apply(tiny(architecture))
    for n, p in model.named_parameters():
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.5)
    assert resolve_engine(model, "auto") == "bk"
    check_exact(model, "bk")


def test_gpt2_conv1d_is_refused_by_opacus_engines_with_bk_named() -> None:
    from dpresearch.privacy.spec import PrivacyConfigError

    with pytest.raises(PrivacyConfigError, match=r"Conv1D.*clipping.engine=bk"):
        resolve_engine(tiny("gpt2"), "hooks")


@pytest.mark.parametrize("engine", ["bk", "hooks", "ghost"])
def test_pretrained_minilm_clipping_exact(engine: str) -> None:
    model = BiasOnly().apply(minilm()) if engine == "hooks" else minilm()
    check_exact(model, engine, n=3, length=12)


def test_pretrained_weights_unavailable_offline_is_a_clear_error() -> None:
    with pytest.raises(PretrainedUnavailable, match="model.pretrained=false"):
        HFTextClassifier(2, name="bert-base-uncased")


def test_the_harness_builds_pretrained_models_in_train_mode(compose_cfg) -> None:
    from hydra.utils import instantiate

    from dpresearch.train import build_model

    cfg = compose_cfg(["+experiment=minilm_sentiment_bias_only_dp"])
    datamodule = instantiate(cfg.dataset)
    datamodule.num_classes = 2  # what the model needs from the data, without loading it
    model = build_model(cfg.model, datamodule, instantiate(cfg.finetune))
    assert all(m.training for m in model.modules())  # dropout on, as in training


@pytest.mark.parametrize("engine", ["bk", "hooks", "ghost"])
@pytest.mark.parametrize("scope", ["bias_only", "lora", "full"])
def test_offline_minilm_experiment_runs_end_to_end(compose_cfg, tmp_path, scope, engine) -> None:
    """What `python run.py +experiment=minilm_sentiment_<scope>_dp clipping.engine=<engine>`
    does, shortened: the pretrained model trains (in train mode) under every engine."""
    import json

    from dpresearch.train import run

    cfg = compose_cfg([f"+experiment=minilm_sentiment_{scope}_dp", "logger=csv",
                       "extras.print_config=false", "trainer.enable_progress_bar=false",
                       "trainer.max_epochs=1", "dataset.n_train=128", "dataset.n_test=32",
                       "run.checkpoint=false", f"clipping.engine={engine}",
                       "sampler.max_physical_batch_size=16",
                       f"dataset.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    summary = run(cfg, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and saved["engine"] == engine
    assert saved["finetune"] == scope and saved["total_params"] > 22_000_000
    fraction = {"bias_only": (1e-3, 2e-3), "lora": (1e-3, 1e-2), "full": (1.0, 1.0)}[scope]
    assert fraction[0] <= saved["trainable_fraction"] <= fraction[1]
    assert saved["test_accuracy"] is not None and 0 < saved["epsilon"] <= 3.0
