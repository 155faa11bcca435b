"""Against a REAL SLURM scheduler started on this machine (see slurm_cluster.py): a Hydra
multirun through the submitit launcher, the sbatch templates, and Optuna workers sharing one
study. Skipped, saying why, where SLURM cannot be started (not root, no apt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests import slurm_cluster

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1", "privacy.target_epsilon=null",
        "privacy.noise_multiplier=1.0"]  # fmt: skip


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    try:
        env = slurm_cluster.start(folder)
    except slurm_cluster.Unavailable as err:
        pytest.skip(f"no real SLURM here: {err}")
    env.update(WANDB_MODE="disabled", HYDRA_FULL_ERROR="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
    yield env
    slurm_cluster.stop(folder)


def summaries(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def test_multirun_through_the_submitit_slurm_launcher(slurm, tmp_path) -> None:
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=slurm",
           f"hydra.launcher.partition={slurm_cluster.PARTITION}", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
           "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path}",
           "optimizer.lr=0.01,0.02", *FAST]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    done = summaries(tmp_path)
    assert len(done) == 2 and all(s["status"] == "completed" for s in done)
    assert list((tmp_path / ".submitit").iterdir())  # ran as SLURM jobs, not locally


def submit(env: dict, *args: str) -> str:
    """sbatch, returning the job id."""
    cmd = ["sbatch", "--parsable", "--mem=2G", "--cpus-per-task=1", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout.strip().split(";")[0]


def wait_gone(env: dict, job: str, timeout: float = 600) -> None:
    """Wait until the job (array) has left the queue (polling every second: `sbatch --wait`
    backs off to half a minute between polls)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        if not queue:
            return
        time.sleep(1)
    raise TimeoutError(f"SLURM job {job} still queued or running after {timeout} s")


def sbatch(env: dict, *args: str) -> None:
    """Submit and wait until the job has left the queue."""
    wait_gone(env, submit(env, *args))


def test_sbatch_templates_single_run_and_array_sweep(slurm, tmp_path) -> None:
    out = tmp_path / "out"
    # The template's own log location: slurm/logs/<job name>-<job id>.out.
    job = submit(slurm, "slurm/run.sbatch", *FAST, f"hydra.run.dir={out}/single")
    wait_gone(slurm, job)
    log = ROOT / "slurm" / "logs" / f"dpresearch-{job}.out"
    assert log.exists(), sorted((ROOT / "slurm" / "logs").iterdir())
    log.unlink()
    grid = tmp_path / "grid.txt"
    # A quoted value with a space stays one override (the line is split as a shell would).
    grid.write_text("optimizer.lr=0.01 'name=my run'\noptimizer.lr=0.02\n")
    env = {**slurm, "DPRESEARCH_OUT": str(out / "sweep")}
    sbatch(env, "--array=1-2", f"--output={tmp_path}/sweep-%A_%a.out", "slurm/sweep.sbatch",
           str(grid), *FAST)  # fmt: skip
    assert summaries(out / "single")[0]["status"] == "completed"
    swept = summaries(out / "sweep")
    assert sorted(s["seed"] for s in swept) == [0, 0] and len(swept) == 2
    assert all(s["status"] == "completed" for s in swept)
    assert sorted(s["experiment"] for s in swept) == ["digits_dp", "my run"]


