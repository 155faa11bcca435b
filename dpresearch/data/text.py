"""Text classification data: tokenized once (with the model's own tokenizer), cached, and held
in memory as input_ids / attention_mask tensors padded to ``max_length``.

Sources: ``SentimentTemplates`` (offline, generated; a smoke task, not a benchmark),
``HFTextDataset`` (Hugging Face hub datasets by name, e.g. GLUE SST-2, QNLI, MNLI; needs
``pip install -e '.[hub]'`` and a network) and ``TextFiles`` (local CSV/JSON/JSONL files with
text and label columns).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path

import torch

from dpresearch.data.base import ClassificationDataModule, DataError, Inputs

Texts = list[str] | list[tuple[str, str]]


class TextDataModule(ClassificationDataModule):
    name = "text"

    def __init__(
        self,
        tokenizer: str | None,
        num_classes: int,
        max_length: int = 128,
        cache_dir: str = "data/text_cache",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        eval_batch_size: int = 256,
        public_validation: bool = False,
        users: int | None = None,
        user_skew: float = 0.0,
    ):
        super().__init__(val_fraction, split_seed, eval_batch_size, augment=False,
                         public_validation=public_validation, users=users,
                         user_skew=user_skew)  # fmt: skip
        if max_length < 2:
            raise ValueError(f"dataset.max_length must be >= 2, got {max_length}")
        self.tokenizer_name = tokenizer
        self.num_classes = num_classes
        self.max_length = max_length
        self.input_shape = (max_length,)
        self.cache_dir = Path(cache_dir)
        self._tokenizer = None

    # Subclasses: the raw texts (single sentences or sentence pairs) and integer labels.
    def read(self) -> tuple[Texts, list[int], Texts, list[int]]:
        raise NotImplementedError

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from dpresearch.hf_hub import load_tokenizer

            if not self.tokenizer_name:
                raise DataError(
                    "text datasets are tokenized with the model's tokenizer, and this model "
                    "has none: use a Hugging Face model (model=minilm or model=hf_text) or set "
                    "dataset.tokenizer=<name or folder>"
                )
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def model_kwargs(self) -> dict:
        return {"num_classes": self.num_classes}

    def transform(self, x: Inputs) -> Inputs:
        return x

    def tokenize(self, texts: Texts) -> dict[str, torch.Tensor]:
        pairs = bool(texts) and isinstance(texts[0], (tuple, list))
        args = ([t[0] for t in texts], [t[1] for t in texts]) if pairs else (list(texts),)
        enc = self.tokenizer(*args, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")  # fmt: skip
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _cached(self, texts: Texts, labels: list[int], split: str):
        key = hashlib.sha1(
            json.dumps([self.name, self.tokenizer_name, self.max_length, texts, labels]).encode()
        ).hexdigest()[:16]
        path = self.cache_dir / f"{self.name}-{split}-{key}.pt"
        if path.exists():
            stored = torch.load(path)
            return stored["x"], stored["y"]
        x, y = self.tokenize(texts), torch.tensor(labels, dtype=torch.long)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": x, "y": y}, path)
        return x, y

    def load(self):
        train_texts, train_labels, test_texts, test_labels = self.read()
        for labels in (train_labels, test_labels):
            bad = sorted({v for v in labels if not 0 <= v < self.num_classes})
            if bad:
                raise DataError(
                    f"labels {bad[:5]} are outside 0..{self.num_classes - 1}; set "
                    "dataset.num_classes to the number of classes"
                )
        x, y = self._cached(train_texts, train_labels, "train")
        x_test, y_test = self._cached(test_texts, test_labels, "test")
        return x, y, x_test, y_test

    def synthetic_batch(self, n: int, seed: int) -> tuple[Inputs, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1000, len(self.tokenizer), (n, self.max_length), generator=g)
        mask = torch.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask}, torch.randint(
            0, self.num_classes, (n,), generator=g
        )

    def check_batch(self, n: int = 5, seed: int = 0) -> tuple[Inputs, torch.Tensor]:
        """Random token ids within the vocabulary and ragged attention masks (random lengths,
        padding ids after them), as real padded sentences have; the last is a padding example."""
        x, y = super().check_batch(n, seed)
        g = torch.Generator().manual_seed(seed + 1)
        lengths = torch.randint(2, self.max_length + 1, (n,), generator=g)
        keep = torch.arange(self.max_length).unsqueeze(0) < lengths.unsqueeze(1)
        pad_id = self.tokenizer.pad_token_id or 0
        x["input_ids"] = torch.where(keep, x["input_ids"], torch.full_like(x["input_ids"], pad_id))
        x["attention_mask"] = keep.to(x["attention_mask"].dtype)
        return x, y


POSITIVE = ["great", "wonderful", "excellent", "brilliant", "delightful", "superb", "charming",
            "moving", "fantastic", "enjoyable", "gripping", "beautiful", "clever", "touching",
            "memorable", "funny"]  # fmt: skip
NEGATIVE = ["awful", "boring", "dull", "terrible", "dreadful", "tedious", "clumsy", "bland",
            "painful", "disappointing", "forgettable", "messy", "lifeless", "annoying", "weak",
            "pointless"]  # fmt: skip
SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending",
            "the script", "the cast", "the director's new work", "the dialogue", "the story",
            "the cinematography"]  # fmt: skip
TEMPLATES = ["{s} was {a}.", "i found {s} {a}.", "honestly, {s} is {a}.",
             "{s} felt {a} from start to finish.", "everyone agreed that {s} was {a}.",
             "what i remember most is how {a} {s} was."]  # fmt: skip
NEGATED = ["{s} was not {a}.", "i would not call {s} {a}.", "{s} was anything but {a}."]


class SentimentTemplates(TextDataModule):
    """An offline sentiment smoke task generated from templates: positive or negative
    adjectives about a film, with negations that flip the label ("not great" is negative).
    Enough to show that fine-tuning learns; not a benchmark."""

    name = "sentiment_templates"

    def __init__(self, n_train: int = 2000, n_test: int = 500, seed: int = 0, **kwargs):
        kwargs.setdefault("num_classes", 2)
        super().__init__(**kwargs)
        self.n_train, self.n_test, self.seed = n_train, n_test, seed

    def _generate(self, n: int, rng: random.Random) -> tuple[list[str], list[int]]:
        texts, labels = [], []
        for _ in range(n):
            positive = rng.random() < 0.5
            negated = rng.random() < 0.25
            words = POSITIVE if positive != negated else NEGATIVE
            template = rng.choice(NEGATED if negated else TEMPLATES)
            texts.append(template.format(s=rng.choice(SUBJECTS), a=rng.choice(words)))
            labels.append(int(positive))
        return texts, labels

    def read(self):
        rng = random.Random(self.seed)
        train = self._generate(self.n_train, rng)
        test = self._generate(self.n_test, rng)
        return train[0], train[1], test[0], test[1]


class HFTextDataset(TextDataModule):
    """A Hugging Face hub dataset by name, e.g. ``path=glue subset=sst2``."""

    def __init__(
        self,
        path: str,
        subset: str | None = None,
        text_columns: list[str] = ("sentence",),
        label_column: str = "label",
        train_split: str = "train",
        test_split: str = "validation",  # GLUE test labels are hidden
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.path, self.subset = path, subset
        self.text_columns, self.label_column = list(text_columns), label_column
        self.train_split, self.test_split = train_split, test_split
        self.name = f"{path}-{subset}" if subset else path

    def read(self):
        try:
            import datasets
        except ImportError:
            raise DataError(
                "dataset.path needs the `datasets` package: pip install -e '.[hub]'"
            ) from None
        try:
            data = datasets.load_dataset(self.path, self.subset)
        except Exception as err:  # network, name, or cache problems: one clear line
            raise DataError(
                f"could not load {self.name} from the Hugging Face hub ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); it needs a network the first time, or use "
                "dataset=text_files with local CSV/JSON files, or dataset=sentiment_templates"
            ) from None
        return (*self._split(data[self.train_split]), *self._split(data[self.test_split]))

    def _split(self, split) -> tuple[Texts, list[int]]:
        cols = [split[c] for c in self.text_columns]
        texts = cols[0] if len(cols) == 1 else list(zip(*cols))
        return texts, list(split[self.label_column])


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """The file's rows, each with where it is (``line N`` of a CSV or JSONL, ``item N`` of a
    JSON list), so every later complaint can name its place."""
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist; set dataset.train / dataset.test")
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise DataError(f"dataset file {path}: use .csv, .json (a list of objects) or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"dataset file {path} is not UTF-8 text ({err}); re-save it as UTF-8"
        ) from None
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = [(f"line {reader.line_num}", row) for row in reader]
        except csv.Error as err:
            raise DataError(f"dataset file {path}, line {reader.line_num}: {err}") from None
        if not rows:
            raise DataError(f"dataset file {path} has a header ({reader.fieldnames}) but no rows")
        return rows
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"dataset file {path}, line {number}: {err.msg}") from None
    else:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"dataset file {path}, line {err.lineno}: {err.msg}") from None
        if not isinstance(items, list):
            raise DataError(f"dataset file {path} must hold a list of objects")
        rows = [(f"item {i}", item) for i, item in enumerate(items)]
    if not rows:
        raise DataError(f"dataset file {path} holds no rows")
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"dataset file {path}, {where}: expected an object, got {row!r:.60}")
    return rows


class TextFiles(TextDataModule):
    """Local files with text column(s) and a label column (labels: integers or names)."""

    name = "text_files"

    def __init__(
        self,
        train: str,
        test: str,
        text_columns: list[str] = ("text",),
        label_column: str = "label",
        labels: list[str] | None = None,
        user_column: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if user_column is not None and self.users is not None:
            raise ValueError(
                f"dataset.user_column={user_column!r} reads each example's user from the files; "
                f"dataset.users={self.users} would invent synthetic ones: set only one"
            )
        self.user_column = user_column  # privacy.unit=user: each row's user, from the files
        self._file_users: list[str] | None = None
        self.train_path, self.test_path = Path(train), Path(test)
        self.text_columns, self.label_column = list(text_columns), label_column
        self.labels = None if labels is None else [str(v) for v in labels]
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(
                f"dataset.labels has {len(self.labels)} names but dataset.num_classes="
                f"{self.num_classes}; give one name per class"
            )
        # Where the label names came from: the config (public), or the private files (then
        # the set of names is itself read from private data, and the records say so).
        self.label_source = "config" if self.labels is not None else None

    def _users_of(self, rows: list) -> list[str]:
        if self.user_column not in rows[0][1]:
            raise DataError(
                f"{self.train_path} has no column {self.user_column!r} (its columns: "
                f"{sorted(rows[0][1])}); set dataset.user_column to the column naming each "
                "row's user"
            )
        return [_user_of(self.train_path, where, row, self.user_column) for where, row in rows]

    def example_users(self, train_idx: torch.Tensor) -> torch.Tensor | None:
        """The training rows' users, read from ``dataset.user_column`` (names or numbers)."""
        if self.user_column is None:
            return super().example_users(train_idx)
        names = {name: i for i, name in enumerate(sorted(set(self._file_users)))}
        ids = torch.tensor([names[u] for u in self._file_users], dtype=torch.long)
        return ids[train_idx]

    def read(self):
        located = {self.train_path: _read_rows(self.train_path),
                   self.test_path: _read_rows(self.test_path)}  # fmt: skip
        for path, rows in located.items():
            columns = [*self.text_columns, self.label_column]
            missing = set(columns) - set(rows[0][1])
            if missing:
                raise DataError(
                    f"{path} has no column(s) {sorted(missing)} (its columns: "
                    f"{sorted(rows[0][1])}); set dataset.text_columns=[...] and "
                    "dataset.label_column=... to its columns"
                )
            for where, row in rows:  # a hole would become a class "None" or an empty text
                empty = [c for c in columns if row.get(c) is None or str(row[c]).strip() == ""]
                if empty:
                    raise DataError(
                        f"{path}, {where}: no value in column(s) {empty}; fill them in or "
                        "remove the row"
                    )
        train = [row for _, row in located[self.train_path]]
        test = [row for _, row in located[self.test_path]]
        if self.user_column is not None:
            self._file_users = self._users_of(located[self.train_path])
        raw = [r[self.label_column] for r in train + test]
        as_int = self.labels is None and all(str(v).lstrip("-").isdigit() for v in raw)
        if self.labels is not None:
            unknown = sorted({str(v) for v in raw} - set(self.labels))
            if unknown:
                raise DataError(
                    f"labels {unknown[:5]} in the files are not in dataset.labels="
                    f"{self.labels}; add them (one name per class)"
                )
            names = self.labels
        else:
            names = sorted({str(v) for v in raw})
            self.label_source = "integers in the files" if as_int else "names in the files"
        index = {n: i for i, n in enumerate(names)}

        def convert(rows):
            cols = [[r[c] for r in rows] for c in self.text_columns]
            texts = cols[0] if len(cols) == 1 else list(zip(*cols))
            labels = [int(r[self.label_column]) if as_int else index[str(r[self.label_column])]
                      for r in rows]  # fmt: skip
            return texts, labels

        return (*convert(train), *convert(test))


def _user_of(path: Path, where: str, row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or str(value).strip() == "":
        raise DataError(f"{path}, {where}: no user in column {column!r}; fill it in or remove "
                        "the row")  # fmt: skip
    return str(value)
