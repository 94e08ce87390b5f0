"""A downstream task as data: its train and dev splits (texts and raw labels) and the task they make
once labels are mapped (classification over the train labels, or regression). Where the examples
come from (files, the hub, the built-in task) is `tasks.py` and `builtin.py`; both build on this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from .config import FinetuneConfig

FORMAT_HINT = (
    "A task file needs a header with `sentence` (or `sentence1` and `sentence2`) and `label` "
    "(GLUE-format TSV; CSV and JSONL take the same columns); other names: "
    "--set finetune.text_columns=a,b --set finetune.label_column=c."
)


@dataclass
class Split:
    """One split: texts (b is None for single-sentence tasks) and raw label strings/numbers."""

    a: list[str]
    b: list[str] | None
    labels: list[Any]
    where: str
    """The file (or hub split) it came from, for messages."""


@dataclass
class Task:
    """A ready task: labels mapped to ids (classification) or floats (regression)."""

    name: str
    kind: str
    """"classification" or "regression"."""
    label_names: list[str]
    """Class names in id order (empty for regression)."""
    train: Split
    dev: Split
    y_train: list
    y_dev: list
    info: dict = field(default_factory=dict)
    """What a built-in task documents about itself (size, balance, held-out plays)."""

    @property
    def pair(self) -> bool:
        return self.train.b is not None

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)

    def summary(self) -> dict:
        """JSON-able description, with the chance level (majority train class, scored on dev)."""
        out = {
            "name": self.name,
            "kind": self.kind,
            "pair": self.pair,
            "train_examples": len(self.y_train),
            "dev_examples": len(self.y_dev),
            "train_file": self.train.where,
            "dev_file": self.dev.where,
        }
        if self.kind == "classification":
            out["labels"] = self.label_names
            counts = [self.y_dev.count(i) for i in range(len(self.label_names))]
            out["dev_class_counts"] = dict(zip(self.label_names, counts))
            major = max(range(len(self.label_names)), key=lambda i: self.y_train.count(i))
            out["chance"] = {
                "majority_class": self.label_names[major],
                "accuracy": counts[major] / len(self.y_dev),
                "best_constant_accuracy": max(counts) / len(self.y_dev),
            }
        return {**out, **self.info}


# --- reading files -------------------------------------------------------------------------------


def _number(y: Any) -> float | None:
    if isinstance(y, bool):
        return None
    if isinstance(y, (int, float)):
        return float(y)
    try:
        return float(y)
    except (TypeError, ValueError):
        return None


def make_task(name: str, train: Split, dev: Split, cfg: FinetuneConfig, info: dict | None = None) -> Task:
    """Map labels (regression when every train label is a number and one is not an integer)."""
    if (train.b is None) != (dev.b is None):
        raise UserError(
            f"{train.where} and {dev.where} disagree on the task: one has a sentence pair, the other a single sentence",
            hint=FORMAT_HINT,
        )
    if cfg.max_train_examples:  # before the label checks, so a cut that leaves one class is caught
        n = cfg.max_train_examples
        train = Split(train.a[:n], None if train.b is None else train.b[:n], train.labels[:n], train.where)
    col = cfg.label_column
    nums = [_number(y) for y in train.labels]
    if all(v is not None for v in nums) and any(not v.is_integer() for v in nums):
        dev_nums = [_number(y) for y in dev.labels]
        bad = next((y for y, v in zip(dev.labels, dev_nums) if v is None), None)
        if bad is not None:
            raise UserError(
                f"{dev.where}: column {col!r} holds {bad!r}, but the training labels are numbers (a regression task)",
                hint="Use numeric dev labels.",
            )
        return Task(name, "regression", [], train, dev, nums, dev_nums, info or {})
    keys = [str(int(v)) if v is not None and v.is_integer() else str(y) for y, v in zip(train.labels, nums)]
    numeric = all(v is not None for v in nums)
    names = sorted(set(keys), key=(lambda k: float(k)) if numeric else None)
    if len(names) < 2:
        raise UserError(
            f"{train.where}: every example has {col!r} = {names[0]!r}: a classification task "
            "needs at least two classes",
            hint="Check the label column and the file.",
        )
    index = {k: i for i, k in enumerate(names)}
    y_dev = []
    for y in dev.labels:
        v = _number(y)
        k = str(int(v)) if v is not None and v.is_integer() else str(y)
        if k not in index:
            raise UserError(
                f"{dev.where}: column {col!r} holds the label {k!r}, which never occurs in "
                f"{train.where} (its labels: {', '.join(names[:10])})",
                hint="Dev labels must be among the training labels.",
            )
        y_dev.append(index[k])
    return Task(name, "classification", names, train, dev, [index[k] for k in keys], y_dev, info or {})
