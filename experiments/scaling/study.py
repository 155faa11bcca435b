"""The scaling study: throughput against world size, measured here and projected to 80 GPUs.

    python -m experiments.scaling.study --out experiments/scaling [--worlds 1 2] [--rounds 2]
        [-- run.py overrides]

Measure: for each round, world size and method (non-private, DP bk, DP hooks; order rotated
per round) one ``python run.py trainer=ddp_cpu trainer.devices=W`` job with one thread per
process, reading examples/s and the all-reduce time from its summary.json. Model: fit the
step-time model (``step_time``) to the one-process numbers and check it against the
measured larger world. Project: the same model with GPU assumptions (all stated in
``--help`` and written next to the CSVs) to 80 GPUs on 10 nodes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from experiments.scaling.step_time import (
    Workload,
    expected_max_share,
    fit_overhead,
    hierarchical_allreduce_s,
)

ROOT = Path(__file__).resolve().parents[2]
NOISE = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]  # no calibration
METHODS = {
    "nonprivate": ["privacy=none"],
    "dp_bk": ["clipping.engine=bk", *NOISE],
    "dp_hooks": ["clipping.engine=hooks", *NOISE],
}
# The measured workload: the default small CNN on digits, 6 epochs (30 steps at batch 256).
WORKLOAD = ["dataset=digits", "model=small_cnn", "sampler.max_physical_batch_size=256",
            "trainer.max_epochs=6"]  # fmt: skip
QUIET = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the CSVs and the figure")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="processes to measure")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--rounds", type=int, default=2, help="repetitions (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (cores each)")
    p.add_argument("--measure-batch", type=int, default=256, help="logical batch measured here")
    p.add_argument("--project-only", action="store_true", help="reuse <out>/measured.csv")
    g = p.add_argument_group("GPU projection (assumptions, not measurements)")
    g.add_argument("--params", type=float, default=86.6e6, help="ViT-B/16's parameter count")
    g.add_argument(
        "--gpu-nonprivate-ex-s",
        type=float,
        default=1000.0,
        help="non-private examples/s of one GPU (an A100-class order of magnitude)",
    )
    g.add_argument(
        "--engines-csv",
        type=Path,
        default=ROOT / "experiments/engines/results.csv",
        help="DP cost factors: each engine's ratio_to_nonprivate on --engines-workload",
    )
    g.add_argument("--engines-workload", default="vit_micro")
    g.add_argument("--batch", type=int, default=4096, help="logical batch (expected size)")
    g.add_argument("--dataset-size", type=int, default=1_281_167, help="ImageNet-1k's train set")
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument(
        "--intra-gbps",
        type=float,
        default=150.0,
        help="all-reduce bus bandwidth inside a node, GB/s (NVLink)",
    )
    g.add_argument(
        "--inter-gbps",
        type=float,
        default=12.5,
        help="network bandwidth per node, GB/s (100 Gb/s InfiniBand)",
    )
    g.add_argument("--latency-us", type=float, default=10.0, help="per ring hop, microseconds")
    g.add_argument(
        "--gpu-step-overhead-ms",
        type=float,
        default=2.0,
        help="per-step time that does not parallelize (the optimizer update)",
    )
    g.add_argument("--max-gpus", type=int, default=80)
    p.add_argument("overrides", nargs="*", help="run.py overrides after `--`")
    return p.parse_args(argv)


def measure_one(
    method: str, world: int, folder: Path, args: argparse.Namespace, extra: tuple = ()
) -> dict:
    cmd = [sys.executable, str(ROOT / "run.py"), *QUIET, *WORKLOAD, *METHODS[method],
           "trainer=ddp_cpu", f"trainer.devices={world}",
           f"sampler.expected_batch_size={args.measure_batch}", *args.overrides, *extra,
           f"hydra.run.dir={folder}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {world} processes failed:\n{done.stderr[-3000:]}")
    s = json.loads((folder / "summary.json").read_text())
    return {
        "method": method,
        "world_size": world,
        "examples_per_s": s["train_examples_per_s"],
        "allreduce_ms_per_step": s["allreduce_ms_per_step"],
        "allreduce_mb_per_step": s["allreduce_mb_per_step"],
        "expected_batch_size": s["expected_batch_size"],
        "num_train": s["num_train"],
        "steps": s["steps"],
    }


def _allreduce_worker(rank: int, world: int, port: int, numel: int, repeats: int, out: str):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    flat, times = torch.ones(numel), []
    for i in range(repeats + 5):
        dist.barrier()  # start together: time the communication, not waiting for a straggler
        start = time.perf_counter()
        dist.all_reduce(flat)
        if i >= 5:
            times.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(json.dumps(statistics.median(times)))
    dist.destroy_process_group()


def allreduce_ms(world: int, nbytes: float, repeats: int = 50) -> float:
    """Median milliseconds of one gloo all-reduce of ``nbytes`` over ``world`` processes here,
    started together (the training runs' all-reduce time also holds the wait for the slowest
    rank)."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    if world == 1:
        return 0.0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "t.json")
        mp.spawn(_allreduce_worker, args=(world, port, int(nbytes // 4), repeats, out),
                 nprocs=world)  # fmt: skip
        return 1000 * json.loads(Path(out).read_text())


def measure(args: argparse.Namespace) -> list[dict]:
    """Every (method, world) job per round, plus one process at half the batch (to separate
    the per-step overhead from the per-example cost)."""
    jobs = []
    for r in range(args.rounds):
        order = args.methods[r % len(args.methods) :] + args.methods[: r % len(args.methods)]
        jobs += [(r, m, w, False) for w in args.worlds for m in order]
        jobs += [(r, m, 1, True) for m in order]
    rows = []
    for r, m, w, half in track(jobs, description="scaling jobs"):
        extra = (f"sampler.expected_batch_size={args.measure_batch // 2}",) if half else ()
        name = f"round{r}_{m}_w{w}" + ("_half" if half else "")
        row = measure_one(m, w, args.out / "runs" / name, args, extra)
        row["pure_allreduce_ms"] = allreduce_ms(w, row["allreduce_mb_per_step"] * 2**20)
        rows.append({"round": r, **row})
    return rows


def medians(rows: list[dict]) -> dict[tuple[str, int, int], dict]:
    """Median over rounds per (method, world size, expected batch size)."""
    out: dict[tuple[str, int, int], dict] = {}
    for key in {(r["method"], r["world_size"], r["expected_batch_size"]) for r in rows}:
        group = [r for r in rows
                 if (r["method"], r["world_size"], r["expected_batch_size"]) == key]  # fmt: skip
        keys = ("examples_per_s", "allreduce_ms_per_step", "pure_allreduce_ms")
        med = {k: statistics.median(r[k] for r in group) for k in keys}
        out[key] = {**group[0], **med}
    return out


def check_model(rows: list[dict]) -> list[dict]:
    """Fit (o, c) from one process at two batch sizes; predict every larger world from the
    all-reduce measured alone (the even split leaves no straggler in the model)."""
    med = medians(rows)
    checks = []
    for (method, world, batch), m in sorted(med.items()):
        one, half = med.get((method, 1, batch)), med.get((method, 1, batch // 2))
        if one is None or half is None:
            continue
        overhead, c = fit_overhead(batch, one["examples_per_s"], half["examples_per_s"])
        work = Workload(c, 0, batch, m["num_train"], step_overhead_s=overhead)
        predicted = work.throughput(world, m["pure_allreduce_ms"] / 1000)
        share = expected_max_share(m["num_train"], m["expected_batch_size"], world, False)
        checks.append({
            "method": method, "world_size": world,
            "measured_examples_per_s": m["examples_per_s"],
            "model_examples_per_s": predicted,
            "speedup": m["examples_per_s"] / one["examples_per_s"],
            "allreduce_ms_in_training": m["allreduce_ms_per_step"],
            "allreduce_ms_alone": m["pure_allreduce_ms"],
            "allreduce_mb_per_step": m["allreduce_mb_per_step"],
            "slowest_rank_share": share / m["expected_batch_size"],
            "fit_step_overhead_ms": 1000 * overhead, "fit_us_per_example": 1e6 * c,
        })  # fmt: skip
    return checks


def dp_cost_factors(path: Path, workload: str) -> dict[str, float]:
    """Non-private time per example -> each engine's, from the engines benchmark's CSV."""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["workload"] == workload]
    if not rows:
        raise ValueError(f"no rows for workload {workload!r} in {path}")
    return {r["method"]: 1 / float(r["ratio_to_nonprivate"]) for r in rows}


def project(args: argparse.Namespace) -> tuple[list[dict], dict]:
    factors = dp_cost_factors(args.engines_csv, args.engines_workload)
    c = 1 / args.gpu_nonprivate_ex_s
    lines = {
        # label: (cost factor, independent per-rank shares, overlap of all-reduce and backward)
        "non-private (overlapped all-reduce)": (1.0, False, 1.0),
        "non-private (no overlap)": (1.0, False, 0.0),
        "DP bk (Poisson, even split: ours)": (factors["dp_bk"], False, 0.0),
        "DP hooks (Poisson, even split)": (factors["dp_hooks"], False, 0.0),
        "DP bk (Poisson per-rank shards)": (factors["dp_bk"], True, 0.0),
    }
    worlds = [w for w in sorted({1, 2, 4, 8, 16, 32, 48, 64, args.max_gpus}) if w <= args.max_gpus]
    nbytes = 4 * args.params
    rows = []
    for label, (factor, independent, overlap) in lines.items():
        work = Workload(c * factor, nbytes, args.batch, args.dataset_size, independent, overlap,
                        step_overhead_s=args.gpu_step_overhead_ms / 1000)  # fmt: skip
        base = work.throughput(1, 0.0)
        for w in worlds:
            links = (args.intra_gbps * 1e9, args.inter_gbps * 1e9, args.latency_us * 1e-6)
            comm = hierarchical_allreduce_s(nbytes, w, args.gpus_per_node, *links)
            x = work.throughput(w, comm)
            compute = work.step_s(w, 0.0)
            rows.append({
                "method": label, "gpus": w, "examples_per_s": x,
                "speedup": x / base, "efficiency": x / (w * base),
                "step_ms_without_allreduce": 1000 * compute, "allreduce_ms": 1000 * comm,
                "slowest_rank_share": expected_max_share(
                    args.dataset_size, args.batch, w, independent) * w / args.batch,
            })  # fmt: skip
    assumptions = {k: v for k, v in vars(args).items() if k not in ("out", "overrides")}
    assumptions["dp_cost_factors"] = factors
    return rows, {k: _relative(v) if isinstance(v, Path) else v for k, v in assumptions.items()}


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def plot(checks: list[dict], projection: list[dict], path: Path, projected: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for method in sorted({c["method"] for c in checks}):
        pts = sorted((c for c in checks if c["method"] == method), key=lambda c: c["world_size"])
        w = [p["world_size"] for p in pts]
        (line,) = left.plot(w, [p["measured_examples_per_s"] for p in pts], "o-", label=method)
        left.plot(w, [p["model_examples_per_s"] for p in pts], "x--", color=line.get_color())
    left.set(xlabel="CPU processes (1 thread each, gloo)", ylabel="examples / s",
             title="Measured here (o) and the model fitted at 1 process (x)")  # fmt: skip
    left.set_xticks(sorted({c["world_size"] for c in checks}))
    left.legend(fontsize=8)
    for method in dict.fromkeys(r["method"] for r in projection):
        pts = [r for r in projection if r["method"] == method]
        right.plot([p["gpus"] for p in pts], [p["efficiency"] for p in pts], "o-", label=method)
    right.set(xlabel="GPUs (8 per node)", ylabel="scaling efficiency = speedup / GPUs",
              title=f"Projected (model + assumptions.json): {projected}",
              ylim=(0, 1.05))  # fmt: skip
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def print_tables(checks: list[dict], projection: list[dict]) -> None:
    table = Table(title="measured (medians) and the model")
    for col in ("method", "W", "examples/s", "model", "speedup", "all-reduce ms (in training)",
                "all-reduce ms (alone)", "slowest share"):  # fmt: skip
        table.add_column(col, justify="left" if col == "method" else "right")
    for c in checks:
        table.add_row(c["method"], str(c["world_size"]), f"{c['measured_examples_per_s']:.0f}",
                      f"{c['model_examples_per_s']:.0f}", f"{c['speedup']:.2f}x",
                      f"{c['allreduce_ms_in_training']:.2f}", f"{c['allreduce_ms_alone']:.2f}",
                      f"{c['slowest_rank_share']:.3f}")  # fmt: skip
    Console().print(table)
    table = Table(title="projected scaling efficiency")
    gpus = sorted({r["gpus"] for r in projection})
    table.add_column("method")
    for g in gpus:
        table.add_column(str(g), justify="right")
    for method in dict.fromkeys(r["method"] for r in projection):
        eff = {r["gpus"]: r["efficiency"] for r in projection if r["method"] == method}
        table.add_row(method, *(f"{eff[g]:.2f}" for g in gpus))
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    measured_csv = args.out / "measured.csv"
    if args.project_only:
        with open(measured_csv) as f:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    else:
        rows = measure(args)
        write_csv(measured_csv, rows)
    checks = check_model(rows)
    projection, assumptions = project(args)
    write_csv(args.out / "model_check.csv", checks)
    write_csv(args.out / "projection.csv", projection)
    (args.out / "assumptions.json").write_text(json.dumps(assumptions, indent=2) + "\n")
    projected = f"{args.params / 1e6:.0f}M params, batch {args.batch}"
    plot(checks, projection, args.out / "scaling.png", projected)
    print_tables(checks, projection)


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    main()
