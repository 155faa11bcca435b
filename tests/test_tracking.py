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
