"""The offline report from fake run folders: every figure, numbers equal to the summaries,
failed and running runs shown as such, one panel per dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpresearch.report import figures
from dpresearch.report.__main__ import build_report
from dpresearch.report.html import Tables
from dpresearch.report.runs import find_runs
from tests.helpers.runs import fake_run


def parse(report: Path) -> Tables:
    parsed = Tables()
    parsed.feed(report.read_text())
    return parsed


def test_report_has_every_figure_and_the_summaries_numbers(tmp_path) -> None:
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.61, 0.65]):
        for eps, clip_acc in ((1.0, 0.0), (4.0, 0.1)):
            for clipping, extra in (("fixed", 0.0), ("automatic", 0.02)):
                fake_run(runs, f"{clipping}-{eps}-{seed}", status="completed", seed=seed,
                         clipping=clipping, target_epsilon=eps, epsilon=eps * 0.99,
                         test_accuracy=acc + clip_acc + extra)  # fmt: skip
    for lr in (0.01, 0.1):  # a grid at epsilon 4
        for clip in (0.5, 2.0):
            fake_run(runs, f"grid-{lr}-{clip}", status="completed", target_epsilon=4.0,
                     epsilon=3.96, test_accuracy=0.7, val_accuracy=lr + clip, lr=lr,
                     clip=clip)  # fmt: skip
    fake_run(runs, "nonprivate", status="completed", private=False, test_accuracy=0.95,
             train_examples_per_s=4000.0)  # fmt: skip
    fake_run(runs, "banded", status="completed", target_epsilon=4.0, epsilon=3.97,
             test_accuracy=0.72, sampler="cyclic_poisson",
             noise={"mechanism": "banded_mf", "bands": 4},
             config={"noise": {"_target_": "dpresearch.privacy.mechanisms.BandedMF",
                               "bands": 4}})  # fmt: skip
    fake_run(runs, "crashed", status="failed", error="PrivacyConfigError: delta >= 1/N")
    fake_run(runs, "going", status="running")
    fake_run(runs / "text", "t", status="completed", dataset="sentiment_templates",
             test_accuracy=0.8, target_epsilon=3.0, epsilon=2.98)  # fmt: skip
    report = build_report([runs], tmp_path / "out")
    parsed = parse(report)
    for fig in ("accuracy vs epsilon (digits)", "per-run throughput and machine load (digits)",
                "learning curves (digits)", "learning rate x clipping threshold (digits)",
                "accuracy vs epsilon (sentiment_templates)"):  # fmt: skip
        assert fig in parsed.images
    pngs = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert {"accuracy_vs_epsilon_digits.png", "cost_digits.png", "curves_digits.png",
            "heatmap_digits.png"} <= pngs  # fmt: skip
    acc = {(r["series"], r["epsilon"]): r for r in parsed.tables["accuracy"]}
    # The seeds of one config at the epsilon they spent; the legend names what the grid varies.
    fixed4 = acc["fixed/bk/full, clipping.max_grad_norm=1, optimizer.lr=0.01", "3.96"]
    assert float(fixed4["mean"]) == (0.71 + 0.75) / 2 and fixed4["n"] == "2"
    assert acc["non-private/full, optimizer.lr=0.01", "inf"]["mean"] == "0.95"
    # Cost: per group, with the machine load, and no ratio between separate processes.
    cost = parsed.tables["cost"]
    assert all("speed" not in key for row in cost for key in row)
    assert {r["load_per_cpu"] for r in cost} == {"0.5"}  # max(0.5, 1.0) / 2 CPUs
    assert "not speed ratios" in report.read_text()
    runs_table = {r["run"]: r for r in parsed.tables["runs"]}
    assert runs_table["crashed"]["status"] == "failed" and "delta" in runs_table["crashed"]["error"]
    assert runs_table["going"]["status"] == "running"
    # The noise mechanism: a column, and part of the method (its own line in the figure).
    assert runs_table["banded"]["noise"] == "banded_mf"
    assert runs_table["banded"]["method"] == "fixed/bk/full/cyclic_poisson/banded_mf"
    banded = [
        r
        for (series, eps), r in acc.items()
        if series.startswith("fixed/bk/full/cyclic_poisson/banded_mf") and eps == "3.97"
    ]
    assert [r["mean"] for r in banded] == ["0.72"]
    assert runs_table["text/t"]["dataset"] == "sentiment_templates"  # named by its path
    assert (runs_table["grid-0.1-2.0"]["lr"], runs_table["grid-0.1-2.0"]["clip"]) == ("0.1", "2")


def test_unlike_runs_are_never_pooled_and_epsilon_is_never_averaged(tmp_path) -> None:
    """The issue's case: a 30-epoch run, three 3-epoch sweep trials and a fast_dev_run of the
    same method and target were one point 'seeds: 5' at the mean of their epsilons."""
    runs = tmp_path / "runs"
    fake_run(runs, "default", status="completed", target_epsilon=3.0, epsilon=2.97,
             test_accuracy=0.78)  # fmt: skip
    for i, lr in enumerate((0.001, 0.01, 0.1)):
        fake_run(runs / "sweep", str(i), status="completed", target_epsilon=3.0, epsilon=2.1,
                 test_accuracy=0.3, lr=lr,
                 config={"trainer": {"max_epochs": 3}, "sweep_trial": {"number": i}})  # fmt: skip
    fake_run(runs, "smoke", status="debug", target_epsilon=3.0, epsilon=0.1, test_accuracy=0.1)
    # Same config, different spent epsilon (e.g. one stopped by its budget): two points.
    fake_run(runs, "a", status="completed", target_epsilon=8.0, epsilon=7.9, test_accuracy=0.8)
    fake_run(runs, "b", status="completed", target_epsilon=8.0, epsilon=6.5, test_accuracy=0.7)
    parsed = parse(build_report([runs], tmp_path / "out"))
    points = {(r["series"], r["epsilon"]): r["n"] for r in parsed.tables["accuracy"]}
    assert points == {("fixed/bk/full", "2.97"): "1", ("fixed/bk/full", "7.9"): "1",
                      ("fixed/bk/full", "6.5"): "1"}  # fmt: skip
    shown = {r["run"]: r["shown"] for r in parsed.tables["runs"]}
    assert shown["default"] == "yes" and shown["sweep/0"].startswith("sweep trial")
    assert shown["smoke"].startswith("debug run")

    parsed = parse(build_report([runs], tmp_path / "all", include=("sweeps", "debug")))
    points = {(r["series"], r["epsilon"]): r["n"] for r in parsed.tables["accuracy"]}
    assert ("fixed/bk/full", "2.1") not in points  # the trials differ (lr), and from the rest
    labels = {series for series, _ in points}
    assert any("trainer.max_epochs=3" in s and "optimizer.lr=0.1" in s for s in labels), labels
    assert all(n == "1" for n in points.values())
    assert not {e for _, e in points} - {"2.97", "2.1", "0.1", "7.9", "6.5"}  # no mean epsilon


def test_lr_clip_maps_never_average_across_epsilon(tmp_path) -> None:
    runs = tmp_path / "runs"
    for eps in (1.0, 4.0):
        for lr in (0.01, 0.1):
            for clip in (0.5, 2.0):
                for seed in (0, 1):
                    fake_run(runs, f"{eps}-{lr}-{clip}-{seed}", status="completed", seed=seed,
                             target_epsilon=eps, epsilon=eps, test_accuracy=0.5, lr=lr,
                             clip=clip, val_accuracy=eps / 10 + seed / 100)  # fmt: skip
    grids = figures.lr_clip_grids(find_runs([runs]))
    assert sorted(g["epsilons"][0] for g in grids) == [1.0, 4.0]
    for g in grids:
        eps = g["epsilons"][0]
        assert list(g["values"].values()) == pytest.approx([eps / 10 + 0.005] * 4)
        assert set(g["n"].values()) == {2} and "privacy.target_epsilon" in g["label"]
    build_report([runs], tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").glob("heatmap_*.png")} == {
        "heatmap_digits.png", "heatmap_digits_2.png"}  # fmt: skip


def test_report_refuses_an_unknown_include(tmp_path) -> None:
    fake_run(tmp_path, "r", status="completed", test_accuracy=0.5, epsilon=1.0)
    with pytest.raises(SystemExit, match="sweeps, debug"):
        build_report([tmp_path], tmp_path / "out", include=("sweep",))


def test_wandb_report_has_the_comparison_panels_built_offline() -> None:
    import wandb_workspaces.reports.v2 as wr

    from dpresearch.report.wandb_report import PANELS, build

    report = build("someone", "dpresearch")
    panels = {p.title: p for b in report.blocks if isinstance(b, wr.PanelGrid) for p in b.panels}
    assert set(panels) == set(PANELS)
    acc = panels["accuracy vs epsilon"]
    assert isinstance(acc, wr.ScatterPlot) and acc.x.name == "epsilon" and acc.log_x
    assert acc.y.name == "test_accuracy"
    throughput = panels["examples/s per setting (separate processes: not a speed ratio)"]
    assert isinstance(throughput, wr.BarPlot) and throughput.groupby.name == "setting"
    heat = panels["learning rate x clipping threshold"]
    assert (heat.x.name, heat.y.name, heat.z.name) == (
        "optimizer.lr",
        "clipping.max_grad_norm",
        "val_accuracy",
    )
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert grids[0].runsets[0].groupby == ["setting"] and "train" in grids[0].runsets[0].filters


def test_sweeps_released_models_are_drawn_at_the_epsilon_of_their_release(tmp_path) -> None:
    """A private selection's winner at its sweep's TOTAL epsilon, with the same sweep's best
    trial by exact validation as a non-private point at its trial's epsilon, labelled so; a
    non-private sweep's winner at its trial's epsilon."""
    import json

    for sweep, kind, total in (("private", "private", 3.98), ("plain", "nonprivate", None)):
        folder = tmp_path / sweep
        fake_run(folder, "0", status="completed", epsilon=1.7, test_accuracy=0.8,
                 config={"sweep_trial": {"number": 0}})  # fmt: skip
        fake_run(folder, "1", status="completed", epsilon=1.7, test_accuracy=0.7,
                 config={"sweep_trial": {"number": 1}})  # fmt: skip
        entry = {"number": 0, "test_accuracy": 0.8, "trial_training_epsilon": 1.7,
                 "output_dir": str(folder / "0")}  # fmt: skip
        record = {"selection": kind, "total_epsilon": total, "winner": entry,
                  "trials": {"complete": 2}}  # fmt: skip
        if kind == "private":
            record.update(
                k_drawn=2,
                total_target_epsilon=4.0,
                nonprivate_choice={
                    **entry,
                    "number": 1,
                    "test_accuracy": 0.7,
                    "output_dir": str(folder / "1"),
                },
            )
        (folder / "selection.json").write_text(json.dumps(record))
    report = build_report([tmp_path], tmp_path / "out")
    parsed = parse(report)
    rows = {r["sweep"].rsplit("/", 1)[-1]: r for r in parsed.tables["selections"]}
    assert float(rows["private"]["epsilon"]) == 3.98 and rows["private"]["k"] == "2"
    assert float(rows["plain"]["epsilon"]) == 1.7
    assert "released models of sweeps (digits)" in parsed.images
    assert (tmp_path / "out" / "selections_digits.png").stat().st_size > 0
    from dpresearch.report.selections import NONPRIVATE, PRIVATE, find_selections, points

    series = points(find_selections([tmp_path]))
    method = next(iter(series)).split(":")[0]
    assert series[f"{method}: {PRIVATE}"] == [(3.98, 0.8, 0.0, 1)]
    # the plain sweep's winner and the private sweep's best-by-exact-validation trial
    assert series[f"{method}: {NONPRIVATE}"] == [(1.7, 0.75, pytest.approx(0.05), 2)]
    assert "NOT accounted" in NONPRIVATE
