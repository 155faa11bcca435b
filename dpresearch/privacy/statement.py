"""The privacy statement every run writes: what was guaranteed, for what, and what was not.

Reviewers ask for the guarantee stated completely (Ponomareva et al. 2023, "How to DP-fy ML",
section 5.3). The statement is built from what the run DID (the steps taken, the sampler that
drew the batches, the randomness that was used, the metrics that were written), never from the
request. It goes to ``privacy_statement.md`` and under ``privacy_statement`` in summary.json.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dpresearch.tracking.callbacks import is_nonprivate

PUBLIC_PARAMETERS = {"epsilon", "dp_steps", "noise_multiplier", "sample_rate"}


@dataclass
class RunFacts:
    """What the run did, gathered by train.run (the summary holds the rest)."""

    summary: dict
    randomness: str | None  # None: a non-private run
    released_metrics: set[str] = field(default_factory=set)
    nonprivate: tuple[str, ...] = ()
    public_validation: bool = False
    label_source: str | None = None
    sweep_trial: bool = False
    pruning: bool = False
    checkpoints: bool = True
    resumed_steps: int = 0  # DP steps the resumed checkpoint had already taken
    # Callbacks that choose what is released by a metric: (callbacks.NAME, what, monitor).
    selections: list[tuple[str, str, str]] = field(default_factory=list)
    tuning: dict | None = None  # a trial of a private selection: the plan's tuning record

    def private_selection(self) -> bool:
        """Whether every selection reads only covered metrics (or there is none)."""
        return not any(is_nonprivate(m, self.nonprivate) for _, _, m in self.selections)


def sweep_text(facts: RunFacts) -> str:
    """How the statement describes the selection among trials, if any."""
    t = facts.tuning
    if t:
        count = t["count"]
        poisson = count["distribution"] == "poisson"
        what = (f"K ~ Poisson(mean {count['mean_trials']:.3g})" if poisson
                else f"K ~ truncated negative binomial (eta {count['eta']:g}, gamma "
                     f"{count['gamma']:.4g}, mean {count['mean_trials']:.3g})")  # fmt: skip
        return (
            f"this run is one trial of a PRIVATE selection (Papernot-Steinke random "
            f"stopping, {what}; score: {t['score_mechanism']['kind']}): releasing the best "
            f"trial spends epsilon {t['total_epsilon']:.4g} at delta {t['delta']:g} in all "
            f"(this trial alone: {t['trial_epsilon']:.4g} by RDP, training and score)"
        )
    if facts.sweep_trial:
        return (
            "this run is one trial of a sweep: choosing among trials is NOT accounted "
            "(the epsilon is this trial's alone)"
        )
    return "a single run: no selection among runs"


def metric_policy(
    private: bool, train_metrics: bool | str, public_validation: bool
) -> tuple[str | None, tuple[str, ...]]:
    """(the name prefix of training-batch metrics or None, the names marked non-private).

    Non-private runs log everything as usual. Private runs do not log training-batch
    metrics unless asked (``run.train_metrics=true``), and then as ``nonprivate/train_*``;
    validation metrics are marked non-private unless the split is declared public."""
    if train_metrics not in ("auto", True, False):
        raise ValueError(f"run.train_metrics must be auto, true or false, got {train_metrics!r}")
    if not private:
        return (None if train_metrics is False else "train"), ()
    prefix = "nonprivate/train" if train_metrics is True else None
    nonprivate = ("nonprivate/",) + (() if public_validation else ("val_acc", "val_loss"))
    return prefix, nonprivate


def code_version() -> dict:
    """The git commit of this code and whether the working tree differed from it."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=10, check=True)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "note": "not a git checkout"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _metric(name: str, facts: RunFacts) -> dict:
    if is_nonprivate(name, facts.nonprivate):
        why = "computed from the private training batches, outside the accountant"
        if name.startswith("val_"):
            why = (
                "computed on the validation split, carved from the private pool and not "
                "declared public (dataset.public_validation=false); outside the accountant"
            )
        return {"what": f"metric {name}", "covered": False, "why": why}
    if name in PUBLIC_PARAMETERS:
        why = "a function of the mechanism's public parameters (sigma, q, steps, delta)"
    elif name == "clip_norm":
        why = ("adaptive clipping's threshold: a function of the noised counts of unclipped "
               "examples, which the accountant covers (post-processing)")  # fmt: skip
    elif name == "train_examples_per_s":
        why = "counts the public expected batch size per step, not the realised batches"
        if facts.randomness is None:
            why = "non-private run"
    elif name.startswith("val_"):
        why = "computed on the validation split, declared public (dataset.public_validation)"
    elif name.startswith("test_"):
        why = ("computed on the held-out test split, which is not training data: the guarantee "
               "is about the training set and says nothing about these examples")  # fmt: skip
        return {"what": f"metric {name}", "covered": False, "why": why}
    else:
        why = "non-private run" if facts.randomness is None else "not classified: treat as not DP"
        return {"what": f"metric {name}", "covered": False, "why": why}
    return {"what": f"metric {name}", "covered": facts.randomness is not None, "why": why}


