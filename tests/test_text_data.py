"""Text data: the offline smoke task, local files, tokenization cache, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from dpresearch.data.base import DataError
from dpresearch.data.padding import PAD_INDEX, PAD_LABEL
from dpresearch.data.samplers import PoissonSampling
from dpresearch.data.text import HFTextDataset, SentimentTemplates, TextFiles

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def setup(dm):
    dm.attach_sampler(PoissonSampling(expected_batch_size=16), 0)
    dm.setup("fit")
    return dm


def test_templates_are_balanced_deterministic_and_tokenized_by_the_model(tmp_path) -> None:
    dm = setup(SentimentTemplates(tokenizer=MINILM, n_train=400, n_test=100, max_length=16,
                                  cache_dir=str(tmp_path)))  # fmt: skip
    texts, labels, _, _ = dm.read()
    assert texts == SentimentTemplates(tokenizer=MINILM, n_train=400, n_test=100).read()[0]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    assert any(" not " in t for t in texts)  # negations that flip the label exist
    x, y = dm.train_set.__getitems__([0, 1, PAD_INDEX])
    assert x["input_ids"].shape == (3, 16) and x["input_ids"].dtype == torch.long
    assert x["input_ids"][0, 0] == dm.tokenizer.cls_token_id  # the model's own tokenizer
    assert y[2] == PAD_LABEL and x["attention_mask"][2].sum() == 0  # padding example
    assert len(list(tmp_path.glob("*.pt"))) == 2  # train and test cached once
    again = setup(SentimentTemplates(tokenizer=MINILM, n_train=400, n_test=100, max_length=16,
                                     cache_dir=str(tmp_path)))  # fmt: skip
    assert torch.equal(again.train_set.x["input_ids"], dm.train_set.x["input_ids"])


def test_local_csv_and_jsonl_with_named_labels_and_pairs(tmp_path) -> None:
    rows = [{"q": f"question {i}", "s": f"sentence {i}", "label": ["no", "yes"][i % 2]}
            for i in range(20)]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.csv").write_text(
        "q,s,label\n" + "\n".join(f"{r['q']},{r['s']},{r['label']}" for r in rows[:6])
    )
    dm = setup(TextFiles(train=str(tmp_path / "train.jsonl"), test=str(tmp_path / "test.csv"),
                         text_columns=["q", "s"], tokenizer=MINILM, num_classes=2,
                         max_length=12, cache_dir=str(tmp_path / "cache")))  # fmt: skip
    assert dm.test_set.y.tolist() == [0, 1, 0, 1, 0, 1]  # "no" -> 0, "yes" -> 1
    sep = dm.tokenizer.sep_token_id
    assert (dm.test_set.x["input_ids"][0] == sep).sum() == 2  # a sentence pair


def test_text_file_errors_name_what_to_change(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("sentence,label\nhello,0\n")
    with pytest.raises(DataError, match=r"no column\(s\) \['text'\]"):
        TextFiles(train=str(tmp_path / "a.csv"), test=str(tmp_path / "a.csv"),
                  tokenizer=MINILM, num_classes=2).read()  # fmt: skip
    with pytest.raises(DataError, match="does not exist"):
        TextFiles(train=str(tmp_path / "nope.csv"), test=str(tmp_path / "a.csv"),
                  tokenizer=MINILM, num_classes=2).read()  # fmt: skip
    (tmp_path / "b.csv").write_text("text,label\nhello,0\nbye,5\n")
    with pytest.raises(DataError, match="dataset.num_classes"):
        TextFiles(train=str(tmp_path / "b.csv"), test=str(tmp_path / "b.csv"),
                  tokenizer=MINILM, num_classes=2, cache_dir=str(tmp_path)).load()  # fmt: skip


def test_hub_dataset_offline_is_one_clear_error() -> None:
    dm = HFTextDataset(path="glue", subset="sst2", tokenizer=MINILM, num_classes=2)
    with pytest.raises(DataError, match="sentiment_templates|pip install"):
        dm.read()


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("holes.csv", "text,label\nhello,0\nbye,\nagain,1\n",
         r"holes.csv, line 3: no value in column\(s\) \['label'\]"),
        ("short.csv", "text,label\nhello,0\nbye\n", r"short.csv, line 3: no value .*'label'"),
        ("header.csv", "text,label\n", r"header.csv has a header \(.*'label'\]\) but no rows"),
        ("holes.jsonl", '{"text": "a", "label": 0}\n\n{"text": "b"}\n',
         r"holes.jsonl, line 3: no value in column\(s\) \['label'\]"),
        ("broken.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "lab\n',
         r"broken.jsonl, line 2: Unterminated string"),
        ("broken.json", '[{"text": "a", "label": 0},\n {"text": "b" "label": 1}]',
         r"broken.json, line 2: Expecting ','"),
        ("latin1.csv", "text,label\ncaf\xe9,0\n".encode("latin-1"), r"latin1.csv is not UTF-8"),
    ],
)  # fmt: skip
def test_bad_text_files_are_refused_naming_file_and_line(tmp_path, name, content, match) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=match):
        TextFiles(train=str(path), test=str(path), tokenizer=MINILM, num_classes=2).read()


def test_text_files_name_each_rows_user(tmp_path) -> None:
    """dataset.user_column: each training row's user from the files (privacy.unit=user);
    a missing column, an empty value and synthetic users beside it are refused by name."""
    rows = [{"text": f"sentence {i}", "label": i % 2, "author": f"user{i % 7}"} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]))
    files = {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl"),
             "tokenizer": MINILM, "num_classes": 2, "max_length": 8,
             "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    dm = setup(TextFiles(user_column="author", **files))
    assert dm.num_users == 7
    texts = dm.tokenizer.batch_decode(dm.train_set.x["input_ids"], skip_special_tokens=True)
    for text, user in zip(texts, dm.train_set.users.tolist()):  # the row's own user
        assert sorted(f"user{i}" for i in range(7))[user] == f"user{int(text.split()[-1]) % 7}"
    with pytest.raises(DataError, match="dataset.user_column"):
        TextFiles(user_column="writer", **files).read()
    with pytest.raises(ValueError, match="set only one"):
        TextFiles(user_column="author", users=5, **files)
    rows[3]["author"] = " "
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="no user in column 'author'"):
        TextFiles(user_column="author", **files).read()
