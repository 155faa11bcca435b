"""run(cfg): one run, config -> records, in three stages (prepare, fit, evaluate) inside one
wrapper (``recorded``) that writes the run's records however it ends."""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from dpresearch.atomic import write_atomic
from dpresearch.checkpointing import LAST, AtomicCheckpointIO, RandomState, checkpoint_callback
from dpresearch.compiling import compile_model
from dpresearch.config_types import check_config_types
from dpresearch.data.users import user_sampling
from dpresearch.divergence import Diverged, DivergenceGuard
from dpresearch.extras import Extras
from dpresearch.finetune import parameter_counts
from dpresearch.module import ClassificationModule, classification_losses
from dpresearch.preemption import PREEMPTED_EXIT, Preempted, Preemption
from dpresearch.privacy import (
    DPStepping,
    PhysicalBatching,
    PrivacyMetrics,
    PrivacyPlan,
    PrivacyState,
    build_strategy,
    choose_engine,
    make_plan,
)
from dpresearch.privacy.selection import PrivateSelection
from dpresearch.privacy.self_check import SelfCheck
from dpresearch.privacy.statement import (
    RunFacts,
    metric_policy,
    privacy_statement,
    statement_markdown,
)
from dpresearch.privacy.step import StepHook
from dpresearch.run_folder import (
    attempt_number,
    existing_run,
    locked,
    record_names,
    resume_path,
    summary_name,
)
from dpresearch.tracking.callbacks import (
    MetricsRecorder,
    Throughput,
    is_nonprivate,
    machine_load,
    peak_memory_mb,
)
from dpresearch.tracking.console import print_config, print_summary
from dpresearch.tracking.summary import record_failure, run_tags, write_summary
from dpresearch.trainer_settings import check_engine_precision, check_trainer

log = logging.getLogger(__name__)


def build(node: DictConfig, **kwargs):
    """instantiate, but surface our own config errors instead of Hydra's wrapper around them."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


OUR_TRAINER_KEYS = ("compile", "ddp")  # in the trainer group, but not pl.Trainer arguments


def instantiate_trainer(node: DictConfig, **kwargs) -> pl.Trainer:
    """The ``trainer`` group is pl.Trainer's arguments plus our ``compile`` and ``ddp``."""
    if "enable_checkpointing" in node:
        raise ValueError(
            "checkpoints are switched with run.checkpoint=true|false, "
            "not trainer.enable_checkpointing"
        )
    keys = [k for k in node if k not in OUR_TRAINER_KEYS]
    return instantiate(OmegaConf.masked_copy(node, keys), **kwargs)


def ddp_options(trainer: DictConfig, multirun: bool) -> dict | None:
    """The trainer group's ``ddp`` node (trainer=ddp|ddp_cpu), checked before anything runs."""
    node = trainer.get("ddp")
    if node is None:
        tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))  # set by srun for its tasks
        if tasks > 1:
            raise ValueError(
                f"srun started {tasks} tasks but the trainer is single-device, so each would "
                "train its own model: add trainer=ddp (trainer=ddp_cpu on CPUs) to train one "
                "model on all of them, or run one task"
            )
        return None
    several = str(trainer.get("devices", 1)) != "1" or int(trainer.get("num_nodes", 1)) > 1
    if multirun and several and not launched_externally():
        raise ValueError(
            "trainer=ddp under a Hydra multirun cannot relaunch this script once per device "
            "(Lightning #11300): run the sweep with hydra/launcher=slurm and "
            "hydra.launcher.tasks_per_node=<devices> (one process per task), or run single jobs "
            "(slurm/ddp.sbatch)"
        )
    return OmegaConf.to_container(node)


