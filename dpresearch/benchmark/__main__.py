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

from dpresearch.benchmark.runner import benchmark, rows_as_dicts, variants_of
from dpresearch.train import resolve_device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


AXES = ("scope", "sampler", "compile", "physical_batch_size", "precision")


def print_rows(rows: list[dict], title: str) -> None:
    """The table; an axis with one value across all rows is said once in the title."""
    varied = [a for a in AXES if len({r[a] for r in rows}) > 1]
    fixed = ", ".join(f"{a} {rows[0][a]}" for a in AXES if a not in varied) if rows else ""
    table = Table(title=f"{title}\n{fixed}")
    for col in ("method", *varied, "examples/s", "ms/step", "peak MiB",
                "speed vs non-private", "memory vs non-private", "speed vs reference"):  # fmt: skip
        table.add_column(col, justify="left" if col == "method" or col in varied else "right")

    def ratio(value):
        return "n/a" if value is None else f"{value:.2f}x"

    for r in rows:
        table.add_row(
            r["method"],
            *(str(r[a]) for a in varied),
            f"{r['examples_per_s']:.1f}",
            f"{r['ms_per_step']:.1f}",
            f"{r['peak_memory_mb']:.1f}",
            ratio(r["ratio_to_nonprivate"]),
            ratio(r["memory_ratio_to_nonprivate"]),
            ratio(r["ratio_to_reference"]),
        )
    Console(width=max(Console().width, 150)).print(table)


def row_label(row: dict, varied: list[str]) -> str:
    """scope/method, then the values of the axes that vary (a wandb summary key per row)."""
    rest = [f"{a}={row[a]}" for a in AXES[1:] if a in varied]
    return "/".join([row["scope"], row["method"], *rest])


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
    varied = [a for a in AXES if len({r.get(a) for r in record["rows"]}) > 1]
    for r in record["rows"]:
        for key in ("examples_per_s", "peak_memory_mb", "ratio_to_nonprivate"):
            run.summary[f"{row_label(r, varied)}/{key}"] = r[key]
    run.finish()


def key_of(override: str) -> str:
    """The config key an override sets (``++trainer.max_steps=5`` -> trainer.max_steps)."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(user: list[str], variant: list[str], choices: dict) -> list[str]:
    """The user's overrides, less those the variant sets and the settings of a group whose
    option the variant changes (``privacy.*`` under privacy=none), then the variant's."""
    keys = {key_of(o) for o in variant}
    options = {key_of(o): o.split("=", 1)[1] for o in variant}
    switched = [g for g, option in options.items() if g in choices and option != choices[g]]

    def dropped(o: str) -> bool:
        return key_of(o) in keys or any(key_of(o).startswith(f"{g}.") for g in switched)

    kept = [o for o in user if not dropped(o)]
    return kept + variant


def axes_of(cfg: DictConfig, choices: dict) -> dict[str, list]:
    """The bench axes' values; an axis left null takes the run config's own setting."""
    bench = cfg.bench

    def axis(name: str, default):
        value = bench.get(name)
        return list(value) if value is not None else [default]

    physical = min(bench.batch_size, cfg.sampler.max_physical_batch_size)
    return {"scope": list(bench.scopes),
            "sampler": axis("samplers", choices.get("sampler", "poisson")),
            "compile": [bool(c) for c in axis("compile", cfg.trainer.get("compile", False))],
            "physical": [int(p) for p in axis("physical", physical)],
            "precision": [str(p) for p in axis("precision", cfg.trainer.precision)]}  # fmt: skip


def run_benchmark(
    cfg: DictConfig, output_dir: str | Path, choices: dict, task: list[str] | None = None
) -> dict:
    """``task``: the command line's overrides, which every variant's config starts from."""
    from hydra import compose

    bench = cfg.bench
    variants = variants_of(list(bench.methods), axes_of(cfg, choices))
    user = [o for o in (task or []) if not key_of(o).startswith("bench.")]

    def compose_variant(overrides: list[str]) -> DictConfig:
        return compose(config_name="benchmark", overrides=merge_overrides(user, overrides, choices))

    rows, skipped = benchmark(
        compose_variant,
        variants,
        batch_size=bench.batch_size,
        steps=bench.steps,
        warmup=bench.warmup,
        rounds=bench.rounds,
        workdir=Path(output_dir) / "blocks",
    )
    device = resolve_device(cfg.trainer.get("accelerator", "auto"))
    record = {
        "rows": rows_as_dicts(rows),
        "skipped": skipped,
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
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
    for s in skipped:
        Console().print(f"skipped {s['method']} ({s['sampler']}, compile {s['compile']}, "
                        f"{s['precision']}): {s['reason']}")  # fmt: skip
    log_to_wandb(cfg, record, Path(output_dir))
    Console().print(f"wrote {path}")
    return record


@hydra.main(version_base="1.3", config_path="../../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_benchmark(cfg, hydra_cfg.runtime.output_dir, dict(hydra_cfg.runtime.choices),
                  list(hydra_cfg.overrides.task))  # fmt: skip


if __name__ == "__main__":
    main()
