"""The `[finetune]` settings: one dataclass, loaded strictly from `--set finetune.KEY=VALUE`.

Defaults were chosen once, for small encoders on small tasks (the demo's 12 x 128 BERT on
`builtin:shakespeare-genre`, a few thousand examples) and a 2-core CPU: a step cap and a short
sequence length keep one seed within a few minutes; they are not tuned per task. GLUE-sized tasks
want `max_steps` raised (`--set finetune.max_steps=0` trains the full `epochs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import fields_of, from_dict, parse_value, to_dict
from ..errors import UserError

SECTION = "finetune"


@dataclass
class FinetuneConfig:
    lr: float = 1e-4
    """Peak AdamW learning rate (encoder and head alike; small encoders take more than BERT-base's 2e-5)."""
    weight_decay: float = 0.01
    """AdamW weight decay, not applied to biases and LayerNorm/RMSNorm weights."""
    warmup_fraction: float = 0.1
    """Share of the steps with a linear warmup from 0; then linear decay to 0."""
    epochs: float = 3.0
    """Passes over the training set (fractions allowed), capped by max_steps."""
    max_steps: int = 300
    """Cap on optimizer steps (0 = no cap): bounds the wall time on large tasks."""
    batch_size: int = 32
    """Examples per optimizer step."""
    max_seq_len: int = 128
    """Tokens per example (special tokens included); longer inputs are cut, the longer text of a pair first."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 = off)."""
    eval_every: int = 0
    """Evaluate on dev every N steps (0 = only at the end, or once per epoch with early_stop)."""
    early_stop: int = 0
    """Patience in evals (0 = off): stop after this many evals without a better dev score and
    report the best eval (model selection on dev, as GLUE dev numbers usually are)."""
    eval_batch_size: int = 64
    """Examples per forward pass at evaluation."""
    text_columns: list[str] = field(default_factory=list)
    """Input columns (one or two); empty = `sentence`, or `sentence1` and `sentence2`."""
    label_column: str = "label"
    """The column holding the label."""
    max_train_examples: int = 0
    """Use only the first N training examples (0 = all), e.g. for a quick look at a GLUE task."""
    save_model: bool = False
    """Write each seed's fine-tuned model to OUT/<init>-seed-N/ (BERT: transformers'
    BertForSequenceClassification layout, loadable with from_pretrained)."""


def _check(cfg: FinetuneConfig) -> list[str]:
    """Range checks; each names its key."""
    p: list[str] = []
    for key in ("lr", "epochs", "batch_size", "max_seq_len", "eval_batch_size"):
        if getattr(cfg, key) <= 0:
            p.append(f"{SECTION}.{key} = {getattr(cfg, key)}: must be > 0")
    for key in ("weight_decay", "max_steps", "grad_clip", "eval_every", "early_stop", "max_train_examples"):
        if getattr(cfg, key) < 0:
            p.append(f"{SECTION}.{key} = {getattr(cfg, key)}: must be >= 0")
    if not 0 <= cfg.warmup_fraction < 1:
        p.append(f"{SECTION}.warmup_fraction = {cfg.warmup_fraction}: must be in [0, 1)")
    if cfg.max_seq_len < 8:
        p.append(f"{SECTION}.max_seq_len = {cfg.max_seq_len}: must be at least 8")
    if len(cfg.text_columns) > 2:
        p.append(f"{SECTION}.text_columns = {cfg.text_columns}: name one column, or two for a pair task")
    return p


def load_finetune_config(overrides: list[str] = ()) -> FinetuneConfig:
    """`finetune.KEY=VALUE` assignments -> a validated FinetuneConfig (every problem listed at once).

    Values are TOML, typed by the dataclass (config.coerce), as `raptr pretrain --set` is; a bare
    word is a string (`--set finetune.label_column=quality`).
    """
    problems: list[str] = []
    data: dict = {}
    for a in overrides:
        key, eq, raw = a.partition("=")
        parts = key.strip().split(".")
        if not eq or len(parts) != 2 or parts[0] != SECTION or not parts[1]:
            problems.append(f"--set {a!r}: expected {SECTION}.KEY=VALUE (e.g. {SECTION}.lr=3e-4)")
            continue
        raw = raw.strip()
        value = parse_value(raw)
        tp = fields_of(FinetuneConfig).get(parts[1])
        if tp is str and not isinstance(value, str):
            value = raw  # `finetune.label_column=2`: the schema says string, so the text is the value
        elif tp == list[str] and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]  # text_columns=question,sentence
        data[parts[1]] = value
    cfg = from_dict(FinetuneConfig, data, SECTION, problems)
    if cfg is not None:
        problems += _check(cfg)
    if problems:
        raise UserError(
            f"the fine-tuning settings have {len(problems)} problem{'s' * (len(problems) > 1)}:",
            hint=f"Fix them with --set {SECTION}.KEY=VALUE; `raptr finetune --help` lists every key.",
            problems=problems,
        )
    return cfg


def config_dict(cfg: FinetuneConfig) -> dict:
    """The settings as plain JSON-able values (for finetune.json)."""
    return to_dict(cfg)


__all__ = ["FinetuneConfig", "config_dict", "load_finetune_config"]