def privacy_statement(facts: RunFacts) -> dict:
    s = facts.summary
    private = bool(s.get("private"))
    chosen = [f"{name} ({what} by {monitor})" for name, what, monitor in facts.selections]
    if not private:
        why = "non-private run"
    elif facts.private_selection():
        why = "post-processing of the noised updates" + (
            f"; chosen by {', '.join(chosen)} on covered metrics" if chosen else ""
        )
    else:
        why = (
            f"chosen by {', '.join(chosen)}: a metric of the validation split, which is "
            "not covered (declare it public with dataset.public_validation=true)"
        )
    released = [
        {"what": "final model weights", "covered": private and facts.private_selection(),
         "why": why},
    ]  # fmt: skip
    if facts.checkpoints:
        secure = facts.randomness == "secure"
        correlated = (s.get("noise") or {}).get("buffers", 0) > 0
        released.append({
            "what": "checkpoints/last.ckpt", "covered": private and secure and not correlated,
            "why": ("holds the correlated noise of the last steps (the mechanism's state), "
                    "from which a reader can remove the correlated part of later noise: keep "
                    "it private; release the weights only") if private and correlated else
                   ("model, optimizer and loop state only: the noise and sampling randomness "
                    "are never saved (randomness=secure)") if secure else
                   ("holds the seeded noise and sampler generators, from which the noise and "
                    "batches can be replayed: keep it private; release the weights only")
                   if private else "non-private run",
        })  # fmt: skip
    released += [_metric(m, facts) for m in sorted(facts.released_metrics)]
    released.append({
        "what": "timing: summary.json wall_s, metrics.jsonl time and elapsed_s",
        "covered": False,
        "why": "wall-clock time grows with the realised batch sizes, which are a function of "
               "the private data: a side channel outside the accountant",
    })  # fmt: skip
    released.append({
        "what": "summary.json, config.yaml (hyperparameters, dataset size, this statement)",
        "covered": private, "why": "public parameters of the mechanism; the dataset size N is "
        "treated as public (the sample rate q = E/N is computed from it)",
    })  # fmt: skip
    if facts.label_source not in (None, "the dataset's definition", "config"):
        released.append({"what": "the label set", "covered": False,
                         "why": f"read from the private files ({facts.label_source}); give "
                                "dataset.labels to make it public"})  # fmt: skip
    statement: dict = {
        "setting": "central differential privacy: one trusted party holds the data and trains; "
        "the guarantee is about what the run releases",
        "private": private,
        "status": s.get("status"),
        "released": released,
        "code": code_version(),
    }
    if not private:
        statement["guarantee"] = "none: a non-private run (privacy=none)"
        return statement
    poisson = bool(s.get("accounting_matches_sampler"))
    n = s.get("num_train")
    delta = s.get("delta")
    covered = f"the {s.get('steps')} DP-SGD steps of this run"
    if facts.resumed_steps:
        covered += (f", of which {facts.resumed_steps} were taken before the resume (their "
                    "epsilon is included)")  # fmt: skip
    by_user = s.get("privacy_unit") == "user"
    statement.update(
        guarantee=guarantee(s.get("epsilon"), delta, poisson, "user" if by_user else "example"),
        unit="user" if by_user else "example",
        neighbouring_relation=(
            "add/remove one user with all of their examples: users are Poisson-sampled, "
            f"each sampled user contributes up to {s.get('examples_per_user')} of their "
            "examples, whose summed gradient is clipped once (the accountants analyse the "
            "Poisson-subsampled Gaussian over users)"
            if by_user
            else "add/remove one example (the accountants analyse the "
            "Poisson-subsampled Gaussian under add/remove)"
        ),  # fmt: skip
        data_accesses={
            "covered": covered,
            "sweep": sweep_text(facts),
            "validation": (
                "the validation split is declared public"
                if facts.public_validation
                else "the validation split (carved from the private pool, not "
                "trained on) is read at every evaluation; its metrics are NOT "
                "covered and are marked non-private"
            ),
            "pruning": (
                "trials are pruned on validation metrics: NOT accounted"
                if facts.pruning
                else "none"
            ),
            "selection": "; ".join(
                f"{name} chooses {what} by {monitor}"
                + ("" if not is_nonprivate(monitor, facts.nonprivate) else ": NOT accounted")
                for name, what, monitor in facts.selections
            )
            or "none: the model of the last step is released",
        },  # fmt: skip
        mechanism={
            "name": mechanism_name(s.get("noise")),
            "noise": s.get("noise"),
            "clipping": s.get("clipping"),
            "engine": s.get("engine"),
            "per_example_gradients": per_example_gradients(s.get("self_check")),
            "augmentations": (
                f"{s['augmentations']} augmented views of each sampled example, their gradients "
                "averaged before clipping (one clipped contribution per example)"
                if (s.get("augmentations") or 1) > 1
                else "1 (no augmentation multiplicity)"
            ),  # fmt: skip
            "max_grad_norm": s.get("max_grad_norm"),
            "noise_multiplier": s.get("noise_multiplier"),
            "noise_std": "noise_multiplier * max_grad_norm, on the sum of clipped gradients"
            if s.get("clipping") != "adaptive"
            else f"gradient_noise_multiplier ({s.get('gradient_noise_multiplier')}) times the "
            "step's adaptive threshold on the sum of clipped gradients, and "
            f"count_noise ({s.get('count_noise')}) on the centred count of unclipped "
            "examples: together one Gaussian mechanism of multiplier noise_multiplier "
            "(Andrew et al. 2021, Thm. 1), which is what the accountant composes",
            "normaliser": f"the public constant expected_batch_size={s.get('expected_batch_size')}"
            " (not the realised batch size)",
            "sample_rate": s.get("sample_rate"),
            "steps": s.get("steps"),
            "world_size": s.get("world_size"),
        },  # fmt: skip
        sampler={
            "name": s.get("sampler"),
            "poisson": poisson,
            "accountant_assumption_holds": poisson,
            "note": sampler_note(s, poisson),
            "participations": s.get("participations"),
        },
        accounting={
            "accountant": s.get("accountant"),
            "epsilon": s.get("epsilon"),
            "epsilon_estimate": s.get("epsilon_estimate"),
            "epsilon_lower": s.get("epsilon_lower"),
            "delta": delta,
            "num_train": n,
            **({"num_users": s.get("num_users")} if by_user else {}),
            "delta_times_n": (
                delta * (s.get("num_users") if by_user else n) if delta and n else None
            ),
            "note": s.get("accountant_note"),
            "reported": "an upper bound: the larger of the PRV and PLD bounds (or RDP where "
            "tighter; the exact Gaussian composition at q=1)",
        },  # fmt: skip
        randomness={
            "mode": facts.randomness,
            "meaning": "noise and batch sampling from the OS's cryptographic generator, never "
            "recorded; dropout and augmentation are seeded (the guarantee holds for any fixed "
            "value of them)"
            if facts.randomness == "secure"
            else "noise AND batch sampling follow the run's seed (recorded in config.yaml): "
            "reproducible, but anyone who knows the seed can replay the noise and the "
            "batches, which voids the guarantee; do not publish the seed, or use "
            "privacy.randomness=secure",
        },
    )
    return statement


