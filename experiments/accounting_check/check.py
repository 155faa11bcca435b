"""Reported epsilon against independent references on a grid of (q, sigma, steps, delta).

Reference interval for the true epsilon: Google's dp-accounting PLD with an optimistic and a
pessimistic discretization (the truth lies between them); at q=1 also the exact Gaussian
composition (scipy's normal CDF, closed form). A reported epsilon below the optimistic end is
certainly below the truth: the worst bug an accountant can have.

    python experiments/accounting_check/check.py OUT_DIR [--plot-only]
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
import time
from pathlib import Path

from dp_accounting.pld import privacy_loss_distribution as pld
from scipy.optimize import brentq
from scipy.stats import norm

from dpresearch.privacy.accounting import compute_epsilon

QS = [0.001, 0.01, 0.1, 0.5, 1.0]
SIGMAS = [0.6, 1.0, 2.0, 5.0, 20.0]
STEPS = [10, 1000, 30000]
DELTAS = [1e-3, 1e-5]


def pld_epsilon(q, sigma, steps, delta, pessimistic: bool, interval: float) -> float:
    dist = pld.from_gaussian_mechanism(
        standard_deviation=sigma, sensitivity=1.0, sampling_prob=q,
        value_discretization_interval=interval, pessimistic_estimate=pessimistic,
        use_connect_dots=pessimistic,  # the optimistic end: privacy buckets
    )  # fmt: skip
    return max(float(dist.self_compose(steps).get_epsilon_for_delta(delta)), 0.0)


def exact_gaussian(sigma, steps, delta) -> float:
    mu = math.sqrt(steps) / sigma

    def gap(eps: float) -> float:  # in log space: e^eps overflows at large budgets
        second = math.exp(eps + norm.logcdf(-mu / 2 - eps / mu))
        return norm.cdf(mu / 2 - eps / mu) - second - delta

    if gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2
    return brentq(gap, 0.0, hi, xtol=1e-12)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for q, sigma, steps, delta in itertools.product(QS, SIGMAS, STEPS, DELTAS):
        t0 = time.perf_counter()
        ours = compute_epsilon(q, sigma, steps, delta)
        seconds = time.perf_counter() - t0
        interval = 1e-4 if ours.epsilon < 50 else 1e-3
        try:
            low = pld_epsilon(q, sigma, steps, delta, False, interval)
            high = pld_epsilon(q, sigma, steps, delta, True, interval)
        except Exception as err:  # noqa: BLE001 - recorded, not hidden
            low = high = float("nan")
            print(f"PLD failed at {(q, sigma, steps, delta)}: {err}", file=sys.stderr)
        exact = exact_gaussian(sigma, steps, delta) if q == 1.0 else None
        truth_low = exact if exact is not None else low
        rows.append({
            "q": q, "sigma": sigma, "steps": steps, "delta": delta,
            "reported": ours.epsilon, "answered_by": ours.accountant,
            "pld_optimistic": low, "pld_pessimistic": high, "exact_gaussian": exact,
            "below_truth": ours.epsilon < truth_low - 1e-9 * max(1.0, truth_low),
            "over_pessimistic": ours.epsilon / high if high > 0 else None,
            "seconds": round(seconds, 3),
        })  # fmt: skip
        print(rows[-1], flush=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "reported_vs_reference.png")
    below = sum(r["below_truth"] for r in rows)
    print(f"{len(rows)} cases; reported below the truth's lower end: {below}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for by, marker in [("prv", "o"), ("pld", "s"), ("rdp", "^"), ("exact", "D")]:
        pts = [r for r in rows if r["answered_by"] == by and r["over_pessimistic"]]
        ax.scatter([float(r["pld_pessimistic"]) for r in pts],
                   [float(r["over_pessimistic"]) for r in pts],
                   marker=marker, label=f"answered by {by} ({len(pts)})", alpha=0.7)  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("reference epsilon (dp-accounting PLD, pessimistic)")
    ax.set_yscale("log")
    ax.set_ylabel("reported / PLD pessimistic")
    ax.set_title(
        "Reported epsilon against dp-accounting's PLD (pessimistic, finer grid)\n"
        "none below the truth's lower end; at q=1 ours is the exact value",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/accounting_check")
    if "--plot-only" in sys.argv:  # redraw from results.csv
        with open(folder / "results.csv") as f:
            plot(list(csv.DictReader(f)), folder / "reported_vs_reference.png")
    else:
        main(folder)
