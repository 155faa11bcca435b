"""Which trial a sweep releases, and what that choice cost: ``selection.json``.

``hydra.sweeper.selection=private``: Papernot-Steinke random stopping. The number of trials K is
drawn once, from the operating system's secure generator, before any trial runs, and kept in the
study's storage (a resumed sweep, and every worker sharing the study, runs the same K; it is
printed and recorded only when the sweep ends). Each trial is an independent DP run with the
same mechanism and releases a DP score; the winner is the best score, and the whole procedure's
epsilon is computed again here, independently of the trials' own plans, from what each trial
recorded (dpresearch/privacy/tuning.py).

``selection=nonprivate`` (today's practice): the best trial by the objective, whose epsilon
covers that trial alone; selection.json says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from dpresearch.atomic import write_atomic
from dpresearch.privacy.tuning import (
    ORDERS,
    TrialCount,
    rdp_to_epsilon,
    selection_floor,
    total_epsilon_of,
    trial_rdp,
)

log = logging.getLogger(__name__)
SELECTIONS = ("nonprivate", "private")
SCORE = "dp_score"  # the summary key a private selection reads
# Search keys that change the mechanism every trial must share (its sample rate, steps, noise,
# data): refused, since the accounting assumes one mechanism repeated.
ACCOUNTED_KEYS = ("privacy.", "dataset.", "sampler.expected_batch_size", "sampler._target_",
                  "trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches",
                  "hydra.sweeper.")  # fmt: skip
K_ATTR = "private_selection_k:"  # one study attribute per draw; the smallest key wins
SPEC_ATTR = "private_selection"


def check_private(config: Any, sampler: Mapping, pruner: Mapping | None, space: Mapping,
                  objective: str, direction: str, tuning: Mapping) -> None:  # fmt: skip
    """Refuse, before any trial runs, a private selection the accounting would not cover."""
    target = str(config.privacy.get("_target_", ""))
    if not target.endswith("DPSpec"):
        raise ValueError("hydra.sweeper.selection=private selects among private trials: "
                         "use privacy=dp (this sweep trains without privacy)")  # fmt: skip
    if sampler.get("name", "tpe") != "random":
        raise ValueError(
            f"hydra.sweeper.sampler.name={sampler.get('name', 'tpe')}: a private selection "
            "needs independent trials drawn from a fixed distribution (the accounting repeats "
            "one mechanism); tpe reads earlier trials' scores and grid draws without "
            "replacement. Use hydra.sweeper.sampler.name=random (over categorical choices it "
            "draws grid points uniformly)"
        )
    if pruner and pruner.get("name", "none") != "none":
        raise ValueError(
            f"hydra.sweeper.pruner.name={pruner.get('name')}: pruning reads every trial's "
            "validation accuracy at every epoch, which the private selection does not "
            "account; use hydra.sweeper.pruner.name=none"
        )
    if objective not in ("val_accuracy", SCORE) or direction != "maximize":
        raise ValueError(
            f"hydra.sweeper.objective={objective} ({direction}): a private selection "
            f"maximizes each trial's private score ({SCORE}, the noisy validation accuracy)"
        )
    for key in space:
        if key.startswith(ACCOUNTED_KEYS) or key in ("sampler",):
            raise ValueError(
                f"hydra.sweeper.params searches {key}, which changes the privacy mechanism "
                "from trial to trial; a private selection repeats one mechanism (search "
                "learning rate, clipping threshold, optimizer settings, model width...)"
            )
    if config.privacy.get("noise_seed") is not None:
        raise ValueError(
            f"privacy.noise_seed={config.privacy.noise_seed}: one noise stream for every trial; "
            "a private selection needs independent trials (each gets its own seed): leave "
            "privacy.noise_seed null"
        )
    public = bool(config.dataset.get("public_validation", False))
    noise = tuning.get("score_noise")
    if not public and (noise is None or not float(noise) > 0):
        raise ValueError(
            f"hydra.sweeper.tuning.score_noise={noise}: the selection reads each trial's "
            "validation score, which is private; give it noise (e.g. 5) or declare the "
            "validation split public with dataset.public_validation=true"
        )
    if config.privacy.get("noise_multiplier") is None and not config.privacy.get("target_epsilon"):
        raise ValueError("privacy.target_epsilon (the sweep's TOTAL budget) or "
                         "privacy.noise_multiplier must be set")  # fmt: skip


def check_floor(config: Any, count: TrialCount, score_noise: float | None) -> None:
    """Refuse a total budget that the selection alone already spends (before K is drawn)."""
    target = config.privacy.get("target_epsilon")
    if target is None:
        return
    floor = selection_floor(count, score_noise, float(config.privacy.delta))
    if target <= floor:
        raise ValueError(
            f"privacy.target_epsilon={target}: a private selection among ~{count.mean:g} trials "
            f"with score noise {score_noise} spends {floor:.3g} before any training; raise "
            "privacy.target_epsilon, lower hydra.sweeper.tuning.mean_trials, raise "
            "hydra.sweeper.tuning.score_noise, or declare the validation split public "
            "(dataset.public_validation=true)"
        )


def trial_seed(seed: int, study: str, number: int) -> int:
    """Each trial's own seed (its batches, noise and score noise): the accounting repeats
    INDEPENDENT runs, and trials sharing the sweep's seed would share their noise (their scores
    would then differ only by their exact accuracies). Derived, so a sweep is reproducible."""
    digest = hashlib.sha256(f"{seed}/{study}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def trial_count(tuning: Mapping) -> TrialCount:
    return TrialCount.from_config(tuning.get("distribution", "truncated_negative_binomial"),
                                  tuning.get("eta"), tuning.get("gamma"),
                                  tuning.get("mean_trials"))  # fmt: skip


def trial_overrides(count: TrialCount, score_noise: float | None) -> list[str]:
    """What each trial is told: the distribution (gamma solved once, here) and the score's
    noise; the trial calibrates its noise for the whole procedure."""
    out = ["+sweep_trial.selection=private",
           f"+sweep_trial.tuning.distribution={count.distribution}"]  # fmt: skip
    if count.distribution == "poisson":
        out.append(f"+sweep_trial.tuning.mean_trials={count.mean_trials!r}")
    else:
        out += [
            f"+sweep_trial.tuning.eta={count.eta!r}",
            f"+sweep_trial.tuning.gamma={count.gamma!r}",
        ]
    noise = "null" if score_noise is None else repr(float(score_noise))
    return [*out, f"+sweep_trial.tuning.score_noise={noise}"]


def agree_on_k(study: optuna.Study, count: TrialCount, spec: dict, settle_s: float = 2.0) -> int:
    """K for this study: drawn here (secure source) if no worker drew one, else the drawn one.
    Workers starting together may each draw; every one writes its draw under its own key,
    waits ``settle_s`` and takes the smallest key's, a rule that reads no data, so K keeps its
    distribution. The spec (distribution, score noise) must match a resumed study's."""
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is not None and stored != spec:
        raise ValueError(
            f"study {study.study_name!r} is a private selection with {stored}; this sweep asks "
            f"{spec}: K was drawn for the former. Use its settings or another study_name"
        )
    draws = _draws(study)
    if not draws:
        study.set_user_attr(SPEC_ATTR, spec)
        study.set_user_attr(f"{K_ATTR}{uuid.uuid4().hex}", count.draw())
        time.sleep(settle_s)
        draws = _draws(study)
    return draws[min(draws)]


