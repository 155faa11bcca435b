"""Plan privacy budgets from the command line.

    python -m dpresearch.privacy epsilon --sample-rate Q --noise-multiplier S --steps T --delta D
    python -m dpresearch.privacy noise --target-epsilon E --sample-rate Q --steps T --delta D
    python -m dpresearch.privacy tuning --distribution truncated_negative_binomial --eta 1
        --mean-trials 10 --delta D  and one of
        --trial-epsilon E                       (each trial epsilon-DP)
        --sample-rate Q --steps T --noise-multiplier S [--score-noise N]   (DP-SGD trials)
        --sample-rate Q --steps T --target-epsilon E [--score-noise N]     (calibrate S)

Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from dpresearch.privacy.accounting import (
    ACCOUNTANTS,
    AccountingError,
    calibrate_noise,
    compute_epsilon,
)
from dpresearch.privacy.tuning import (
    DISTRIBUTIONS,
    ORDERS,
    TrialCount,
    calibrate_trial_noise,
    pure_dp_rdp,
    total_epsilon_of,
    tuning_account,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpresearch.privacy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    eps = sub.add_parser("epsilon", help="epsilon spent by (q, sigma, steps, delta)")
    eps.add_argument("--noise-multiplier", type=float, required=True)
    noise = sub.add_parser("noise", help="noise multiplier that reaches a target epsilon")
    noise.add_argument("--target-epsilon", type=float, required=True)
    for p in (eps, noise):
        p.add_argument("--sample-rate", type=float, required=True)
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--delta", type=float, required=True)
        p.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    tuning = sub.add_parser("tuning", help="epsilon of releasing the best of K random trials")
    tuning_arguments(tuning)
    args = parser.parse_args(argv)
    try:
        if args.command == "tuning":
            result = tuning_result(args, parser)
        elif args.command == "epsilon":
            result = compute_epsilon(
                args.sample_rate, args.noise_multiplier, args.steps, args.delta, args.accountant
            ).to_dict()
            result["epsilon"] = _json_float(result["epsilon"])
        else:
            sigma = calibrate_noise(
                args.target_epsilon, args.sample_rate, args.steps, args.delta, args.accountant
            )
            check = compute_epsilon(
                args.sample_rate, sigma, args.steps, args.delta, args.accountant
            )
            result = {
                "noise_multiplier": sigma,
                "epsilon": check.epsilon,
                "accountant": check.accountant,
                "note": check.note,
            }
    except AccountingError as err:
        print(json.dumps({"error": str(err)}))
        return 2
    print(json.dumps(result))
    return 0


def tuning_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="truncated_negative_binomial")
    p.add_argument("--eta", type=float, help="TNB shape in (-1, inf): 0 logarithmic, 1 geometric")
    p.add_argument("--gamma", type=float, help="TNB parameter in (0, 1) (or give --mean-trials)")
    p.add_argument("--mean-trials", type=float, help="E[K] (Poisson: its mean)")
    p.add_argument("--delta", type=float, required=True, help="the whole procedure's delta")
    p.add_argument("--trial-epsilon", type=float, help="each trial is epsilon-DP (pure)")
    p.add_argument("--sample-rate", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--noise-multiplier", type=float)
    p.add_argument("--target-epsilon", type=float, help="TOTAL epsilon: calibrate the noise")
    p.add_argument("--score-noise", type=float,
                   help="std of the Gaussian noisy count each trial's score adds "
                        "(omit: the validation split is public)")  # fmt: skip


def tuning_result(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The JSON of the ``tuning`` verb: per-trial and total epsilon (and the calibrated
    noise), from a pure-DP trial or from DP-SGD trials."""
    count = TrialCount.from_config(args.distribution, args.eta, args.gamma, args.mean_trials)
    if args.trial_epsilon is not None:
        if any(x is not None for x in (args.sample_rate, args.steps, args.noise_multiplier,
                                       args.target_epsilon)):  # fmt: skip
            parser.error("--trial-epsilon describes the trial: give no DP-SGD parameters")
        curve = pure_dp_rdp(ORDERS, args.trial_epsilon)
        total, order = total_epsilon_of(curve, count, args.delta)
        return {"total_epsilon": total, "delta": args.delta, "order": order,
                "trial_epsilon": args.trial_epsilon, "count": count.to_dict()}  # fmt: skip
    if args.sample_rate is None or args.steps is None:
        parser.error("give --trial-epsilon, or --sample-rate and --steps with "
                     "--noise-multiplier or --target-epsilon")  # fmt: skip
    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        parser.error("give exactly one of --noise-multiplier and --target-epsilon")
    sigma = args.noise_multiplier
    if sigma is None:
        sigma = calibrate_trial_noise(args.target_epsilon, args.sample_rate, args.steps,
                                      args.delta, count, args.score_noise)  # fmt: skip
    account = tuning_account(args.sample_rate, sigma, args.steps, args.delta, count,
                             args.score_noise)  # fmt: skip
    return {**account.to_dict(), "noise_multiplier": sigma}


def _json_float(x: float) -> float | str:
    return x if x == x and abs(x) != float("inf") else str(x)


if __name__ == "__main__":
    sys.exit(main())