def launched_externally() -> bool:
    """Whether a cluster manager (SLURM's srun, torchrun) started one process per device."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


def process_rank(trainer: pl.Trainer | None) -> int:
    """This process's global rank: the trainer's once it exists, before that the launcher's
    environment (LOCAL_RANK / SLURM_PROCID / RANK), as Lightning reads it."""
    if trainer is not None:
        return trainer.global_rank
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0)


def check_optimizer(node: DictConfig) -> None:
    """Settings torch would take (a learning rate of 0 or nan) or reject only once training
    starts (a negative momentum or weight decay) are refused now."""
    lr = node.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"optimizer.lr must be a positive finite number, got {lr}")
    try:  # the optimizer on a stand-in parameter: its own checks, before anything is built
        instantiate(node)([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError, RuntimeError) as err:
        given = ", ".join(f"optimizer.{k}={v}" for k, v in node.items() if not k.startswith("_"))
        raise ValueError(f"the optimizer refuses its settings ({given}): {err}") from None


def trial_pruning(cfg: DictConfig):
    """The Optuna pruning callback when this run is a sweep trial with a pruner."""
    trial = cfg.get("sweep_trial")
    if not trial or not trial.get("prune", False):
        return None
    from dpresearch.sweeps.pruning import TrialPruning

    pruner = OmegaConf.to_container(trial.pruner) if trial.get("pruner") else None
    return TrialPruning(trial.storage, trial.study, int(trial.trial_id), pruner)


def build_model(node: DictConfig, datamodule, scope) -> torch.nn.Module:
    """The model for the data, under its fine-tuning scope, in train mode: pretrained
    Hugging Face models come in eval mode, and Lightning does not change the mode it gets
    (dropout would be off, and per-example hooks see no activations)."""
    check_model_fits_data(node, datamodule)
    return scope.apply(build(node, **datamodule.model_kwargs())).train()


def _takes(target: str, given: dict, set_in_config) -> bool:
    """Whether the class ``target`` accepts the data's keyword arguments and needs no other."""
    try:
        params = inspect.signature(get_object(target)).parameters
    except (ValueError, TypeError, ImportError, AttributeError):
        return True  # cannot tell: let instantiation speak
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return True
    required = {n for n, p in params.items() if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}  # fmt: skip
    return set(given) <= set(params) and required <= set(given) | set(set_in_config)


def _option_target(yaml: Path) -> str | None:
    """A config option's ``_target_``, its own or from the bases in its defaults list."""
    node = OmegaConf.load(yaml)
    if "_target_" in node:
        return node["_target_"]
    for entry in node.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            target = _option_target(yaml.parent / f"{entry.split('@')[0]}.yaml")
            if target is not None:
                return target
    return None


def check_model_fits_data(node: DictConfig, datamodule) -> None:
    """A model that cannot take the dataset's input (a text model on images, a CNN on token
    ids) is refused in one line naming the datasets that fit, not with a TypeError."""
    given = datamodule.model_kwargs()
    target = node.get("_target_", "")
    if _takes(target, given, node.keys()):
        return
    fitting = []
    for yaml in sorted((Path(__file__).resolve().parents[1] / "conf" / "dataset").glob("*.yaml")):
        try:
            cls = get_object(_option_target(yaml))
            # Array datasets declare their shape on the class (model gets in_channels); text
            # datasets learn theirs from the tokenizer (model gets num_classes only).
            images = isinstance(getattr(cls, "input_shape", None), tuple)
            kwargs = {"num_classes": 2, "in_channels": 1} if images else {"num_classes": 2}
        except Exception:  # noqa: BLE001 - a dataset whose kind cannot be read is left out
            continue
        if _takes(target, kwargs, node.keys()):
            fitting.append(yaml.stem)
    raise ValueError(
        f"model {target.rsplit('.', 1)[-1]} cannot take dataset {datamodule.name}'s input (the "
        f"dataset gives {sorted(given)}); datasets that fit this model: "
        f"{', '.join(fitting) or 'none found'} (dataset=...)"
    )


def resolve_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError("trainer.accelerator=gpu but no CUDA device is visible; use cpu")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def build_callbacks(node: DictConfig | None) -> dict[str, Any]:
    """The ``callbacks`` group: name -> a Lightning Callback, a ``StepHook`` (attached to the
    DP strategy), or both; ``callbacks.NAME=null`` turns one off. One that also defines
    ``on_train_set(datamodule)`` may change the training set before the privacy plan counts
    it (the audit's input canaries)."""
    built = {}
    for name, sub in (node or {}).items():
        if sub is None:
            continue
        obj = build(sub)
        if not isinstance(obj, (pl.Callback, StepHook)):
            raise ValueError(
                f"callbacks.{name} ({sub.get('_target_')}) is neither a Lightning Callback nor "
                "a dpresearch.privacy.step.StepHook: subclass one, or remove it"
            )
        built[name] = obj
    return built