def test_optuna_workers_share_one_study(slurm, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = {**slurm, "STUDY": "shared", "STORAGE": storage, "DPRESEARCH_OUT": str(tmp_path)}
    sbatch(env, "--array=0-1", f"--output={tmp_path}/opt-%A_%a.out", "slurm/optuna_workers.sbatch",
           "hparams_search=lr_only", "hydra.sweeper.n_trials=4", *FAST)  # fmt: skip
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert len(finished) >= 4 and study.best_trial.value is not None


def test_ddp_template_runs_two_tasks_as_one_job(slurm, tmp_path) -> None:
    """slurm/ddp.sbatch: srun starts 2 tasks, Lightning takes their ranks from SLURM (gloo),
    one model is trained by both, and rank 0 writes the run's summary."""
    env = {**slurm, "DPRESEARCH_OUT": str(tmp_path / "out")}
    sbatch(env, "--ntasks-per-node=2", "--mem=4G", f"--output={tmp_path}/ddp-%j.out",
           "slurm/ddp.sbatch", "trainer=ddp_cpu", *FAST)  # fmt: skip
    logs = "".join(p.read_text() for p in tmp_path.glob("ddp-*.out"))
    (run_dir,) = (tmp_path / "out").iterdir()
    done = summaries(run_dir)
    assert len(done) == 1 and done[0]["status"] == "completed", logs[-3000:]
    assert done[0]["world_size"] == 2 and done[0]["epsilon"] is not None
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs + (run_dir / "rank1.log").read_text()


def test_ddp_multirun_through_submitit_one_task_per_device(slurm, tmp_path) -> None:
    """A DDP sweep: each multirun job is a 2-task SLURM job (submitit), one process per task."""
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=slurm",
           f"hydra.launcher.partition={slurm_cluster.PARTITION}", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.mem_gb=4", "hydra.launcher.timeout_min=10",
           f"hydra.sweep.dir={tmp_path}", "trainer=ddp_cpu", "trainer.devices=2",
           "optimizer.lr=0.01,0.02", *FAST]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    done = summaries(tmp_path)
    assert len(done) == 2 and all(s["status"] == "completed" for s in done), done
    assert all(s["world_size"] == 2 for s in done)


def test_a_preempted_job_is_requeued_and_resumes(slurm, tmp_path) -> None:
    """slurm/run.sbatch unchanged: USR1 (what --signal=USR1@90 sends before the time limit)
    stops the run at a step with exit 75, requeue.sh requeues the job, and the job, back with
    its id and folder, continues from the checkpoint with run.resume=auto."""
    out = tmp_path / "run"
    args = [*FAST, "trainer.max_epochs=10", f"hydra.run.dir={out}"]
    job = submit(slurm, f"--output={tmp_path}/job-%j.out", "slurm/run.sbatch", *args)
    deadline = time.time() + 300
    metrics = out / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and '"stage": "train"' in metrics.read_text():
            break
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)
    wait_gone(slurm, job)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert "requeueing job" in log, log[-3000:]
    done = summaries(out)[0]
    assert done["status"] == "completed" and done["attempt"] == 1, log[-3000:]
    assert done["steps"] == 50 and (out / "config.resume_1.yaml").exists()


def test_a_submitit_task_stopped_by_its_signal_is_requeued_and_resumes(slurm, tmp_path) -> None:
    """hydra/launcher=slurm with its defaults: submitit's warning signal (SIGUSR2, sent
    signal_delay_s before the time limit; here by scancel) stops the run at a step with its
    records written, submitit requeues the task, and the requeued task (same command, same
    folder) resumes from the checkpoint; the multirun ends as if nothing happened."""
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=slurm",
           f"hydra.launcher.partition={slurm_cluster.PARTITION}", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
           "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path}", "optimizer.lr=0.01",
           *FAST, "trainer.max_epochs=10"]  # fmt: skip
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=slurm, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (
        metrics.exists() and '"stage": "train"' in metrics.read_text()
    ):
        time.sleep(0.2)
    jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True,
                          text=True).stdout.split()  # fmt: skip
    assert len(jobs) == 1, jobs
    subprocess.run(["scancel", "--signal=USR2", jobs[0]], env=slurm, check=True)
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, err[-3000:]
    done = summaries(tmp_path / "0")[0]
    assert done["status"] == "completed" and done["attempt"] == 1, done
    assert done["steps"] == 50 and (tmp_path / "0" / "config.resume_1.yaml").exists()
    logs = "".join(p.read_text(errors="ignore") for p in (tmp_path / ".submitit").rglob("*.*")
                   if p.suffix in (".out", ".err"))  # fmt: skip
    assert "handing over" in logs and "Requeued job" in logs, logs[-3000:]