def per_example_gradients(check: dict | None) -> str:
    """What the clipping bound rests on: the engine's self-check on this model, or nothing."""
    if not check or check.get("enabled") is False:
        return (
            "NOT checked on this model (clipping.self_check=false): the clipping "
            "bound, and so the guarantee, rest on the engine's rules for every layer"
        )
    return (f"the {check.get('engine')} engine matched a brute-force loop over single examples "
            f"on {check.get('examples')} synthetic examples before training (largest relative "
            f"error {check.get('max_rel_error'):.1e}, {check.get('dtype')})")  # fmt: skip


def guarantee(epsilon: float | str | None, delta: float | None, poisson: bool,
              unit: str = "example") -> str:  # fmt: skip
    if not poisson:
        return "none proven: the sampler does not match the accountant"
    if epsilon is None or delta is None:
        return "not computed: the run ended before its privacy was accounted"
    eps = f"{epsilon:.4g}" if isinstance(epsilon, float) else str(epsilon)
    if unit == "user":
        return f"({eps}, {delta:g})-DP for each user (user-level: all of a user's examples)"
    return f"({eps}, {delta:g})-DP for each training example"


def statement_markdown(statement: dict) -> str:
    """privacy_statement.md: the same fields, for people."""
    lines = ["# Privacy statement", "", f"- Setting: {statement['setting']}",
             f"- Guarantee: {statement.get('guarantee')}",
             f"- Run status: {statement.get('status')}"]  # fmt: skip
    for key in ("unit", "neighbouring_relation"):
        if key in statement:
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {statement[key]}")
    for section in ("data_accesses", "mechanism", "sampler", "accounting", "randomness", "code"):
        if section in statement:
            lines += ["", f"## {section.replace('_', ' ').capitalize()}", ""]
            lines += [f"- {k}: {v}" for k, v in statement[section].items()]
    lines += ["", "## Released", "", "| what | covered by the guarantee | why |", "|---|---|---|"]
    lines += [f"| {r['what']} | {'yes' if r['covered'] else 'NO'} | {r['why']} |"
              for r in statement["released"]]  # fmt: skip
    return "\n".join(lines) + "\n"