def selections(callbacks: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Callbacks that choose what is released by a monitored metric: early stopping (the
    stopping step) and a monitoring ModelCheckpoint (the checkpoint kept)."""
    out = []
    for name, obj in callbacks.items():
        monitor = getattr(obj, "monitor", None)
        if isinstance(obj, pl.callbacks.EarlyStopping):
            out.append((f"callbacks.{name}", "the stopping step", str(monitor)))
        elif isinstance(obj, pl.callbacks.ModelCheckpoint) and monitor:
            out.append((f"callbacks.{name}", "the checkpoint kept", str(monitor)))
    return out


@dataclass
class Run:
    """One run as its stages build it. ``recorded`` writes whatever exists when it ends."""

    cfg: DictConfig
    out: Path
    choices: dict
    summary: dict
    throughput: Throughput = field(default_factory=Throughput)
    logger: Any = None
    trainer: pl.Trainer | None = None
    facts: RunFacts | None = None
    start: float = field(default_factory=time.perf_counter)
    born: float = field(default_factory=lambda: time.time() - 1.0)  # older error logs: not ours
    checkpointing: bool = True
    ckpt_path: str | None = None
    datamodule: Any = None
    module: ClassificationModule | None = None
    strategy: PhysicalBatching | None = None
    plan: PrivacyPlan | None = None
    pruning: Any = None
    selection: PrivateSelection | None = None  # a trial of a private selection
    attempt: int = 0  # 0: the folder's first start; N: its N-th resume
    write_records: bool = False  # False until the folder is known to take this run
    preemption: Preemption = field(default_factory=Preemption)


@contextmanager
def recorded(
    cfg: DictConfig, out: Path, choices: dict | None, multirun: bool = False
) -> Iterator[Run]:
    """The run's records, however it ends. Rank 0 locks the folder and decides what to resume
    before anything is written (a refusal there leaves a folder holding a run untouched);
    then the attempt's config; then, whether the stages finish or raise, its summary, the
    privacy statement and the wandb run closed. A failure also writes this rank's error log
    and is raised again; a stop signal ends as "preempted" with exit status 75."""
    out.mkdir(parents=True, exist_ok=True)
    rank = process_rank(None)
    r = Run(cfg, out, dict(choices or {}),
            {"experiment": cfg.get("name"), "seed": cfg.seed, "status": "running",
             "output_dir": str(out), "tags": list(cfg.get("tags") or []),
             "debug": cfg.get("debug") or None})  # fmt: skip
    start = machine_load()
    r.summary["machine"] = {"host": start["host"], "cpus": start["cpus"],
                            "load_1m_start": start["load_1m"]}  # fmt: skip
    extras = build(cfg.extras) if cfg.get("extras") else Extras()
    extras.apply()
    if threading.current_thread() is threading.main_thread():
        r.preemption.install()
    with ExitStack() as folder:
        try:
            if rank == 0:
                folder.enter_context(locked(out))
                r.write_records = existing_run(out) is None  # an empty folder may take them
            r.ckpt_path = resume_path(cfg, out, check_folder=rank == 0)
            own = r.ckpt_path is not None and Path(r.ckpt_path).parent == out / "checkpoints"
            r.attempt = attempt_number(out) if own else 0
            r.summary["attempt"] = r.attempt
            r.write_records = True
            if rank == 0:
                if extras.print_config and not multirun:
                    print_config(cfg)
                elif extras.print_config:  # a tree per job drowns a sweep's log
                    print(f"config: {out / record_names(r.attempt)[0]}", flush=True)
                OmegaConf.save(cfg, out / record_names(r.attempt)[0], resolve=True)
            yield r
        except BaseException as err:
            if not r.write_records:
                raise
            stopped = isinstance(err, (Preempted, SIGTERMException))
            if stopped:
                r.summary.update(status="preempted", preempted_by=r.preemption.signal,
                                 checkpoint=str(r.preemption.checkpoint or "") or None,
                                 reason=_preempted_reason(r))  # fmt: skip
            else:
                r.summary.update(record_failure(out, process_rank(r.trainer), err,
                                                traceback.format_exc(), r.born))  # fmt: skip
                if isinstance(err, Diverged):
                    r.summary["status"] = "diverged"
            if stopped:
                raise SystemExit(PREEMPTED_EXIT) from err
            raise
        finally:
            r.preemption.restore()
            if r.write_records:
                _finish_records(r)
            if r.summary.get("status") == "preempted":
                r.preemption.hand_over()  # submitit: requeue the task, now its records exist
    if process_rank(r.trainer) == 0:
        print_summary(r.summary)


def _preempted_reason(r: Run) -> str:
    where = (f"saved {r.preemption.checkpoint}" if r.preemption.checkpoint
             else "training had not started or nothing new was saved")  # fmt: skip
    return (
        f"{r.preemption.signal or 'a stop signal'}: {where}; continue with "
        f"run.resume=auto in hydra.run.dir={r.out}"
    )


def _finish_records(r: Run) -> None:
    summary, trainer, strategy = r.summary, r.trainer, r.strategy
    summary["train_examples_per_s"] = r.throughput.examples_per_s
    summary["peak_memory_mb"] = peak_memory_mb(
        trainer.strategy.root_device if trainer else torch.device("cpu")
    )
    summary["wall_s"] = time.perf_counter() - r.start
    summary["machine"]["load_1m_end"] = machine_load()["load_1m"]
    summary["machine"]["device"] = str(trainer.strategy.root_device) if trainer else "cpu"
    status = summary["status"]
    rank = process_rank(trainer)
    writes = rank == 0 or (status != "completed" and r.attempt == 0)
    path = r.out / summary_name(r.attempt, status)
    if status in ("failed", "preempted", "diverged"):  # what was taken, not the plan's
        summary["steps"] = trainer.global_step if trainer is not None else None
        if isinstance(strategy, DPStepping) and strategy.dp_steps:
            summary["steps"] = strategy.dp_steps
            if writes:  # the ending first: a peer's launcher may kill this process any moment
                write_summary(path, summary)
            summary["epsilon"] = strategy.epsilon().epsilon  # spent so far (seconds: PRV, PLD)
    if r.facts is not None and rank == 0:
        _write_statement(r.out, summary, r.facts)
    if writes:
        r.summary = write_summary(path, summary)
        _finish_wandb(r.logger, r.summary)
    if rank == 0 and r.attempt and status != "failed":  # the folder's config: the latest
        config = r.out / record_names(r.attempt)[0]
        write_atomic(r.out / "config.yaml", config.read_bytes())


def prepare(r: Run, multirun: bool) -> None:
    """Config -> data, model, privacy plan, strategy, module, logger and trainer; every
    refusal of a bad configuration happens here, before the first step."""
    cfg, summary = r.cfg, r.summary
    check_config_types(cfg)
    check_optimizer(cfg.optimizer)
    r.checkpointing = bool(cfg.get("run", {}).get("checkpoint", True))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    sampling = build(cfg.sampler)
    privacy = build(cfg.privacy)
    ddp = ddp_options(cfg.trainer, multirun)
    check_trainer(cfg.trainer, privacy.enabled, ddp is not None)
    clipping = build(cfg.clipping)
    scope = build(cfg.finetune)
    extra = build_callbacks(cfg.get("callbacks"))
    hooks = {name: obj for name, obj in extra.items() if isinstance(obj, StepHook)}
    if hooks and not privacy.enabled:
        raise ValueError(
            f"callbacks.{next(iter(hooks))} observes DP steps, so it needs a DP run "
            "(privacy=dp): this run is not private, there is no step to observe"
        )
    if r.datamodule is None:  # the benchmark brings one holding synthetic data
        r.datamodule = build(cfg.dataset)
    datamodule = r.datamodule
    by_user = privacy.unit == "user"  # users are sampled, and clipped, not examples
    given = {k: getattr(datamodule, k, None) for k in ("users", "user_column")}
    given = {k: v for k, v in given.items() if v is not None}
    if given and not by_user:  # nothing is silently ignored
        key, value = next(iter(given.items()))
        raise ValueError(
            f"dataset.{key}={value} gives each example a user, which only privacy.unit=user "
            f"reads: set privacy.unit=user, or drop dataset.{key}"
        )
    drawn = user_sampling(sampling, privacy.examples_per_user) if by_user else sampling
    datamodule.attach_sampler(drawn, privacy.sampler_seed(cfg.seed))
    datamodule.attach_views(privacy.augmentations)
    rows = privacy.augmentations * (privacy.examples_per_user if by_user else 1)
    if rows > sampling.max_physical_batch_size:  # a unit is never split across batches
        raise ValueError(
            f"a privacy unit holds {rows} rows (privacy.augmentations={privacy.augmentations}"
            + (f" x privacy.examples_per_user={privacy.examples_per_user}" if by_user else "")
            + f"), more than sampler.max_physical_batch_size="
            f"{sampling.max_physical_batch_size}: a unit is clipped whole, so raise the "
            "physical batch or lower the views"
        )
    summary.update(
        dataset=r.choices.get("dataset", datamodule.name),
        model=r.choices.get("model", cfg.model._target_.rsplit(".", 1)[-1]),
        clipping=r.choices.get("clipping", clipping.name) if privacy.enabled else None,
        finetune=r.choices.get("finetune", scope.name),
        sampler=r.choices.get("sampler", sampling.name),
        private=privacy.enabled,
        precision=str(cfg.trainer.get("precision", "32-true")),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    for obj in extra.values():  # before the plan: it counts the training set
        if hasattr(obj, "on_train_set"):
            obj.on_train_set(datamodule)
    model = build_model(cfg.model, datamodule, scope)
    summary.update(parameter_counts(model))
    r.selection = private_selection(cfg.get("sweep_trial"), privacy.enabled,
                                    datamodule.public_validation)  # fmt: skip
    noise = build(cfg.noise) if "noise" in cfg else None
    units = datamodule.num_users if by_user else datamodule.num_train  # the accountant's N
    if units is None:
        raise ValueError(
            f"privacy.unit=user needs each training example's user; dataset {datamodule.name} "
            "has none: set dataset.users=<count> (synthetic users, dataset.user_skew)"
        )
    if by_user and sampling.expected_batch_size > units:
        raise ValueError(
            f"sampler.expected_batch_size={sampling.expected_batch_size} counts USERS per step "
            f"under privacy.unit=user, but the training set has {units} users: lower "
            "sampler.expected_batch_size (or raise dataset.users)"
        )
    plan = make_plan(privacy, clipping, sampling, units, cfg.trainer, r.selection, noise)
    check = None
    if privacy.enabled and clipping.self_check:  # synthetic examples: reads no record
        grouped = privacy.augmentations > 1 or by_user  # units of several rows: so checked
        check = SelfCheck(model, classification_losses, datamodule.check_batch(), clipping,
                          grouped).run  # fmt: skip
    plan = r.plan = choose_engine(plan, model, clipping, check)
    check_engine_precision(plan.engine, cfg.trainer.get("precision", "32-true"))
    summary.update({k: v for k, v in plan.to_dict().items() if k != "private"},
                   num_train=datamodule.num_train)  # fmt: skip
    if by_user:
        summary.update(num_users=units, examples_per_user=privacy.examples_per_user)
    if summary.get("noise"):  # what the mechanism keeps between steps: buffers x parameters
        buffers = summary["noise"].get("buffers", 0)
        summary["noise"]["state_mb"] = buffers * summary["trainable_params"] * 4 / 2**20
    # Which debug mode, if any (trainer.fast_dev_run set by hand counts as fdr).
    summary["debug"] = cfg.get("debug") or ("fdr" if plan.debug else None)
    device = resolve_device(cfg.trainer.get("accelerator", "auto"))
    strategy = r.strategy = build_strategy(plan, privacy, clipping, sampling, device, cfg.seed,
                                           ddp, noise)  # fmt: skip
    for hook in hooks.values():
        strategy.attach_step_hook(hook)
    if cfg.trainer.get("compile", False):
        model = compile_model(model, plan.engine, sampling.name)
    train_prefix, nonprivate = metric_policy(
        privacy.enabled, cfg.get("run", {}).get("train_metrics", "auto"),
        datamodule.public_validation,
    )  # fmt: skip
    if privacy.enabled:  # the realised Poisson batch sizes are private: count E per step
        r.throughput.per_step = sampling.expected_batch_size
    recorder = MetricsRecorder(r.out / "metrics.jsonl", nonprivate)
    r.pruning = trial_pruning(cfg)
    r.facts = RunFacts(summary, privacy.randomness if privacy.enabled else None,
                       recorder.released, nonprivate, datamodule.public_validation,
                       datamodule.label_source, bool(cfg.get("sweep_trial")),
                       r.pruning is not None, r.checkpointing,
                       selections=selections(extra), tuning=plan.tuning)  # fmt: skip
    r.module = ClassificationModule(model, optimizer=instantiate(cfg.optimizer),
                                    train_metrics=train_prefix)  # fmt: skip
    tags, config = run_tags(summary, "sweep" if cfg.get("sweep_trial") else "train",
                            OmegaConf.to_container(cfg, resolve=True))  # fmt: skip
    config["nonprivate_metrics"] = list(nonprivate)
    tags = [*tags, *(str(t) for t in cfg.get("tags") or ())]
    summary["setting"] = config["setting"]  # the seeds of one config share it
    r.logger = instantiate(cfg.logger, save_dir=str(r.out), run_config=cfg, _recursive_=False,
                           extra_tags=tags, extra_config=config)  # fmt: skip
    if r.logger:  # wandb: in its config already; CSV: hparams.yaml beside metrics.csv
        r.logger.log_hyperparams({"nonprivate_metrics": list(nonprivate)})
    # What every run keeps, then the callbacks group's.
    callbacks = [r.throughput, PrivacyMetrics(), PrivacyState(), RandomState(), recorder,
                 r.preemption, DivergenceGuard(privacy.enabled)]  # fmt: skip
    if r.checkpointing:
        callbacks.append(checkpoint_callback(r.out))
    if r.pruning is not None:
        callbacks.append(r.pruning)
    for obj in extra.values():  # a checkpoint callback of the group saves into the run folder
        if isinstance(obj, pl.callbacks.ModelCheckpoint) and obj.dirpath is None:
            obj.dirpath = str(r.out / "checkpoints")
    callbacks += [obj for obj in extra.values() if isinstance(obj, pl.Callback)]
    strategy.checkpoint_io = AtomicCheckpointIO()  # temporary file beside the target
    r.trainer = instantiate_trainer(
        cfg.trainer,
        strategy=strategy,
        logger=r.logger,
        callbacks=callbacks,
        default_root_dir=str(r.out),
        use_distributed_sampler=False,
        enable_checkpointing=r.checkpointing,
    )
    summary["world_size"] = r.trainer.world_size
    summary["resumed_from"] = r.ckpt_path


def fit(r: Run) -> None:
    """Train, then record what the training spent: epsilon, steps, the sigma used."""
    trainer, strategy, summary = r.trainer, r.strategy, r.summary
    trainer.fit(r.module, datamodule=r.datamodule, ckpt_path=r.ckpt_path)
    if hasattr(strategy, "reduce_stats"):
        summary.update(strategy.reduce_stats())
    val_acc = trainer.callback_metrics.get("val_acc")
    summary["val_accuracy"] = float(val_acc) if val_acc is not None else None
    if isinstance(strategy, DPStepping):
        summary["stopped_by_budget"] = strategy.stopped_by_budget
        summary["noise_multiplier"] = strategy.noise_multiplier  # a resume keeps the ckpt's
        if strategy.adaptive is not None:  # where the adaptive threshold ended
            summary["final_max_grad_norm"] = strategy.clip_norm
        if summary.get("noise"):  # ... and its noise strategy (coefficients, BLT parameters)
            used = strategy.noise_stream.state_dict()
            summary["noise"] = {**summary["noise"], **{k: list(used[k]) for k in
                                ("coefficients", "decay", "scale") if k in used}}  # fmt: skip
        if strategy.planned_steps is not None:  # with the sigma used, not the config's
            summary["planned_steps"] = strategy.planned_steps
            summary["planned_epsilon"] = strategy.epsilon_after(strategy.planned_steps).epsilon
        if strategy.stopped_by_budget and r.checkpointing:
            trainer.save_checkpoint(r.out / "checkpoints" / LAST)
        eps = strategy.epsilon()
        r.facts.resumed_steps = strategy.resumed_steps
        summary.update(
            epsilon=eps.epsilon,
            epsilon_estimate=eps.epsilon_estimate,
            epsilon_lower=eps.epsilon_lower,
            epsilon_upper=eps.epsilon_upper,
            accountant=eps.accountant,
            accountant_note=eps.note,
            steps=strategy.dp_steps,
        )
    else:
        summary["steps"] = trainer.global_step
    summary["epochs"] = trainer.current_epoch
    if r.selection is not None:
        release_score(r)


def private_selection(trial, private: bool, public_validation: bool) -> PrivateSelection | None:
    """The private selection this run is a trial of (None: not a trial of one)."""
    selection = PrivateSelection.from_trial(trial, public_validation)
    if selection is not None and not private:
        raise ValueError(
            "hydra.sweeper.selection=private selects among private trials: this run has "
            "privacy=none; use privacy=dp, or selection=nonprivate"
        )
    return selection


def release_score(r: Run) -> None:
    """The score a private selection reads: the final model's validation accuracy through the
    selection's mechanism (noisy count, or exact on a split declared public)."""
    result = r.trainer.validate(r.module, datamodule=r.datamodule, verbose=False)
    accuracy = result[0].get("val_acc") if result else None
    if accuracy is None:
        raise ValueError("a private selection needs a validation split: the run has none")
    privacy = r.cfg.privacy
    seed = privacy.noise_seed if privacy.get("noise_seed") is not None else r.cfg.seed + 1
    if privacy.get("randomness") == "secure":
        seed = None  # the score's noise from the secure source too
    r.summary["dp_score"] = r.selection.score(float(accuracy), len(r.datamodule.val_set), seed)
    r.summary["val_accuracy"] = float(accuracy)  # exact, non-private (marked so)


def evaluate(r: Run) -> None:
    """Test the trained model and settle the run's status."""
    test = r.trainer.test(r.module, datamodule=r.datamodule, verbose=False)
    r.summary["test_accuracy"] = test[0].get("test_acc") if test else None
    r.summary["status"] = "pruned" if r.pruning is not None and r.pruning.pruned else "completed"
    if r.plan.debug or r.cfg.get("debug"):  # a check of the code path, not a result
        r.summary["status"] = "debug"


def run(
    cfg: DictConfig, output_dir: str | Path, choices: dict | None = None, multirun: bool = False
) -> dict:
    """Train and test one configuration; always leaves summary.json in ``output_dir``.

    Under data parallelism every rank runs this; rank 0 writes the run folder, and a rank that
    fails writes its own error log and a failed summary (the others are then stopped)."""
    trial = cfg.get("sweep_trial")
    if trial and trial.get("seed") is not None:  # a private selection's trial: its own seed
        cfg.seed = int(trial.seed)
    with recorded(cfg, Path(output_dir), choices, multirun) as r:
        prepare(r, multirun)
        fit(r)
        evaluate(r)
    return r.summary


def _write_statement(out: Path, summary: dict, facts: RunFacts) -> None:
    """privacy_statement.md and the summary's copy; a failure here is recorded, and never
    hides the run's own error."""
    summary["nonprivate_metrics"] = sorted(
        m for m in facts.released_metrics if is_nonprivate(m, facts.nonprivate)
    )
    try:
        summary["privacy_statement"] = privacy_statement(facts)
        (out / "privacy_statement.md").write_text(statement_markdown(summary["privacy_statement"]))
    except Exception as err:  # the summary must still be written
        summary["privacy_statement"] = None
        summary["privacy_statement_error"] = f"{type(err).__name__}: {err}"
        log.error("could not write the privacy statement: %s", err)


def _finish_wandb(logger, summary: dict) -> None:
    """Close the wandb run (multirun jobs share a process) with the final numbers in it."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return
    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float, str, bool, dict, list)) or value is None:
                    wandb.run.summary[key] = value
            ok = summary.get("status") in ("completed", "pruned", "debug")  # pruned: not a failure
            wandb.finish(exit_code=0 if ok else 1)
