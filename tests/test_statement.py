"""What a run releases, and the privacy statement that says so (built from what it did)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpresearch.data.base import DataError
from dpresearch.data.text import TextFiles
from dpresearch.train import run

FAST = ["logger=csv", "extras.print_config=false", "trainer.enable_progress_bar=false",
        "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]  # fmt: skip


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def released(statement: dict) -> dict[str, bool]:
    return {r["what"]: r["covered"] for r in statement["released"]}


def test_private_run_releases_no_training_batch_metrics_and_marks_validation(
    compose_cfg, tmp_path
) -> None:
    out = tmp_path / "run"
    summary = run(compose_cfg([*FAST, "trainer.max_epochs=1"]), out)
    names = {k for r in rows(out) for k in r}
    assert not {n for n in names if "train_acc" in n or "train_loss" in n}
    val = [r for r in rows(out) if "val_acc" in r]
    assert val and all(r["nonprivate"] == ["val_acc", "val_loss"] for r in val)
    assert summary["nonprivate_metrics"] == ["val_acc", "val_loss"]
    assert "nonprivate_metrics" in (out / "csv" / "hparams.yaml").read_text()
    statement = json.loads((out / "summary.json").read_text())["privacy_statement"]
    assert statement["unit"] == "example" and "add/remove" in statement["neighbouring_relation"]
    assert statement["sampler"]["accountant_assumption_holds"] is True
    assert (
        statement["randomness"]["mode"] == "seeded" and "seed" in statement["randomness"]["meaning"]
    )
    assert statement["accounting"]["epsilon"] == summary["epsilon"]
    assert statement["accounting"]["delta_times_n"] == pytest.approx(1e-5 * summary["num_train"])
    assert "expected_batch_size=256" in statement["mechanism"]["normaliser"]
    assert statement["code"]["commit"] and isinstance(statement["code"]["dirty"], bool)
    covered = released(statement)
    assert covered["final model weights"] is True and covered["metric val_acc"] is False
    assert covered["checkpoints/last.ckpt"] is False  # seeded generators inside
    assert covered["metric epsilon"] is True and covered["metric test_acc"] is False
    md = (out / "privacy_statement.md").read_text()
    assert "| metric val_acc | NO |" in md and "add/remove one example" in md
    # Resumed: the statement counts the checkpoint's steps as part of what is covered.
    resumed = run(compose_cfg([*FAST, "trainer.max_epochs=2", "run.resume=true"]), out)
    again = resumed["privacy_statement"]["data_accesses"]["covered"]
    assert f"{summary['steps']} were taken before the resume" in again
    assert str(resumed["steps"]) in again


def test_statement_follows_the_sampler_randomness_and_declarations(compose_cfg, tmp_path):
    one = [*FAST, "trainer.max_epochs=1", "run.checkpoint=true"]
    shuffled = run(compose_cfg([*one, "sampler=shuffle"]), tmp_path / "shuffle")
    st = shuffled["privacy_statement"]
    assert st["sampler"]["poisson"] is False and st["guarantee"].startswith("none proven")
    secure = run(compose_cfg([*one, "privacy.randomness=secure", "dataset.public_validation=true",
                              "run.train_metrics=true"]), tmp_path / "secure")  # fmt: skip
    st = secure["privacy_statement"]
    assert st["randomness"]["mode"] == "secure" and st["sampler"]["poisson"] is True
    covered = released(st)
    assert covered["checkpoints/last.ckpt"] is True  # no generator state inside
    assert covered["metric val_acc"] is True  # declared public
    assert covered["metric nonprivate/train_acc"] is False
    assert secure["nonprivate_metrics"] == ["nonprivate/train_acc", "nonprivate/train_loss"]
    assert "declared public" in st["data_accesses"]["validation"]
    plain = run(compose_cfg([*FAST[:3], "trainer.max_epochs=1", "privacy=none"]),
                tmp_path / "plain")  # fmt: skip
    assert plain["privacy_statement"]["private"] is False
    assert {"train_acc", "train_loss"} <= {k for r in rows(tmp_path / "plain") for k in r}


def test_label_names_come_from_the_config_or_are_recorded_as_read(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    common = {"train": str(tmp_path / "a.csv"), "test": str(tmp_path / "a.csv"),
              "tokenizer": None, "num_classes": 2}  # fmt: skip
    from_data = TextFiles(**common)
    texts, labels, *_ = from_data.read()
    assert labels == [1, 0] and from_data.label_source == "names in the files"
    from_config = TextFiles(**common, labels=["pos", "neg"])
    assert from_config.read()[1] == [0, 1] and from_config.label_source == "config"
    with pytest.raises(DataError, match="not in dataset.labels"):
        TextFiles(**common, labels=["positive", "negative"]).read()
    with pytest.raises(ValueError, match="one name per class"):
        TextFiles(**common, labels=["pos"])


def test_report_shows_each_groups_statements(tmp_path) -> None:
    from dpresearch.report.__main__ import statement_rows
    from dpresearch.report.runs import Run

    def fake(randomness: str, covered: bool) -> Run:
        statement = {"guarantee": "(3, 1e-05)-DP", "sampler": {"accountant_assumption_holds": True},
                     "randomness": {"mode": randomness}, "code": {"commit": "abc", "dirty": False},
                     "data_accesses": {"sweep": "a single run", "validation": "public"},
                     "released": [{"what": "metric val_acc", "covered": covered}]}  # fmt: skip
        summary = {"private": True, "clipping": "fixed", "engine": "bk", "finetune": "full",
                   "sampler": "poisson", "privacy_statement": statement}  # fmt: skip
        return Run(tmp_path, summary)

    (row,) = statement_rows([fake("seeded", True), fake("secure", False)])
    assert row["runs"] == 2 and row["randomness"] == "secure; seeded"  # a mixed group shows it
    assert row["not_covered"] == "metric val_acc" and row["code"] == "abc"


def test_a_failed_run_still_states_what_it_did(compose_cfg, tmp_path) -> None:
    """A crash after the first epoch: the statement covers the steps taken (their checkpoint
    and metrics were released), and the run's own error is what is raised."""
    model = ["model._target_=tests.ddp_helpers.FailingNet", "+model.rank=0",
             "+model.fail_at=3", "sampler.max_physical_batch_size=1024"]  # fmt: skip
    with pytest.raises(RuntimeError, match="deliberate failure"):
        run(compose_cfg([*FAST, *model, "trainer.max_epochs=2"]), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "failed" and saved["privacy_statement"]["status"] == "failed"
    assert saved["steps"] >= 1 and saved["epsilon"] > 0
    assert saved["privacy_statement"]["guarantee"].startswith(f"({saved['epsilon']:.4g}, 1e-05)")
    covered = saved["privacy_statement"]["data_accesses"]["covered"]
    assert covered.startswith(f"the {saved['steps']} DP-SGD steps")


@pytest.mark.parametrize("public", [False, True])
def test_early_stopping_and_a_best_checkpoint_are_selections_the_statement_names(
    compose_cfg, tmp_path, public
) -> None:
    out = tmp_path / "run"
    overrides = [*FAST, "trainer.max_epochs=2", "callbacks=[early_stopping,model_checkpoint]",
                 f"dataset.public_validation={str(public).lower()}"]  # fmt: skip
    summary = run(compose_cfg(overrides), out)
    statement = summary["privacy_statement"]
    selection = statement["data_accesses"]["selection"]
    assert "callbacks.early_stopping chooses the stopping step by val_acc" in selection
    assert "callbacks.model_checkpoint chooses the checkpoint kept by val_acc" in selection
    assert ("NOT accounted" in selection) is not public
    assert (
        released(statement)["timing: summary.json wall_s, metrics.jsonl time and elapsed_s"]
        is False
    )
    assert released(statement)["final model weights"] is public  # chosen by a covered metric?
    assert (out / "checkpoints" / "best.ckpt").exists() and (
        out / "checkpoints" / "last.ckpt"
    ).exists()
    assert "callbacks.early_stopping" in (out / "privacy_statement.md").read_text()