def mechanism_name(noise: dict | None) -> str:
    kind = (noise or {}).get("mechanism")
    if kind == "banded_mf":
        return (f"BandMF: per-example clipping, correlated Gaussian noise (C^-1 z)_t from a "
                f"{noise.get('bands')}-banded Toeplitz strategy, once per step")  # fmt: skip
    if kind == "blt":
        return (f"BLT: per-example clipping, correlated Gaussian noise (C^-1 z)_t from a "
                f"buffered linear Toeplitz strategy with {noise.get('buffers')} buffers, once "
                "per step")  # fmt: skip
    return "DP-SGD: per-example clipping, Gaussian noise once per step"


def sampler_note(s: dict, poisson: bool) -> str:
    period = s.get("participation_period") or 1
    noise = s.get("noise") or {}
    if poisson and noise.get("mechanism") == "blt":
        return (f"cyclic: each example belongs to one of {period} groups (a keyed hash of its "
                f"content) and can join only the steps of its group's residue mod {period}; "
                "accounted without amplification, as one Gaussian mechanism on C x at noise "
                f"multiplier sigma / {noise.get('sensitivity', 0):.4g}, the sensitivity of the "
                f"BLT over the {s.get('participations')} possible participations")  # fmt: skip
    if poisson and period > 1:
        return (f"cyclic Poisson: each example belongs to one of {period} groups (a keyed hash of "
                f"its content) and can join only the steps of its group's residue mod {period}, "
                "each with probability q; the accountant composes its "
                f"{s.get('participations')} possible participations at q (amplified BandMF, "
                "Choquette-Choo et al. 2023, Thm. 4)")  # fmt: skip
    if poisson and s.get("privacy_unit") == "user":
        return ("each user joins each step independently with probability q (expected users "
                "per step / users)")  # fmt: skip
    if poisson:
        return "each example joins each step independently with probability q"
    return ("fixed-size shuffled batches: the reported epsilon assumes Poisson sampling and is "
            "NOT a guarantee for this run")  # fmt: skip