def _draws(study: optuna.Study) -> dict[str, int]:
    return {k: int(v) for k, v in study.user_attrs.items() if k.startswith(K_ATTR)}


def read_summary(trial: optuna.trial.FrozenTrial) -> dict | None:
    folder = trial.user_attrs.get("output_dir")
    if not folder or not (Path(folder) / "summary.json").is_file():
        return None
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _mechanism(summary: dict) -> tuple | None:
    t = summary.get("tuning") or {}
    q, sigma, steps = (summary.get(k) for k in ("sample_rate", "noise_multiplier", "steps"))
    if not t or q is None or sigma is None or steps is None:
        return None
    return float(q), float(sigma), int(steps), t.get("score_noise")


def private_record(study: optuna.Study, count: TrialCount, k: int, delta: float,
                   total_target: float | None) -> dict:  # fmt: skip
    """selection.json of a private selection: K, the winner by DP score, and the total epsilon
    recomputed from every trial's recorded mechanism (the largest per-trial RDP curve when they
    differ, e.g. a trial stopped early by its budget guard)."""
    trials = study.get_trials(deepcopy=False)
    summaries = {t.number: read_summary(t) for t in trials}
    mechanisms = {m for s in summaries.values() if s and (m := _mechanism(s))}
    record: dict[str, Any] = {
        "selection": "private",
        "method": "random stopping, Papernot and Steinke (ICLR 2022), Theorem 2 (TNB) / 6 "
        "(Poisson); RDP then (epsilon, delta) by Canonne-Kamath-Steinke Prop. 12",
        "distribution": count.to_dict(),
        "k_drawn": k,
        "k_source": "os.urandom (secure), drawn before the first trial",
        "trials": _tally(trials),
        "total_target_epsilon": total_target,
        "delta": delta,
        "covered": "the winner alone: its hyperparameters, final weights and dp_score",
        "not_covered": "k_drawn (the bound needs K hidden: publishing it with the winner is "
        "outside the accountant), every other trial (its folder, its score in "
        "trials.csv and the sweep's figures, the study storage), exact validation accuracies and "
        "nonprivate_choice: the researcher's working records, not for release",
    }
    if mechanisms:
        curves = [trial_rdp(ORDERS, q, s, n, noise) for q, s, n, noise in mechanisms]
        per_trial = np.max(np.stack(curves), axis=0)
        total, order = total_epsilon_of(per_trial, count, delta)
        record.update(total_epsilon=total, order=order,
                      trial_epsilon=rdp_to_epsilon(ORDERS, per_trial, delta),
                      mechanisms=[{"sample_rate": m[0], "noise_multiplier": m[1], "steps": m[2],
                                   "score_noise": m[3]} for m in sorted(mechanisms)],
                      score_mechanism=_score_mechanism(summaries))  # fmt: skip
    else:  # K = 0 (Poisson), or no trial recorded its mechanism
        record.update(total_epsilon=0.0 if k == 0 else None, trial_epsilon=None,
                      note="no trial ran: nothing is released" if k == 0 else
                      "no trial recorded its mechanism: the total cannot be computed")  # fmt: skip
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    scored = [(summaries[t.number].get(SCORE), t) for t in complete if summaries.get(t.number)]
    scored = [(v, t) for v, t in scored if isinstance(v, (int, float)) and math.isfinite(v)]
    if scored:
        value, best = max(scored, key=lambda vt: (vt[0], -vt[1].number))
        record["winner"] = _trial_entry(best, summaries[best.number], SCORE)
        exact = [(summaries[t.number].get("val_accuracy"), t) for _, t in scored]
        exact = [(v, t) for v, t in exact if isinstance(v, (int, float))]
        if exact:
            _, nonpriv = max(exact, key=lambda vt: (vt[0], -vt[1].number))
            record["nonprivate_choice"] = {
                **_trial_entry(nonpriv, summaries[nonpriv.number], "val_accuracy"),
                "note": "the best trial by EXACT validation accuracy (today's practice): NOT "
                        "private; its epsilon covers that one trial, not the choice",
            }  # fmt: skip
    else:
        record["winner"] = None
    return record


