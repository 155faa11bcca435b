"""The comparison dashboard as a wandb Report, built in code (wandb-workspaces): accuracy vs
epsilon, throughput and memory, and the learning rate x clipping threshold map of sweeps.
Training runs are grouped by the ``setting`` every run logs in its config (one id for the seeds
of one config, tracking/setting.py), so wandb's mean and spread are over seeds only. Every key
a panel reads is checked against what a real offline run logs (tests/test_run.py)."""

from __future__ import annotations

PANELS = ("accuracy vs epsilon", "validation accuracy vs epsilon spent",
          "examples/s per setting (separate processes: not a speed ratio)",
          "peak memory per setting", "learning rate x clipping threshold",
          "released models of sweeps: test accuracy vs the epsilon of the release")  # fmt: skip


def accuracy_vs_epsilon(title: str):
    """Test accuracy against the epsilon a run's summary reports (log scale)."""
    import wandb_workspaces.reports.v2 as wr

    return wr.ScatterPlot(title=title, x=wr.SummaryMetric("epsilon"),
                          y=wr.SummaryMetric("test_accuracy"), log_x=True)  # fmt: skip


def build(entity: str, project: str):
    import wandb_workspaces.reports.v2 as wr

    train = wr.Runset(entity=entity, project=project, name="training runs",
                      filters="Config('job_type') == 'train'", groupby=["setting"])  # fmt: skip
    sweeps = wr.Runset(entity=entity, project=project, name="sweep trials",
                       filters="Config('job_type') == 'sweep'")  # fmt: skip
    released = wr.Runset(entity=entity, project=project, name="released models of sweeps",
                         filters="Config('job_type') == 'selection'",
                         groupby=["setting"])  # fmt: skip
    return wr.Report(
        project=project,
        entity=entity,
        title="dpresearch: accuracy versus privacy, and its cost",
        description="Built by `python -m dpresearch.report --wandb ENTITY/PROJECT`.",
        blocks=[
            wr.H1("Accuracy versus epsilon"),
            wr.PanelGrid(
                runsets=[train],
                panels=[
                    accuracy_vs_epsilon(PANELS[0]),
                    wr.LinePlot(title=PANELS[1], x="epsilon", y=["val_acc"], groupby="setting"),
                ],
            ),  # fmt: skip
            wr.H1("Cost per setting"),
            wr.P(
                "Each run is timed in its own process, on machines whose load differs "
                "(summary: machine.load_1m_start/end, machine.cpus): these bars are not "
                "speed ratios. `python -m dpresearch.benchmark` times methods in one process."
            ),
            wr.PanelGrid(
                runsets=[train],
                panels=[
                    wr.BarPlot(
                        title=PANELS[2],
                        metrics=[wr.SummaryMetric("train_examples_per_s")],
                        groupby=wr.Config("setting"),
                        groupby_aggfunc="mean",
                        groupby_rangefunc="stddev",
                    ),
                    wr.BarPlot(
                        title=PANELS[3],
                        metrics=[wr.SummaryMetric("peak_memory_mb")],
                        groupby=wr.Config("setting"),
                        groupby_aggfunc="mean",
                    ),
                ],
            ),  # fmt: skip
            wr.H1("Released models of sweeps"),
            wr.P(
                "One point per sweep's winner. A private selection is drawn at the epsilon of "
                "the whole sweep; a non-private selection at its winning trial's epsilon, which "
                "does NOT account the choice among trials (its setting says so)."
            ),
            wr.PanelGrid(
                runsets=[released],
                panels=[
                    accuracy_vs_epsilon(PANELS[5]),
                ],
            ),  # fmt: skip
            wr.H1("Sweeps"),
            wr.PanelGrid(
                runsets=[sweeps],
                panels=[
                    wr.ScatterPlot(
                        title=PANELS[4],
                        x=wr.Config("optimizer.lr"),
                        y=wr.Config("clipping.max_grad_norm"),
                        z=wr.SummaryMetric("val_accuracy"),
                        log_x=True,
                        log_y=True,
                    ),
                ],
            ),  # fmt: skip
        ],
    )


def publish(entity_project: str) -> str:
    """Save the report to wandb (needs a network and `wandb login`); returns its URL."""
    if entity_project.count("/") != 1:
        raise SystemExit(f"--wandb takes ENTITY/PROJECT, got {entity_project!r}")
    entity, project = entity_project.split("/")
    report = build(entity, project)
    report.save()
    return report.url
