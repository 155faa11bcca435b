"""What the run prints: the resolved config at start, the result table at the end (rich)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

TABLE_KEYS = (
    ("test_accuracy", "test accuracy", "{:.4f}"),
    ("val_accuracy", "val accuracy", "{:.4f}"),
    ("epsilon", "epsilon", "{:.4g}"),
    ("delta", "delta", "{:.1e}"),
    ("noise_multiplier", "noise multiplier", "{:.4g}"),
    ("sample_rate", "sample rate", "{:.4g}"),
    ("steps", "steps", "{}"),
    ("train_examples_per_s", "examples/s", "{:.1f}"),
    ("wall_s", "wall time (s)", "{:.1f}"),
)


def print_config(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            text = OmegaConf.to_yaml(value, resolve=True)
            tree.add(str(key)).add(Syntax(text, "yaml", theme="ansi_dark"))
        else:
            tree.add(f"{key}: {value}")
    Console().print(tree)


def print_summary(summary: dict) -> None:
    title = f"{summary.get('experiment')} ({'DP' if summary.get('private') else 'non-private'})"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    marked = set(summary.get("nonprivate_metrics") or ())
    for key, label, fmt in TABLE_KEYS:
        value = summary.get(key)
        if key == "val_accuracy" and "val_acc" in marked:
            label += " (non-private)"  # the validation split is not declared public
        table.add_row(label, "n/a" if value is None else fmt.format(value))
    if summary.get("accounting_matches_sampler") is False:
        table.caption = (
            "[bold red]WARNING: fixed-size shuffled batches; the accountant assumes Poisson "
            "sampling, so this epsilon is not a proven guarantee[/]"
        )
    Console().print(table)
