"""What the engine self-check costs before training, per experiment: each engine's check
time (the first includes the brute-force reference), its largest relative error, and the
engine ``auto`` chose. Reads no data: the check's examples are synthetic.

    python experiments/self_check/cost.py [--out experiments/self_check/cost.csv] EXPERIMENT...
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from dpresearch.module import classification_losses
from dpresearch.privacy.self_check import SelfCheck
from dpresearch.privacy.validation import AUTO_ORDER, select_engine
from dpresearch.train import build, build_model

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def measure(experiment: str) -> list[dict]:
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}"])
    torch.manual_seed(cfg.seed)
    datamodule = build(cfg.dataset)
    model = build_model(cfg.model, datamodule, build(cfg.finetune))
    clipping = build(cfg.clipping)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check = SelfCheck(model, classification_losses, datamodule.check_batch(), clipping)
    start = time.perf_counter()
    chosen, results = select_engine(model, "auto", clipping.per_layer, check.run)
    auto_s = time.perf_counter() - start
    rows = [{"experiment": experiment, "engine": "auto", "chose": chosen,
             "seconds": round(auto_s, 3), "max_rel_error": results[chosen].max_rel_error,
             "trainable_parameters": trainable, "dtype": results[chosen].dtype,
             "error": ""}]  # fmt: skip
    for engine in AUTO_ORDER:  # each engine alone (the reference is already computed)
        if engine in results:
            r = results[engine]
        else:
            r = check.run(engine)
        rows.append({"experiment": experiment, "engine": engine, "chose": "",
                     "seconds": round(r.seconds, 3), "max_rel_error": r.max_rel_error,
                     "trainable_parameters": trainable, "dtype": r.dtype,
                     "error": (r.error or "")[:120]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--out", default="experiments/self_check/cost.csv")
    args = parser.parse_args()
    rows = [row for e in args.experiments for row in measure(e)]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
