"""The comparison dashboard as a wandb Report, built in code (wandb-workspaces): accuracy vs
epsilon per method, throughput and memory per method, and the learning rate x clipping
threshold map of sweeps. Runs are grouped by the ``method`` every run logs in its config."""

from __future__ import annotations

PANELS = ("accuracy vs epsilon", "validation accuracy vs epsilon spent", "throughput per method",
          "peak memory per method", "learning rate x clipping threshold")  # fmt: skip


def build(entity: str, project: str):
    import wandb_workspaces.reports.v2 as wr

    train = wr.Runset(entity=entity, project=project, name="training runs",
                      filters="Config('job_type') == 'train'", groupby=["method"])  # fmt: skip
    sweeps = wr.Runset(entity=entity, project=project, name="sweep trials",
                       filters="Config('job_type') == 'sweep'")  # fmt: skip
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
                    wr.ScatterPlot(
                        title=PANELS[0],
                        x=wr.SummaryMetric("epsilon"),
                        y=wr.SummaryMetric("test_accuracy"),
                        log_x=True,
                    ),
                    wr.LinePlot(title=PANELS[1], x="epsilon", y=["val_acc"], groupby="method"),
                ],
            ),  # fmt: skip
            wr.H1("Cost per method"),
            wr.PanelGrid(
                runsets=[train],
                panels=[
                    wr.BarPlot(
                        title=PANELS[2],
                        metrics=[wr.SummaryMetric("train_examples_per_s")],
                        groupby=wr.Config("method"),
                        groupby_aggfunc="mean",
                        groupby_rangefunc="stddev",
                    ),
                    wr.BarPlot(
                        title=PANELS[3],
                        metrics=[wr.SummaryMetric("peak_memory_mb")],
                        groupby=wr.Config("method"),
                        groupby_aggfunc="mean",
                    ),
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
