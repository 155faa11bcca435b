"""An Optuna study from config: storage (resumable, shareable), sampler, pruner, search space."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "threshold", "none")


STORAGE_ENV = "DPRESEARCH_OPTUNA_STORAGE"


def redact(url: str) -> str:
    """The URL with its password, if any, replaced by ***: for logs and records."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def trial_storage(url: str) -> str:
    """How a trial's config names the study's storage: the URL itself, or, when it holds a
    password, ``env:`` and the environment variable that carries it to the trial's process
    (so the password is in no saved config, override list or path)."""
    if not urlsplit(url).password:
        return url
    os.environ[STORAGE_ENV] = url
    return f"env:{STORAGE_ENV}"


def make_storage(url: str, heartbeat_s: int | None = None) -> optuna.storages.BaseStorage:
    """``sqlite:///file.db`` or any RDB URL (shared by SLURM workers on one filesystem or
    server), or ``journal:///path/file.log`` (a journal file, for filesystems without locks
    SQLite trusts). A file's folder must exist (SQLite would otherwise retry for seconds and
    fail without naming it). With ``heartbeat_s``, the running trials of a worker that died
    (SIGKILL, a lost node) become FAIL after three missed heartbeats (RDB storages).
    ``env:NAME`` reads the URL from the environment variable NAME."""
    if url.startswith("env:"):
        name = url[len("env:") :]
        if not os.environ.get(name):
            raise ValueError(f"storage {url}: the environment variable {name} is not set")
        url = os.environ[name]
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.split(":", 1)[1].lstrip("/")
        path = "/" + path if url.startswith("journal:///") else path
        _check_folder(url, Path(path))
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ValueError(
            f"hydra.sweeper.storage={redact(url)!r}: give an RDB URL (sqlite:///path.db, "
            "postgresql://...) or journal:///path.log"
        )
    if url.startswith("sqlite:///"):
        _check_folder(url, Path(url[len("sqlite:///") :]))
    beat = (
        {"heartbeat_interval": heartbeat_s, "grace_period": 3 * heartbeat_s} if heartbeat_s else {}
    )
    return optuna.storages.RDBStorage(url, **beat)


def _check_folder(url: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise ValueError(
            f"hydra.sweeper.storage={url}: the folder {path.parent} does not exist; "
            f"create it (mkdir -p {path.parent}) or give another path"
        )


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage (None: it keeps none)."""
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)()


_SEEN: set[tuple[str, int, int]] = set()  # (storage, study, trial) touched by this process


def fail_stale(study: optuna.Study) -> None:
    """FAIL the running trials of workers that died. Optuna's ``fail_stale_trials`` never fails
    a RUNNING trial without any heartbeat, which is what a worker killed between creating a
    trial and its first beat leaves (seen in CI: the resumed sweep waited for it forever).
    Each running trial this worker sees for the first time gets one heartbeat from it, so a
    trial nobody beats goes stale after the grace period; a living one only looks younger."""
    storage = study._storage
    if heartbeat_interval(study):
        backend = getattr(storage, "_backend", storage)  # under Optuna's cache
        where = str(getattr(backend, "url", id(backend)))
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            key = (where, study._study_id, trial._trial_id)
            if key not in _SEEN:
                _SEEN.add(key)
                with contextlib.suppress(Exception):  # finished meanwhile: nothing to record
                    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(study)


@contextmanager
def heartbeats(study: optuna.Study, trial_ids: list[int]) -> Iterator[None]:
    """Record the trials' heartbeats while they run (from the process that launched them, so a
    trial on a SLURM node counts as alive while its sweeper waits for it)."""
    storage = study._storage  # Optuna records heartbeats only inside study.optimize
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            for trial_id in trial_ids:
                with contextlib.suppress(Exception):  # a finished trial: nothing to record
                    storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def check_search_space(study: optuna.Study, space: dict) -> None:
    """One study, one search space: the first sweep stores its space in the study, and a sweep
    with another space is refused naming both (its trials would be compared with the wrong
    ones, or lack their parameters)."""
    ours = {key: optuna.distributions.distribution_to_json(d) for key, d in space.items()}
    stored = study.user_attrs.get("search_space")
    if stored is None:
        study.set_user_attr("search_space", ours)
    elif stored != ours:
        raise ValueError(
            f"study {study.study_name!r} searches {_describe(stored)}, but this sweep searches "
            f"{_describe(ours)}: give this sweep its own hydra.sweeper.study_name, or the "
            "study's space"
        )


def _describe(space: dict) -> str:
    parts = []
    for key, text in sorted(space.items()):
        d = optuna.distributions.json_to_distribution(text)
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            parts.append(f"{key} in {list(d.choices)}")
        else:
            parts.append(f"{key} in [{d.low}, {d.high}]{' log' if d.log else ''}")
    return "{" + "; ".join(parts) + "}"


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


def make_sampler(
    spec: Mapping[str, Any], space: dict, offset: int = 0
) -> optuna.samplers.BaseSampler:
    """The sampler; a seed is shifted by ``offset`` (the trials the study already holds), so
    a restarted sweep continues its search instead of proposing its first trials again."""
    name, seed = spec.get("name", "tpe"), spec.get("seed")
    if seed is not None:
        seed = int(seed) + offset
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


def open_study(
    url: str, name: str, sampler_spec: Mapping[str, Any], space: dict, pruner, direction: str,
    heartbeat_s: int | None = None,
) -> optuna.Study:  # fmt: skip
    """Create or load the study, check its search space, and give it a sampler seeded past
    its trials. Workers started together (a SLURM array) race to create the storage's tables
    and the study; the losers retry and load what the winner made."""
    import random
    import time

    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(20):
        try:
            study = optuna.create_study(study_name=name, storage=make_storage(url, heartbeat_s),
                                        sampler=make_sampler(sampler_spec, space),
                                        pruner=pruner, direction=direction,
                                        load_if_exists=True)  # fmt: skip
            break
        except (IntegrityError, OperationalError, optuna.exceptions.DuplicatedStudyError):
            if attempt == 19:
                raise
            time.sleep(0.2 + random.random())
    check_search_space(study, space)
    fail_stale(study)
    if study.trials:
        study.sampler = make_sampler(sampler_spec, space, offset=len(study.trials))
    return study


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def started_trials(study: optuna.Study) -> int:
    """Finished trials plus those running (in any worker): what counts against n_trials."""
    running = (optuna.trial.TrialState.RUNNING,)
    return finished_trials(study) + len(study.get_trials(deepcopy=False, states=running))
