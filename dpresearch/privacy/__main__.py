"""Plan privacy budgets from the command line.

    python -m dpresearch.privacy epsilon --sample-rate Q --noise-multiplier S --steps T --delta D
    python -m dpresearch.privacy noise --target-epsilon E --sample-rate Q --steps T --delta D

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
    args = parser.parse_args(argv)
    try:
        if args.command == "epsilon":
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


def _json_float(x: float) -> float | str:
    return x if x == x and abs(x) != float("inf") else str(x)


if __name__ == "__main__":
    sys.exit(main())
