"""Optuna sweeps through `python run.py -m hparams_search=...`: resume from storage after an
interruption, failed and pruned trials, the trials table and the heatmap's data."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from dpresearch.report.runs import find_runs
from dpresearch.sweeps.study import (
    finished_trials,
    heartbeats,
    make_storage,
    open_study,
    started_trials,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=none", "extras.print_config=false", "trainer.enable_progress_bar=false",
        "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]  # fmt: skip


def sweep(sweep_dir: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, "run.py", "-m", *FAST, f"hydra.sweep.dir={sweep_dir}", *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary_status(folder: Path) -> str | None:
    return json.loads((folder / "summary.json").read_text()).get("status")


def load(sweep_dir: Path, name: str = "digits_dp") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state.is_finished()]


def finished_in_db(db: Path) -> int:
    """Finished trials, read-only: polling through optuna would race the sweeper creating the
    storage's tables (seen in CI as "table already exists" and alembic_version conflicts)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            query = "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')"
            return con.execute(query).fetchone()[0]
    except sqlite3.Error:  # not created yet, or mid-creation
        return 0


def test_tpe_study_is_interrupted_and_resumes_from_its_storage(tmp_path) -> None:
    args = ["hparams_search=lr_vs_clip", "hydra.sweeper.n_trials=5", "hydra.sweeper.heartbeat_s=1",
            "hydra.sweeper.sampler.n_startup_trials=2", "trainer.max_epochs=2"]  # fmt: skip
    proc = sweep(tmp_path, *args, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline:  # interrupt once 3 trials are finished
        time.sleep(1)
        if finished_in_db(tmp_path / "optuna.db") >= 3:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in finished(load(tmp_path))}
    assert 3 <= len(before) < 5, "interrupt the study before it completes"
    out = sweep(tmp_path, *args)  # resume
    assert (
        "trials finished; heatmap.csv, heatmap.png, history.png, selection.json, trials.csv"
    ) in out.stdout
    assert "NON-PRIVATE selection: best trial" in out.stdout  # today's practice, said plainly
    assert str(tmp_path) in out.stdout  # says where its outputs are
    study = load(tmp_path)
    after = finished(study)
    assert len(after) == 5
    assert {t.number: t.value for t in after if t.number in before} == before  # kept
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert study.best_trial.params == best.params
    chosen = json.loads((tmp_path / "selection.json").read_text())
    assert chosen["selection"] == "nonprivate" and chosen["total_epsilon"] is None
    assert chosen["winner"]["number"] == best.number and "NOT accounted" in chosen["note"]
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert {r["selection"] for r in rows} == {"nonprivate"}
    assert {int(r["number"]) for r in rows if r["state"] != "RUNNING"} == {t.number for t in after}
    plotted = list(csv.DictReader((tmp_path / "heatmap.csv").open()))
    table = {r["number"]: r for r in rows if r["state"] == "COMPLETE"}
    assert (tmp_path / "heatmap.png").stat().st_size > 0 and len(plotted) == len(table)
    assert (tmp_path / "history.png").stat().st_size > 0  # Optuna's optimization history
    for p in plotted:  # the figure's data are the table's
        r = table[p["number"]]
        assert float(p["optimizer.lr"]) == pytest.approx(float(r["param:optimizer.lr"]))
        assert float(p["val_accuracy"]) == pytest.approx(float(r["value"]))


