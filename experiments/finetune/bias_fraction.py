"""How much of each model the scopes train, counted by the code: bias_only (every bias plus a
2-class head), lora (rank 8, per-architecture targets, plus head), head_only. MiniLM is the
real pretrained package; BERT-base and GPT-2 are built from their default configs (random
weights, no download: the counts do not depend on the weights)."""

from __future__ import annotations

import csv
from pathlib import Path

from dpresearch.finetune import BiasOnly, HeadOnly, LoRA, parameter_counts
from dpresearch.models.hf import HFTextClassifier

HERE = Path(__file__).resolve().parent
MODELS = {
    "all-MiniLM-L6-v2": dict(name="sentence-transformers/all-MiniLM-L6-v2"),
    "BERT-base": dict(name="bert-base-uncased", pretrained=False, architecture="bert"),
    "GPT-2 (124M)": dict(name="gpt2", pretrained=False, architecture="gpt2"),
}


def main() -> None:
    rows = []
    for label, kwargs in MODELS.items():
        model = HFTextClassifier(2, **kwargs)
        total = parameter_counts(model)["total_params"]
        biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
        head = sum(p.numel() for p in model.head.parameters())
        own = biases - model.head.bias.numel()  # the encoder's biases, without the new head
        row = {"model": label, "total_params": total, "bias_params": own,
               "bias_fraction": own / total}  # fmt: skip
        for scope in (BiasOnly(), LoRA(), HeadOnly()):
            counts = parameter_counts(scope.apply(HFTextClassifier(2, **kwargs)))
            row[f"{scope.name}_fraction"] = counts["trainable_fraction"]
        row["head_params"] = head
        rows.append(row)
        print(row)
    with open(HERE / "bias_fraction.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
