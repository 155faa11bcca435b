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
import resource
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from dpresearch.privacy.audit_bounds import audit
from dpresearch.privacy.auditing import (
    CANARIES,
    ExampleCanaries,
    GradientCanaries,
    InputCanaries,
)
from dpresearch.privacy.conformance import CONFORMANCE, NOT_COVERED, ConformanceChecks
from dpresearch.privacy.sabotage import BUGS, InjectedBug
from dpresearch.train import run

KINDS = {
    "gradient": (GradientCanaries, "gradient (white-box, every step observed)"),
    "input": (InputCanaries, "input (black-box, final model's loss on mislabeled examples)"),
    "example": (
        ExampleCanaries,
        "example (white-box: crafted examples through the run's "
        "sampler and engine, every step observed)",
    ),
    "none": (None, "no canaries (conformance checks only)"),
}


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _target(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def run_audit(cfg: DictConfig, output_dir: str | Path, choices: dict | None = None) -> dict:
    options = cfg.audit
    if options.kind not in KINDS:
        raise ValueError(f"audit.kind={options.kind!r} is not one of {list(KINDS)}")
    if options.sabotage not in BUGS:
        raise ValueError(f"audit.sabotage={options.sabotage!r} is not one of {list(BUGS)}")
    if cfg.trainer.get("ddp") is not None and options.kind != "none":
        raise ValueError("canaries audit one process at a time: drop trainer=ddp, or run the "
                         "conformance checks alone (audit.kind=none)")  # fmt: skip
    if options.kind == "none" and not options.checks:
        raise ValueError("audit.kind=none with audit.checks=false audits nothing: set one")
    kind, description = KINDS[options.kind]
    with open_dict(cfg):  # canaries, the injected bug and the checks join as callbacks
        cfg.callbacks = cfg.get("callbacks") or {}
        if kind is not None:
            cfg.callbacks.audit_canaries = {
                "_target_": _target(kind), "canaries": options.canaries,
                "seed": options.seed, "sabotage": options.sabotage,
            }  # fmt: skip
        if options.checks:  # before the bug: it checks the mechanism the bug breaks
            cfg.callbacks.audit_checks = {"_target_": _target(ConformanceChecks),
                                          "false_alarm": options.false_alarm}  # fmt: skip
        if options.sabotage != "none":
            cfg.callbacks.audit_sabotage = {"_target_": _target(InjectedBug),
                                            "bug": options.sabotage}  # fmt: skip
    start, wall = _cpu_seconds(), time.monotonic()
    summary = run(cfg, output_dir, choices)
    if rank_zero_only.rank != 0:  # under DDP, rank 0 audits (and writes) alone
        return {}
    claimed = summary["epsilon"]
    record: dict = {"claimed_epsilon": claimed, "private": False, "note": NOT_COVERED}
    if kind is not None:
        canaries = json.loads((Path(output_dir) / CANARIES).read_text())
        scores = {name: np.array(values) for name, values in canaries["scores"].items()}
        methods = {name: tuple(test) for name, test in canaries["methods"].items()}
        result = audit(scores, np.array(canaries["included"]), summary["delta"],
                       options.confidence, tuple(options.guess_fractions), methods)  # fmt: skip
        record.update(result.to_dict(), steps=canaries["steps"])
    checks = canaries.get("checks", []) if kind is not None else []
    if options.checks:
        checks += json.loads((Path(output_dir) / CONFORMANCE).read_text())["checks"]
    flagged = [c["name"] for c in checks if c["passed"] is False]
    bound = record.get("epsilon_lower_bound", 0.0)
    record.update(
        checks=checks,
        flagged=flagged,
        violated=bound > claimed,
        consistent=bound <= claimed and not flagged,
        sabotage=options.sabotage,
        kind=description,
        cpu_seconds=_cpu_seconds() - start,  # this process and its finished children
        wall_seconds=time.monotonic() - wall,
        experiment=summary.get("experiment"),
        test_accuracy=summary.get("test_accuracy"),
        noise_multiplier=summary.get("noise_multiplier"),
        sample_rate=summary.get("sample_rate"),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
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
    for name, bound in record.get("bounds", {}).items():
        table.add_row(f"lower bound, {name} ({bound['score']}; correct / guesses)",
                      f"{bound['epsilon_lower_bound']:.3f} ({bound['correct']} / "
                      f"{bound['guesses']})")  # fmt: skip
    if "bounds" in record:
        table.add_row(f"tightest lower bound ({record['confidence']:.0%}, all at once)",
                      f"{record['epsilon_lower_bound']:.3f}")  # fmt: skip
        table.add_row("canaries (included)", f"{record['canaries']} ({record['included']})")
    for check in record["checks"]:
        mark = {True: "pass", False: "FLAGGED", None: "not run"}[check["passed"]]
        table.add_row(f"check {check['name']}: {check['detail']}", mark)
    if record["consistent"]:
        verdict = "consistent"
    else:
        reasons = (["the bound exceeds the claim"] if record["violated"] else []) + [
            f"{name} flagged" for name in record["flagged"]
        ]
        verdict = "INCONSISTENT: " + ", ".join(reasons)
    table.add_row("verdict", verdict)
    table.add_row("CPU time (s)", f"{record['cpu_seconds']:.0f}")
    Console().print(table)
    Console().print(f"wrote {path}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_audit(cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices))


if __name__ == "__main__":
    main()