def test_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path) -> None:
    sweep(tmp_path, "hparams_search=lr_only", "hydra.sweeper.sampler.name=grid",
          "hydra.sweeper.n_trials=3", "trainer.max_epochs=1",
          "~hydra.sweeper.params.lr",
          "+hydra.sweeper.params.clip={key: clipping.max_grad_norm, type: categorical, "
          "choices: [0.5, -1.0, 2.0]}")  # fmt: skip
    trials = sorted(load(tmp_path).get_trials(), key=lambda t: t.params["clipping.max_grad_norm"])
    states = [t.state.name for t in trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "max_grad_norm" in trials[0].user_attrs["reason"]
    # A diverging trial is not a result: FAIL, with the reason.
    sweep(
        tmp_path / "diverging",
        "hparams_search=lr_only",
        "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.n_trials=1",
        "trainer.max_epochs=1",
        "~hydra.sweeper.params.lr",
        "+hydra.sweeper.params.lr={key: optimizer.lr, type: categorical, choices: [1e30]}",
    )
    (diverged,) = load(tmp_path / "diverging").get_trials()
    assert diverged.state.name == "FAIL" and "Diverged" in diverged.user_attrs["reason"]


def test_hopeless_trials_are_pruned_during_training(tmp_path) -> None:
    sweep(tmp_path, "hparams_search=lr_only", "hydra.sweeper.n_trials=2", "trainer.max_epochs=4",
          "hydra.sweeper.pruner.name=threshold", "+hydra.sweeper.pruner.lower=1.01",
          "hydra.sweeper.pruner.n_warmup_steps=0")  # fmt: skip
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(len(t.intermediate_values) == 1 for t in trials)  # stopped after epoch 1


def test_grid_sweep_with_the_basic_sweeper_still_works(tmp_path) -> None:
    sweep(
        tmp_path, "optimizer.lr=0.01,0.02", "clipping.max_grad_norm=0.5,1", "trainer.max_epochs=1"
    )
    assert len(list(tmp_path.glob("*/summary.json"))) == 4


@pytest.mark.parametrize(
    "search", sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml"))
)
def test_every_hparams_search_composes_into_a_valid_sweeper(compose_cfg, search: str) -> None:
    from omegaconf import OmegaConf

    from dpresearch.sweeps.study import make_sampler
    from dpresearch.sweeps.sweeper import OptunaSweeperImpl

    cfg = compose_cfg([f"hparams_search={search}"], return_hydra_config=True)
    spec = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    assert spec.pop("_target_").endswith("OptunaSweeper")
    sweeper = OptunaSweeperImpl(**{k: v for k, v in spec.items() if k != "study_name"})
    assert set(sweeper.space) <= {"optimizer.lr", "clipping.max_grad_norm"}
    make_sampler(sweeper.sampler_spec, sweeper.space)  # a grid has categorical values


def test_a_study_keeps_one_search_space_and_a_restart_reseeds(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    lr = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    both = {**lr, "clipping.max_grad_norm": optuna.distributions.FloatDistribution(0.1, 10.0)}
    spec = {"name": "random", "seed": 0}
    study = open_study(url, "s", spec, both, optuna.pruners.NopPruner(), "maximize")
    first = [study.ask(both) for _ in range(3)]
    for t in first:
        study.tell(t, 0.5)
    with pytest.raises(
        ValueError,
        match=r"searches \{clipping.max_grad_norm in .*optimizer.lr"
        r".*but this sweep searches \{optimizer.lr in",
    ):
        open_study(url, "s", spec, lr, optuna.pruners.NopPruner(), "maximize")
    again = open_study(url, "s", spec, both, optuna.pruners.NopPruner(), "maximize")
    proposed = again.ask(both).params  # the same seed, but not the first trial's point again
    assert proposed not in [t.params for t in first]
    with pytest.raises(ValueError, match=r"folder .*/missing does not exist; create it"):
        make_storage(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(ValueError, match="folder .*/missing does not exist"):
        make_storage(f"journal:///{tmp_path / 'missing' / 'x.log'}")


@pytest.mark.parametrize("beats", [1, 0])
def test_a_dead_workers_trial_becomes_fail_and_counts(tmp_path, beats) -> None:
    """Also a worker killed between creating a trial and its first heartbeat (beats=0), which
    Optuna alone never fails: CI saw the resumed sweep wait for that trial forever."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    args = ("s", {"name": "random", "seed": 0}, space, optuna.pruners.NopPruner(), "maximize", 1)
    study = open_study(url, *args)
    trial = study.ask(space)
    if beats:
        with heartbeats(study, [trial._trial_id]):
            time.sleep(0.2)  # one beat, then the worker "dies"
    assert started_trials(study) == 1 and finished_trials(study) == 0
    time.sleep(3.5)  # three missed beats (a loaded machine may need a little longer)
    deadline = time.time() + 20
    while True:
        reopened = open_study(url, *args)
        (stale,) = reopened.get_trials()
        if stale.state == optuna.trial.TrialState.FAIL or time.time() > deadline:
            break
        time.sleep(0.5)
    assert stale.state == optuna.trial.TrialState.FAIL and finished_trials(reopened) == 1


def test_a_stopped_sweep_leaves_no_trial_running(tmp_path) -> None:
    args = ["hparams_search=lr_only", "hydra.sweeper.n_trials=3", "trainer.max_epochs=30"]
    proc = sweep(tmp_path, *args, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("0/metrics.jsonl")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=300) == 75  # preempted: slurm/ requeues it
    (trial,) = load(tmp_path).get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "the sweep stopped" in trial.user_attrs["reason"]
    assert summary_status(tmp_path / "0") == "preempted"


def test_the_report_skips_a_truncated_summary_naming_it(tmp_path, caplog) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder in (good, bad):
        folder.mkdir()
    (good / "summary.json").write_text('{"status": "completed"}')
    (bad / "summary.json").write_text('{"status": "compl')
    runs = find_runs([tmp_path])
    assert [r.folder for r in runs] == [good]
    assert f"skipping {bad}" in caplog.text


def test_sweep_figure_spans_the_space_marks_the_best_by_direction_and_shows_pruned(tmp_path):
    from dpresearch.sweeps.results import plot, plot_history, trial_rows
    from dpresearch.sweeps.study import distributions

    space = distributions({
        "lr": {"key": "optimizer.lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "clip": {"key": "clipping.max_grad_norm", "type": "float", "low": 0.01, "high": 10.0,
                 "log": True}})  # fmt: skip
    study = optuna.create_study(direction="minimize")
    for i, (lr, clip) in enumerate([(1e-3, 1.0), (1e-2, 0.1), (0.1, 5.0), (0.5, 0.05)]):
        trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(lr, lr),
                           "clipping.max_grad_norm": optuna.distributions.FloatDistribution(
                               clip, clip)})  # fmt: skip
        if i == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif i == 3:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, [0.9, 0.4][i])  # a loss: the best is the smaller
    drawn = plot(trial_rows(study), space, "val_loss", tmp_path / "heatmap.png", "minimize")
    assert drawn["best"] == 1 and (drawn["completed"], drawn["pruned"], drawn["failed"]) == (
        2, 1, 1)  # fmt: skip
    assert drawn["xlim"][0] < 1e-4 and drawn["xlim"][1] > 1.0  # the whole search space
    assert drawn["ylim"][0] < 0.01 and drawn["ylim"][1] > 10.0
    assert plot_history(study, tmp_path / "history.png")
    maximize = plot(trial_rows(study), space, "val_loss", tmp_path / "h2.png", "maximize")
    assert maximize["best"] == 0


def test_a_storage_password_stays_out_of_trial_configs_and_logs(tmp_path, monkeypatch) -> None:
    from dpresearch.sweeps.study import STORAGE_ENV, make_storage, redact, trial_storage

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    secret = "postgresql://alice:s3cret@db.example.org:5432/studies"
    assert redact(secret) == "postgresql://alice:***@db.example.org:5432/studies"
    named = trial_storage(secret)
    assert "s3cret" not in named and named == f"env:{STORAGE_ENV}"
    assert os.environ[STORAGE_ENV] == secret  # what the trial's process reads
    plain = f"sqlite:///{tmp_path / 'study.db'}"
    assert trial_storage(plain) == plain and redact(plain) == plain
    monkeypatch.setenv("MY_STORAGE", plain)
    assert isinstance(make_storage("env:MY_STORAGE"), optuna.storages.RDBStorage)
    with pytest.raises(ValueError, match="NOT_SET is not set"):
        make_storage("env:NOT_SET")