def nonprivate_record(study: optuna.Study, objective: str, direction: str) -> dict:
    trials = study.get_trials(deepcopy=False)
    record: dict[str, Any] = {
        "selection": "nonprivate",
        "note": f"the best trial by {objective}: this choice is NOT accounted; the winner's "
                "epsilon covers that one trial, not the sweep (hydra.sweeper.selection=private "
                "accounts it)",
        "trials": _tally(trials),
        "total_epsilon": None,
    }  # fmt: skip
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        pick = max if direction == "maximize" else min
        best = pick(done, key=lambda t: t.value)
        record["winner"] = _trial_entry(best, read_summary(best) or {}, objective)
    else:
        record["winner"] = None
    return record


def _tally(trials: list) -> dict:
    states = [t.state.name for t in trials]
    return {s.lower(): states.count(s) for s in ("COMPLETE", "FAIL", "PRUNED", "RUNNING")
            if states.count(s)}  # fmt: skip


def _score_mechanism(summaries: Mapping) -> dict | None:
    for s in summaries.values():
        if s and (s.get("tuning") or {}).get("score_mechanism"):
            return s["tuning"]["score_mechanism"]
    return None


def _trial_entry(trial, summary: dict, by: str) -> dict:
    return {"number": trial.number, "params": trial.params, "chosen_by": by,
            "dp_score": summary.get(SCORE), "val_accuracy_nonprivate": summary.get("val_accuracy"),
            "test_accuracy": summary.get("test_accuracy"), "trial_training_epsilon":
            summary.get("epsilon"), "output_dir": trial.user_attrs.get("output_dir")}  # fmt: skip


