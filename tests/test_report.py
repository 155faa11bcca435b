"""The offline report from fake run folders: every figure, numbers equal to the summaries,
failed and running runs shown as such, one panel per dataset."""

from __future__ import annotations

from html.parser import HTMLParser

from dpresearch.report.__main__ import build_report
from tests.helpers.runs import fake_run


class Tables(HTMLParser):
    """Cells of every <table class=...> by their data-key."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self.current = self.key = None
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":  # digits' tables come first; later datasets' get "#2", ...
            name = attrs.get("class", "")
            while name in self.tables:
                name += "#2"
            self.current = self.tables.setdefault(name, [])
        elif tag == "tr" and self.current is not None:
            self.current.append({})
        elif tag == "td":
            self.key = attrs.get("data-key")
        elif tag == "img":
            self.images.append(attrs["alt"])

    def handle_data(self, data):
        if self.key and self.current:
            self.current[-1][self.key] = data

    def handle_endtag(self, tag):
        if tag == "tr" and self.current and not self.current[-1]:
            self.current.pop()  # the header row
        if tag == "td":
            self.key = None
        if tag == "table":
            self.current = None


def test_report_has_every_figure_and_the_summaries_numbers(tmp_path) -> None:
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.61, 0.65]):
        for eps, clip_acc in ((1.0, 0.0), (4.0, 0.1)):
            for clipping, extra in (("fixed", 0.0), ("automatic", 0.02)):
                fake_run(runs, f"{clipping}-{eps}-{seed}", status="completed", seed=seed,
                         clipping=clipping, target_epsilon=eps, epsilon=eps * 0.99,
                         test_accuracy=acc + clip_acc + extra,
                         lr=0.01 * (seed + 1), clip=eps)  # fmt: skip
    fake_run(runs, "nonprivate", status="completed", private=False, test_accuracy=0.95,
             train_examples_per_s=4000.0)  # fmt: skip
    fake_run(runs, "crashed", status="failed", error="PrivacyConfigError: delta >= 1/N")
    fake_run(runs, "going", status="running")
    fake_run(runs / "text", "t", status="completed", dataset="sentiment_templates",
             test_accuracy=0.8, target_epsilon=3.0, epsilon=2.98)  # fmt: skip
    report = build_report([runs], tmp_path / "out")
    parsed = Tables()
    parsed.feed(report.read_text())
    for fig in ("accuracy vs epsilon (digits)", "throughput per method (digits)",
                "learning curves (digits)", "learning rate x clipping threshold (digits)",
                "accuracy vs epsilon (sentiment_templates)"):  # fmt: skip
        assert fig in parsed.images
    pngs = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert {"accuracy_vs_epsilon_digits.png", "cost_digits.png", "curves_digits.png",
            "heatmap_digits.png"} <= pngs  # fmt: skip
    acc = {(r["method"], r["epsilon"]): r for r in parsed.tables["accuracy"]}
    fixed4 = acc["fixed/bk/full", "3.96"]
    assert float(fixed4["mean"]) == (0.71 + 0.75) / 2 and fixed4["n"] == "2"
    assert acc["non-private/full", "inf"]["mean"] == "0.95"
    cost = {r["method"]: r for r in parsed.tables["cost"]}
    assert float(cost["fixed/bk/full"]["speed_vs_nonprivate"]) == 0.25  # 1000 / 4000
    states = {r["run"]: r["status"] for r in parsed.tables["runs"]}
    assert states["crashed"] == "failed" and states["going"] == "running"
    crashed = next(r for r in parsed.tables["runs"] if r["run"] == "crashed")
    assert "delta" in crashed["error"]


def test_wandb_report_has_the_comparison_panels_built_offline() -> None:
    import wandb_workspaces.reports.v2 as wr

    from dpresearch.report.wandb_report import PANELS, build

    report = build("someone", "dpresearch")
    panels = {p.title: p for b in report.blocks if isinstance(b, wr.PanelGrid) for p in b.panels}
    assert set(panels) == set(PANELS)
    acc = panels["accuracy vs epsilon"]
    assert isinstance(acc, wr.ScatterPlot) and acc.x.name == "epsilon" and acc.log_x
    assert acc.y.name == "test_accuracy"
    throughput = panels["throughput per method"]
    assert isinstance(throughput, wr.BarPlot) and throughput.groupby.name == "method"
    heat = panels["learning rate x clipping threshold"]
    assert (heat.x.name, heat.y.name, heat.z.name) == (
        "optimizer.lr",
        "clipping.max_grad_norm",
        "val_accuracy",
    )
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert grids[0].runsets[0].groupby == ["method"] and "train" in grids[0].runsets[0].filters
