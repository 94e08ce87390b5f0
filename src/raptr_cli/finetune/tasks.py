"""Downstream tasks: a TASK spec -> train and dev examples with integer (or float) labels.

A TASK is one of
- ``train=PATH,dev=PATH``: GLUE-format TSV (header row with ``sentence``, or ``sentence1`` and
  ``sentence2``, and ``label``), CSV or JSONL files with those columns;
- a directory holding ``train.{tsv,csv,jsonl}`` and ``dev.{tsv,csv,jsonl}``;
- ``builtin:NAME`` (see `builtin.py`), built from the cached Shakespeare corpus, offline;
- a hub dataset (``glue/rte``, ``owner/name``, ``owner/name:config``, optionally ``hf:``-prefixed),
  through `datasets.load_dataset` (train split and the validation split as dev).

The label column decides the kind: numbers with at least one non-integer -> regression (MSE),
anything else -> classification over the labels seen in train (sorted). Every problem a user can
fix (a missing column, a dev label unseen in train, an empty or non-UTF-8 file, one class only)
is a UserError naming the file and the column.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..errors import UserError
from .builtin import builtin_task
from .config import FinetuneConfig
from .task import FORMAT_HINT, Split, Task, make_task

SUFFIXES = (".tsv", ".csv", ".jsonl")


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(
            f"cannot read the task file {path} ({e.strerror})", hint="Check the path given in --task."
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path} is not UTF-8 (byte 0x{raw[e.start]:02x} on line {line})",
            hint="Re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        ) from None
    if not text.strip():
        raise UserError(f"{path} is empty", hint=FORMAT_HINT)
    return text


def _rows(path: Path) -> tuple[list[str], list[dict], list[int]]:
    """(columns, rows as dicts, line number of each row) of a TSV, CSV or JSONL file."""
    text = _read_text(path)
    if path.suffix == ".jsonl":
        rows, lines, cols = [], [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path} line {n} is not JSON ({e})", hint="One JSON object per line.") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {n} is not a JSON object", hint="One JSON object per line.")
            cols += [k for k in row if k not in cols]
            rows.append(row)
            lines.append(n)
        return cols, rows, lines
    # GLUE's TSVs are unquoted (a sentence may hold a lone `"`), so no quoting for .tsv.
    dialect = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if path.suffix == ".tsv" else {}
    reader = csv.reader(io.StringIO(text), **dialect)
    header = [c.strip() for c in next(reader)]
    rows, lines = [], []
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise UserError(
                f"{path} line {reader.line_num}: {len(fields)} fields, the header has {len(header)}",
                hint="Separate fields with tabs (.tsv) or commas (.csv, quote fields that contain one).",
            )
        rows.append(dict(zip(header, fields)))
        lines.append(reader.line_num)
    return header, rows, lines


def _columns(cols: list[str], cfg: FinetuneConfig, where: str) -> tuple[str, str | None]:
    if cfg.text_columns:
        wanted = cfg.text_columns
    elif "sentence1" in cols or "sentence2" in cols:
        wanted = ["sentence1", "sentence2"]
    else:
        wanted = ["sentence"]
    missing = [c for c in [*wanted, cfg.label_column] if c not in cols]
    if missing:
        raise UserError(
            f"{where} has no column {', '.join(repr(c) for c in missing)} (its columns: {', '.join(cols) or 'none'})",
            hint=FORMAT_HINT,
        )
    return wanted[0], wanted[1] if len(wanted) > 1 else None


def _split(cols: list[str], rows: list[dict], lines: list[int], cfg: FinetuneConfig, where: str) -> Split:
    ca, cb = _columns(cols, cfg, where)
    if not rows:
        raise UserError(f"{where} has a header but no examples", hint=FORMAT_HINT)
    a, b, labels = [], [] if cb else None, []
    for row, n in zip(rows, lines):
        y = row.get(cfg.label_column)
        if y is None or (isinstance(y, str) and not y.strip()):
            raise UserError(
                f"{where} line {n}: column {cfg.label_column!r} is empty",
                hint="Every training and dev example needs a label.",
            )
        for c in (ca, cb) if cb else (ca,):
            if not isinstance(row.get(c), str):
                raise UserError(f"{where} line {n}: column {c!r} is not text ({row.get(c)!r})", hint=FORMAT_HINT)
        a.append(row[ca])
        if cb:
            b.append(row[cb])
        labels.append(y.strip() if isinstance(y, str) else y)
    return Split(a, b, labels, where)


def read_split(path: Path, cfg: FinetuneConfig) -> Split:
    """Read one task file (TSV, CSV or JSONL by suffix)."""
    if not path.is_file():
        raise UserError(f"task file not found: {path}", hint="--task train=PATH,dev=PATH names two existing files.")
    if path.suffix not in SUFFIXES:
        raise UserError(
            f"{path}: unsupported task file type {path.suffix or '(none)'!r}",
            hint=f"Task files end in {', '.join(SUFFIXES)}.",
        )
    return _split(*_rows(path), cfg, str(path))


# --- labels -------------------------------------------------------------------------------------


# --- TASK specs ---------------------------------------------------------------------------------


def _task_dir(path: Path) -> tuple[Path, Path]:
    found = {}
    for split in ("train", "dev"):
        hits = [path / f"{split}{s}" for s in SUFFIXES if (path / f"{split}{s}").is_file()]
        if len(hits) != 1:
            raise UserError(
                f"the task directory {path} holds {'no' if not hits else 'more than one'} "
                f"{split} file ({split}.tsv, {split}.csv or {split}.jsonl)",
                hint="Put one train.* and one dev.* file in it, or use --task train=PATH,dev=PATH.",
            )
        found[split] = hits[0]
    return found["train"], found["dev"]


_HUB_ALIASES = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue"}


def _hub(spec: str, cfg: FinetuneConfig) -> Task:
    body = spec.removeprefix("hf:")
    name, _, conf = body.partition(":")
    owner, _, rest = name.partition("/")
    if owner in _HUB_ALIASES and rest and not conf:  # glue/rte -> ("nyu-mll/glue", "rte")
        name, conf = _HUB_ALIASES[owner], rest
    hint = (
        "Download the task's train/dev files and pass --task train=PATH,dev=PATH, or run online "
        "(unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)."
    )
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "on", "yes", "true"):
            raise UserError(f"--task {spec}: a hub dataset needs the network, but {var} is set", hint=hint)
    from datasets import load_dataset

    try:
        ds = load_dataset(name, conf or None)
    except Exception as e:  # unknown name, hub unreachable, bad config: all user-fixable
        raise UserError(
            f"--task {spec}: not a local path, and the hub dataset {name!r}"
            f"{f' (config {conf!r})' if conf else ''} cannot be loaded: {type(e).__name__}: {e}",
            hint=hint,
        ) from None
    dev_name = next((s for s in ("validation", "validation_matched", "dev") if s in ds), None)
    if "train" not in ds or dev_name is None:
        raise UserError(
            f"--task {spec}: the dataset has splits {list(ds)}, not train and validation",
            hint="Pick a dataset (or config) with train and validation splits.",
        )
    splits = []
    for s in ("train", dev_name):
        d = ds[s]
        rows = [dict(zip(d.column_names, vals)) for vals in zip(*(d[c] for c in d.column_names))]
        label = d.features.get(cfg.label_column)
        if getattr(label, "names", None):  # ClassLabel: keep its names, as the TSV would
            rows = [{**r, cfg.label_column: label.names[r[cfg.label_column]]} for r in rows]
        splits.append(_split(d.column_names, rows, list(range(1, len(rows) + 1)), cfg, f"{spec}[{s}]"))
    return make_task(spec, *splits, cfg)


def load_task(spec: str, cfg: FinetuneConfig) -> Task:
    """Resolve a TASK spec (see the module docstring) and validate it."""
    if spec.startswith("builtin:"):
        task = builtin_task(spec[len("builtin:") :], cfg)
    elif "=" in spec:
        parts = dict(p.partition("=")[::2] for p in spec.split(","))
        if set(parts) != {"train", "dev"} or not all(parts.values()):
            raise UserError(
                f"--task {spec!r}: expected train=PATH,dev=PATH",
                hint="e.g. --task train=data/rte/train.tsv,dev=data/rte/dev.tsv",
            )
        paths = {k: Path(v).expanduser() for k, v in parts.items()}
        task = make_task(
            paths["train"].resolve().parent.name or "task",
            read_split(paths["train"], cfg),
            read_split(paths["dev"], cfg),
            cfg,
        )
    elif Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser()
        train, dev = _task_dir(path)
        task = make_task(path.resolve().name, read_split(train, cfg), read_split(dev, cfg), cfg)
    elif spec.startswith("hf:") or (
        spec.count("/") in (1, 2)
        and not Path(spec).suffix
        and not Path(spec).exists()
        and not spec.startswith((".", "/", "~"))
    ):
        task = _hub(spec, cfg)
    else:
        raise UserError(
            f"--task {spec!r}: no such file or directory, and not a task spec",
            hint="Give train=PATH,dev=PATH, a directory with train.* and dev.*, "
            "builtin:shakespeare-genre, or a hub name such as glue/rte.",
        )
    return task


__all__ = ["load_task", "read_split"]
