"""The wandb mode is decided by wandb's own record of a login (the host it writes to netrc
changes between versions), and said."""

from __future__ import annotations

import pytest

from dpresearch.tracking.loggers import wandb_mode


@pytest.fixture
def netrc(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))

    def write(host: str | None) -> None:
        path.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n" if host else "")
        path.chmod(0o600)

    return write


def configured_host() -> str:
    from urllib.parse import urlsplit

    from wandb.sdk import wandb_setup

    return urlsplit(wandb_setup.singleton().settings.base_url).netloc


def test_a_login_for_the_host_wandb_uses_goes_online(netrc) -> None:
    netrc(configured_host())  # wandb 0.31: api.forge.coreweave.com, not api.wandb.ai
    assert wandb_mode() == ("online", "logged in")


def test_the_classic_host_still_counts_as_logged_in(netrc) -> None:
    netrc("api.wandb.ai")  # wandb reads its upstream's entry too
    assert wandb_mode()[0] == "online"


def test_no_login_stays_offline_and_says_how_to_upload(netrc) -> None:
    netrc(None)
    mode, why = wandb_mode()
    assert mode == "offline" and "wandb sync" in why


def test_the_choice_made_explicitly_wins(netrc, monkeypatch) -> None:
    netrc(configured_host())
    assert wandb_mode("offline") == ("offline", "logger.mode")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == ("disabled", "WANDB_MODE")


def test_extras_silence_only_the_known_harmless_warnings_and_tips(caplog) -> None:
    import logging
    import warnings

    from dpresearch.extras import Extras

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Extras(ignore_warnings=True).apply()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", stacklevel=1)
        warnings.warn(
            "The `srun` command is available on your system but is not used.", stacklevel=1
        )
        warnings.warn("a warning about the user's own run", stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning about the user's own run"]
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging ...")
        rank_zero_info("a real message")
    assert "a real message" in caplog.text and "Tip" not in caplog.text


def test_tags_reach_the_summary(compose_cfg, tmp_path) -> None:
    from dpresearch.train import run

    cfg = compose_cfg(["logger=none", "extras.print_config=false", "trainer.max_epochs=1",
                       "trainer.enable_progress_bar=false", "tags=[ablation,v2]"])  # fmt: skip
    assert run(cfg, tmp_path)["tags"] == ["ablation", "v2"]
