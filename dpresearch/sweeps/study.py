"""An Optuna study from config: storage (resumable, shareable), sampler, pruner, search space."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "threshold", "none")


def make_storage(url: str) -> optuna.storages.BaseStorage | str:
    """``sqlite:///file.db`` or any RDB URL (shared by SLURM workers on one filesystem or
    server), or ``journal:///path/file.log`` (a journal file, for filesystems without locks
    SQLite trusts)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.split(":", 1)[1].lstrip("/")
        path = "/" + path if url.startswith("journal:///") else path
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ValueError(
            f"hydra.sweeper.storage={url!r}: give an RDB URL (sqlite:///path.db, "
            "postgresql://...) or journal:///path.log"
        )
    return url


def distributions(params: Mapping[str, Mapping[str, Any]]) -> dict:
    """{name: {key: optimizer.lr, type: float, low, high, log}} or {type: categorical,
    choices: [...]}, by config key. Short names keep command-line overrides readable
    (hydra.sweeper.params.lr.high=0.1); the key is the config path a trial overrides."""
    if not params:
        raise ValueError("hydra.sweeper.params is empty: nothing to search")
    out = {}
    for name, spec in params.items():
        key = spec.get("key", name)
        kind = spec.get("type")
        if kind == "float":
            out[key] = optuna.distributions.FloatDistribution(
                float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
        elif kind == "int":
            out[key] = optuna.distributions.IntDistribution(
                int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
            )
        elif kind == "categorical":
            out[key] = optuna.distributions.CategoricalDistribution(list(spec["choices"]))
        else:
            raise ValueError(
                f"hydra.sweeper.params.{name}: type must be float, int or categorical, got {kind!r}"
            )
    return out


def make_sampler(spec: Mapping[str, Any], space: dict) -> optuna.samplers.BaseSampler:
    name, seed = spec.get("name", "tpe"), spec.get("seed")
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=int(spec.get("n_startup_trials", 5))
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {}
        for key, dist in space.items():
            if not isinstance(dist, optuna.distributions.CategoricalDistribution):
                raise ValueError(
                    f"sampler=grid needs a list of values for {key}: "
                    "{type: categorical, choices: [...]}"
                )
            grid[key] = list(dist.choices)
        return _AskTellGrid(grid, seed=seed)
    raise ValueError(f"hydra.sweeper.sampler.name must be one of {SAMPLERS}, got {name!r}")


class _AskTellGrid(optuna.samplers.GridSampler):
    """GridSampler calls study.stop() when the grid is used up, which only works inside
    study.optimize; the sweeper asks and tells, and stops at n_trials (capped at the grid)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None

    @property
    def size(self) -> int:
        return len(self._all_grids)


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    if not spec or spec.get("name", "none") == "none":
        return optuna.pruners.NopPruner()
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 3)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 2)),
        )
    if spec["name"] == "threshold":  # prune below `lower` (or above `upper`) after warm-up
        return optuna.pruners.ThresholdPruner(
            lower=spec.get("lower"), upper=spec.get("upper"),
            n_warmup_steps=int(spec.get("n_warmup_steps", 0)),
        )  # fmt: skip
    raise ValueError(f"hydra.sweeper.pruner.name must be one of {PRUNERS}, got {spec['name']!r}")


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)  # fmt: skip


def open_study(url: str, name: str, sampler, pruner, direction: str) -> optuna.Study:
    """Create or load the study. Workers started together (a SLURM array) race to create the
    storage's tables and the study; the losers retry and load what the winner made."""
    import random
    import time

    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(20):
        try:
            return optuna.create_study(study_name=name, storage=make_storage(url),
                                       sampler=sampler, pruner=pruner, direction=direction,
                                       load_if_exists=True)  # fmt: skip
        except (IntegrityError, OperationalError, optuna.exceptions.DuplicatedStudyError):
            if attempt == 19:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
