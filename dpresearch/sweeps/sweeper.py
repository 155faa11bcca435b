"""A Hydra sweeper on current Optuna (the hydra-optuna-sweeper plugin pins optuna < 3).

`python run.py -m hparams_search=lr_vs_clip +experiment=NAME`: every batch of ``n_jobs`` trials
is asked from the study, launched through Hydra's configured launcher (local, or SLURM job
arrays via submitit), and told back: the objective from the run's summary, or FAIL with the
reason (a crash, a NaN, an impossible privacy target), or PRUNED. The study lives in persistent
storage (SQLite in the sweep folder by default), so an interrupted sweep resumes, and several
workers (SLURM jobs) can share one study: each stops when the study holds ``n_trials``
finished trials. After every batch, trials.csv and the figure are rewritten.

Hydra loads sweepers only from the ``hydra_plugins`` package; ``register()`` (called by
run.py) enters this class there, so the project needs no extra top-level package.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from dpresearch.privacy.tuning import TrialCount
from dpresearch.sweeps.results import plot, plot_history, write_trials
from dpresearch.sweeps.selection import (
    SCORE,
    SELECTIONS,
    agree_on_k,
    check_floor,
    check_private,
    log_selection,
    mark_winner,
    nonprivate_record,
    private_record,
    trial_count,
    trial_overrides,
    trial_seed,
    write_selection,
)
from dpresearch.sweeps.study import (
    distributions,
    fail_stale,
    finished_trials,
    heartbeat_interval,
    heartbeats,
    make_pruner,
    open_study,
    redact,
    started_trials,
    trial_storage,
)

log = logging.getLogger(__name__)
PLUGIN_MODULE = "hydra_plugins.dpresearch_optuna_sweeper"


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        objective: str = "val_accuracy",
        direction: str = "maximize",
        study_name: str = "sweep",
        storage: str | None = None,
        sampler: dict | None = None,
        pruner: dict | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: dict | None = None,
        heartbeat_s: int | None = 60,
        selection: str = "nonprivate",
        tuning: dict | None = None,
    ):
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction must be maximize or minimize: {direction}")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        self.objective, self.direction = objective, direction
        self.study_name, self.storage_url = study_name, storage
        self.sampler_spec = dict(sampler or {})
        self.pruner_spec = dict(pruner) if pruner else None
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.space = distributions(params or {})
        self.heartbeat_s = heartbeat_s  # RDB storages: a dead worker's trials FAIL after 3 misses
        if selection not in SELECTIONS:
            raise ValueError(f"hydra.sweeper.selection={selection!r}: choose one of "
                             f"{list(SELECTIONS)}")  # fmt: skip
        self.selection = selection
        self.tuning = dict(tuning or {})
        self.count: TrialCount | None = None
        self.k: int | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _fixed_overrides(self, arguments: list[str]) -> list[str]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                raise ValueError(
                    f"{override.input_line}: the Optuna sweeper searches hydra.sweeper.params; "
                    "for a grid of listed values use the basic sweeper (drop hparams_search)"
                )
            if override.get_key_element() in self.space:
                raise ValueError(f"{override.input_line}: that parameter is being searched")
        return list(arguments)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        fixed = self._fixed_overrides(arguments)
        private = self.selection == "private"
        if private:  # refused before anything is created
            check_private(self.config, self.sampler_spec, self.pruner_spec, self.space,
                          self.objective, self.direction, self.tuning)  # fmt: skip
            self.count = trial_count(self.tuning)
            check_floor(self.config, self.count, self._spec()["score_noise"])
            self.objective = SCORE
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = self.storage_url or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        study = open_study(url, self.study_name, self.sampler_spec, self.space,
                           make_pruner(self.pruner_spec), self.direction,
                           self.heartbeat_s)  # fmt: skip
        if private:
            self.k = self.n_trials = agree_on_k(study, self.count, self._spec())
            print(f"sweep {self.study_name}: PRIVATE selection; K ~ {self._describe_count()} "
                  "drawn from a secure source (revealed when the sweep ends); "
                  "hydra.sweeper.n_trials is not used", flush=True)  # fmt: skip
        sampler_size = getattr(study.sampler, "size", None)
        if sampler_size is not None and self.n_trials > sampler_size:
            log.info("n_trials=%d capped at the grid's %d points", self.n_trials, sampler_size)
            self.n_trials = sampler_size
        if not private:  # a private sweep's count would reveal K
            log.info("study %s in %s: %d of %d trials finished", self.study_name, redact(url),
                     finished_trials(study), self.n_trials)  # fmt: skip
        # Trials running in other workers count against n_trials where heartbeats tell the
        # living from the dead (RDB storages); the worker then waits for them, so its
        # trials.csv and figure hold the whole study.
        beating = heartbeat_interval(study)
        while (done := finished_trials(study)) < self.n_trials:
            started = started_trials(study) if beating else done
            if started >= self.n_trials:
                time.sleep(min(beating, 5))  # a dead worker's trial: FAIL after 3 missed beats
                fail_stale(study)
                continue
            batch = min(self.n_jobs, self.n_trials - started)
            trials = [study.ask(self.space) for _ in range(batch)]
            overrides = [self._overrides(t, fixed, url) for t in trials]
            try:
                with heartbeats(study, [t._trial_id for t in trials]):
                    results = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            except BaseException as err:  # preempted, Ctrl-C: no trial is left RUNNING
                for trial in trials:
                    self._fail(study, trial, f"the sweep stopped: {type(err).__name__} {err}")
                raise
            for trial, result in zip(trials, results):
                self._tell(study, trial, result)
            fail_stale(study)  # trials of workers that died
            self._write_results(study, sweep_dir)
        self._write_results(study, sweep_dir)
        self._select(study, sweep_dir)
        outputs = ", ".join(
            p.name
            for p in sorted([*sweep_dir.glob("*.[cp][sn][vg]"), *sweep_dir.glob("selection.json")])
        )
        print(f"sweep {self.study_name}: {finished_trials(study)} trials finished; {outputs} "
              f"and one folder per trial in {sweep_dir}", flush=True)  # fmt: skip
        return study

    def _overrides(self, trial: optuna.Trial, fixed: list[str], url: str) -> list[str]:
        params = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                  for k, v in trial.params.items()]  # fmt: skip
        # The trial's folder is named by its number in the study: unique across workers.
        meta = [f"hydra.sweep.subdir={trial.number}",
                f"+sweep_trial.trial_id={trial._trial_id}", f"+sweep_trial.number={trial.number}",
                f"+sweep_trial.study={self.study_name}",
                f"+sweep_trial.storage='{trial_storage(url)}'",
                f"+sweep_trial.prune={self._prunes()}"]  # fmt: skip
        for key, value in (self.pruner_spec or {}).items():  # the trial rebuilds the pruner
            meta.append(f"+sweep_trial.pruner.{key}={value}")
        if self.count is not None:
            seed = trial_seed(int(self.config.seed), self.study_name, trial.number)
            meta.append(f"+sweep_trial.seed={seed}")
            public = bool(self.config.dataset.get("public_validation", False))
            meta += trial_overrides(self.count, None if public else self.tuning.get("score_noise"))
        return [*fixed, *params, *meta]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: Any) -> None:
        from hydra.core.utils import JobStatus

        if result.status == JobStatus.FAILED:
            err = result._return_value
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            self._fail(study, trial, reason)
            return
        summary = result.return_value
        if isinstance(summary, dict):
            trial.set_user_attr("output_dir", str(summary.get("output_dir", "")))
        status = summary.get("status") if isinstance(summary, dict) else None
        if status == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        value = summary.get(self.objective) if isinstance(summary, dict) else None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            self._fail(study, trial, f"objective {self.objective} is {value!r}")
            return
        study.tell(trial, float(value))

    @staticmethod
    def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        log.warning("trial %d failed: %s (the study goes on)", trial.number, reason)
        try:
            trial.set_user_attr("reason", reason[:500])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # told already (a trial that finished before the sweep stopped)

    def _prunes(self) -> bool:
        """Whether trials report to a pruner (pruner.name=none: they report nothing)."""
        return bool(self.pruner_spec) and self.pruner_spec.get("name", "none") != "none"

    def _spec(self) -> dict:
        public = bool(self.config.dataset.get("public_validation", False))
        return {**self.count.to_dict(),
                "score_noise": None if public else self.tuning.get("score_noise")}  # fmt: skip

    def _describe_count(self) -> str:
        c = self.count
        if c.distribution == "poisson":
            return f"Poisson(mean {c.mean:g})"
        return (f"truncated negative binomial(eta {c.eta:g}, gamma {c.gamma:.4g}; mean "
                f"{c.mean:.3g}, sd {c.variance**0.5:.3g})")  # fmt: skip

    def _select(self, study: optuna.Study, sweep_dir: Path) -> None:
        """selection.json, the winner's records, and the console's verdict."""
        if self.count is None:
            record = nonprivate_record(study, self.objective, self.direction)
        else:
            privacy = self.config.privacy
            record = private_record(study, self.count, self.k, float(privacy.delta),
                                    privacy.get("target_epsilon"))  # fmt: skip
        write_selection(sweep_dir, record)
        mark_winner(record)
        log_selection(self.config, record, sweep_dir)
        winner = record.get("winner")
        if winner is None:
            print(f"sweep {self.study_name}: no trial completed; nothing selected", flush=True)
        elif self.count is None:
            print(f"sweep {self.study_name}: NON-PRIVATE selection: best trial "
                  f"{winner['number']} ({self.objective} {_fmt(winner, self.objective)}, "
                  f"{winner['params']}); its epsilon {_fmt(winner, 'trial_training_epsilon')} "
                  "covers that trial alone, NOT the choice among trials", flush=True)  # fmt: skip
        else:
            print(f"sweep {self.study_name}: PRIVATE selection among K = {self.k} trials: "
                  f"released trial {winner['number']} (dp_score {_fmt(winner, 'dp_score')}, "
                  f"{winner['params']}); total epsilon {record['total_epsilon']:.4g} at delta "
                  f"{record['delta']:g} (per trial {record['trial_epsilon']:.4g})",
                  flush=True)  # fmt: skip

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        rows = write_trials(study, sweep_dir / "trials.csv", self.selection)
        name = "heatmap.png" if len(self.space) == 2 else "curve.png"
        plot(rows, self.space, self.objective, sweep_dir / name, self.direction)
        plot_history(study, sweep_dir / "history.png")


def _fmt(entry: dict, key: str) -> str:
    value = entry.get(key)
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def register() -> None:
    """Enter the sweeper into Hydra's plugin registry under the hydra_plugins package."""
    module = sys.modules.get(PLUGIN_MODULE)
    if module is None:
        module = types.ModuleType(PLUGIN_MODULE)
        sys.modules[PLUGIN_MODULE] = module
    cls = type("OptunaSweeper", (OptunaSweeperImpl,), {"__module__": PLUGIN_MODULE})
    module.OptunaSweeper = cls
    Plugins.instance().class_name_to_class[f"{PLUGIN_MODULE}.OptunaSweeper"] = cls