def write_selection(sweep_dir: Path, record: dict) -> Path:
    path = sweep_dir / "selection.json"
    write_atomic(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def mark_winner(record: dict) -> None:
    """The released model's own records carry the whole procedure's epsilon: summary.json
    gets ``tuning_epsilon`` (and ``tuning_delta``, ``selected_by``), the privacy statement a
    line saying so."""
    winner = record.get("winner")
    if not winner or not winner.get("output_dir"):
        return
    folder = Path(winner["output_dir"])
    path = folder / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("the winner's summary %s cannot be read (%s): it does not carry "
                    "tuning_epsilon; selection.json does", path, err)  # fmt: skip
        return
    summary.update(tuning_epsilon=record.get("total_epsilon"), tuning_delta=record.get("delta"),
                   selected_by=record["selection"])  # fmt: skip
    write_atomic(path, json.dumps(summary, indent=2) + "\n")
    statement = folder / "privacy_statement.md"
    heading = "## Released by a private selection"
    if (statement.is_file() and record["selection"] == "private"
            and heading not in statement.read_text()):  # fmt: skip
        write_atomic(statement, statement.read_text() + (
            f"\n{heading}\n\nThis trial won a private selection among "
            f"K = {record['k_drawn']} trials; the released model's guarantee is the whole "
            f"procedure's: epsilon {record['total_epsilon']:.4g} at delta {record['delta']:g} "
            f"(selection.json in the sweep folder).\n"))  # fmt: skip


def log_selection(config: Any, record: dict, sweep_dir: Path) -> None:
    """With the wandb logger: one run of job_type ``selection`` per sweep, whose summary holds
    the released model's test accuracy at the epsilon its release spent (the sweep's total
    for a private selection, its trial's for a non-private one) and whose ``setting`` names
    the kind of selection, so the wandb Report draws released models apart from trials."""
    logger = config.get("logger") or {}
    if not str(logger.get("_target_", "")).endswith("wandb_logger"):
        return
    from dpresearch.report.selections import selection_row
    from dpresearch.tracking.loggers import wandb_mode

    row = selection_row(sweep_dir, record)
    if row is None:
        return
    import wandb

    mode, _ = wandb_mode(logger.get("mode"))
    kind = "private" if record["selection"] == "private" else "non-private (NOT accounted)"
    run = wandb.init(project=logger.get("project"), group=logger.get("group"), mode=mode,
                     job_type="selection", dir=str(sweep_dir), reinit="create_new",
                     name=f"{sweep_dir.name} selection",
                     config={"job_type": "selection", "selection": record["selection"],
                             "setting": f"{kind} selection, {row['method']}, {row['dataset']}",
                             "method": row["method"], "dataset": row["dataset"],
                             "distribution": record.get("distribution"),
                             "winner": (record.get("winner") or {}).get("params")})  # fmt: skip
    # K is not covered (the bound needs it hidden): named non-private, as metrics are.
    run.summary.update({"epsilon": row["epsilon"], "test_accuracy": row["test_accuracy"],
                        "nonprivate/k_trials": row["k"], "trial_epsilon": row["trial_epsilon"],
                        "total_epsilon": record.get("total_epsilon")})  # fmt: skip
    run.finish()
