"""`python -m dpresearch.benchmark [run.py overrides] bench.methods=[...] bench.steps=N`.

Prints a table and writes benchmark.json (rows with method, examples_per_s, peak_memory_mb,
ratio_to_nonprivate; the config; the device) to the Hydra output folder or ``bench.output``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from dpresearch.benchmark.runner import benchmark, rows_as_dicts
from dpresearch.finetune.scopes import BiasOnly, Full, HeadOnly, LoRA, Scope
from dpresearch.train import build, resolve_device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def print_rows(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in ("scope", "method", "examples/s", "ms/step", "peak MiB", "speed vs non-private",
                "memory vs non-private", "speed vs non-private full"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("scope", "method") else "right")

    def ratio(value):
        return "n/a" if value is None else f"{value:.2f}x"

    for r in rows:
        table.add_row(
            r["scope"],
            r["method"],
            f"{r['examples_per_s']:.1f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['peak_memory_mb']:.1f}",
            ratio(r["ratio_to_nonprivate"]),
            ratio(r["memory_ratio_to_nonprivate"]),
            ratio(r["ratio_to_nonprivate_full"]),
        )
    Console().print(table)


SCOPES = {"full": Full, "head_only": HeadOnly, "bias_only": BiasOnly, "lora": LoRA}


def scope_for(name: str, cfg: DictConfig) -> Scope:
    """The scope called ``name``: the ``finetune`` group's own if it is that one (with its
    overrides), else that scope with its defaults."""
    if name not in SCOPES:
        raise ValueError(f"bench.scopes: unknown scope {name!r}; choose from {list(SCOPES)}")
    finetune = build(cfg.finetune)
    return finetune if finetune.name == name else SCOPES[name]()


def log_to_wandb(cfg: DictConfig, record: dict, output_dir: Path) -> None:
    """With logger=wandb, one wandb run of job_type "benchmark": the rows as a table, and each
    method's numbers in the summary (offline unless logged in, like training runs)."""
    if not str(cfg.logger.get("_target_", "")).endswith("wandb_logger"):
        return
    import wandb

    from dpresearch.tracking.loggers import wandb_mode

    output_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.logger.get("project", "dpresearch"), group=cfg.name,
                     job_type="benchmark", dir=str(output_dir), mode=wandb_mode(cfg.logger.mode)[0],
                     config={"choices": record["choices"], "bench": record["config"]["bench"],
                             "device": record["device"]})  # fmt: skip
    columns = list(record["rows"][0])
    data = [[r[c] for c in columns] for r in record["rows"]]
    run.log({"benchmark": wandb.Table(columns=columns, data=data)})
    for r in record["rows"]:
        for key in ("examples_per_s", "peak_memory_mb", "ratio_to_nonprivate"):
            run.summary[f"{r['scope']}/{r['method']}/{key}"] = r[key]
    run.finish()


def run_benchmark(cfg: DictConfig, output_dir: str | Path, choices: dict) -> dict:
    torch.manual_seed(cfg.seed)
    bench = cfg.bench
    datamodule = build(cfg.dataset)
    clipping = build(cfg.clipping)
    sampling = build(cfg.sampler)
    model = build(cfg.model, **datamodule.model_kwargs())
    scopes = {name: scope_for(name, cfg) for name in bench.scopes}
    device = resolve_device(cfg.trainer.get("accelerator", "auto"))
    rows = benchmark(
        model,
        lambda seed: datamodule.synthetic_batch(bench.batch_size, seed),
        list(bench.methods),
        scopes=scopes,
        optimizer_factory=hydra.utils.instantiate(cfg.optimizer),
        factors=clipping.factors,
        per_layer=clipping.per_layer,
        batch_size=bench.batch_size,
        physical=min(bench.batch_size, sampling.max_physical_batch_size),
        steps=bench.steps,
        warmup=bench.warmup,
        noise_std=1.0 * clipping.max_grad_norm,  # sigma=1: noise costs the same at any sigma
        device=device,
    )
    record = {
        "rows": rows_as_dicts(rows),
        "device": device_name(device),
        "torch": torch.__version__,
        "choices": choices,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    path = Path(bench.output) if bench.output else Path(output_dir) / "benchmark.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    title = (
        f"{choices.get('model', '')} on {choices.get('dataset', '')}, batch {bench.batch_size}, "
        f"{record['device']}"
    )
    print_rows(record["rows"], title)
    log_to_wandb(cfg, record, Path(output_dir))
    Console().print(f"wrote {path}")
    return record


@hydra.main(version_base="1.3", config_path="../../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_benchmark(cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices))


if __name__ == "__main__":
    main()
