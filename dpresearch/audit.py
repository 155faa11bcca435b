"""`python -m dpresearch.audit +experiment=NAME`: an empirical lower bound on the run's epsilon.

Trains the configured run once with canaries: white-box gradient canaries inside the DP
strategy (``audit.kind=gradient``, the strongest, fast) or mislabeled input examples in the
training set scored by the final model's loss (``audit.kind=input``). Then it guesses which
canaries were included from their scores and turns the number of correct guesses into a
lower bound on epsilon at ``audit.confidence``. A correct implementation gives a bound below
the epsilon it claims; a bound above the claim means the run does not deliver its guarantee.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from dpresearch.privacy.audit_bounds import audit
from dpresearch.privacy.auditing import CANARIES, GradientCanaries, InputCanaries
from dpresearch.train import run

KINDS = {
    "gradient": (GradientCanaries, "gradient (white-box, every step observed)"),
    "input": (InputCanaries, "input (black-box, final model's loss on mislabeled examples)"),
}


def run_audit(cfg: DictConfig, output_dir: str | Path, choices: dict | None = None) -> dict:
    options = cfg.audit
    if cfg.trainer.get("ddp") is not None:
        raise ValueError("audit one process at a time: drop trainer=ddp")
    if options.kind not in KINDS:
        raise ValueError(f"audit.kind={options.kind!r} is not one of {list(KINDS)}")
    kind, description = KINDS[options.kind]
    with open_dict(cfg):  # the canaries join the run as one of its callbacks
        cfg.callbacks = cfg.get("callbacks") or {}
        cfg.callbacks.audit_canaries = {
            "_target_": f"{kind.__module__}.{kind.__name__}", "canaries": options.canaries,
            "seed": options.seed, "sabotage": options.sabotage,
        }  # fmt: skip
    summary = run(cfg, output_dir, choices)
    canaries = json.loads((Path(output_dir) / CANARIES).read_text())
    scores = {name: np.array(values) for name, values in canaries["scores"].items()}
    methods = {name: tuple(test) for name, test in canaries["methods"].items()}
    result = audit(scores, np.array(canaries["included"]), summary["delta"],
                   options.confidence, tuple(options.guess_fractions), methods)  # fmt: skip
    claimed = summary["epsilon"]
    record = {
        "claimed_epsilon": claimed,
        **result.to_dict(),
        "consistent": result.epsilon_lower_bound <= claimed,
        "sabotage": options.sabotage,
        "kind": description,
        "steps": canaries["steps"],
        "experiment": summary.get("experiment"),
        "test_accuracy": summary.get("test_accuracy"),
        "noise_multiplier": summary.get("noise_multiplier"),
        "sample_rate": summary.get("sample_rate"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    path = Path(options.output) if options.output else Path(output_dir) / "audit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print_result(record, path)
    return record


def print_result(record: dict, path: Path) -> None:
    table = Table(title=f"privacy audit of {record['experiment']}: {record['kind']}, "
                        f"sabotage {record['sabotage']}")  # fmt: skip
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("claimed epsilon", f"{record['claimed_epsilon']:.3f}")
    for name, bound in record["bounds"].items():
        table.add_row(f"lower bound, {name} ({bound['score']}; correct / guesses)",
                      f"{bound['epsilon_lower_bound']:.3f} ({bound['correct']} / "
                      f"{bound['guesses']})")  # fmt: skip
    table.add_row(f"tightest lower bound ({record['confidence']:.0%}, all at once)",
                  f"{record['epsilon_lower_bound']:.3f}")  # fmt: skip
    table.add_row("canaries (included)", f"{record['canaries']} ({record['included']})")
    verdict = "consistent" if record["consistent"] else "INCONSISTENT: the claim is violated"
    table.add_row("verdict", verdict)
    Console().print(table)
    Console().print(f"wrote {path}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_audit(cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices))


if __name__ == "__main__":
    main()
