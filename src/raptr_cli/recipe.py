"""Recipes: a TOML file -> nested dataclasses, strictly validated before any work starts.

Precedence is `--set` > file > defaults. Every problem (unknown key, wrong type, impossible value,
contradiction between sections) is collected and reported at once, each naming its dotted key.
Each component owns its section's dataclass where it has one (`schedule.ScheduleConfig`); the
sections below are the ones whose consumers are the trainer and the data pipeline.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .config import dumps, dumps_documented, fields_of, from_dict, parse_value, to_dict
from .errors import UserError
from .models import resolve_model_config
from .models.registry import arch_spec
from .objectives import objective_spec
from .objectives.config import DenoiserConfig, default_denoisers
from .schedule import ScheduleConfig


@dataclass
class RunConfig:
    name: str = "raptr-run"
    """Run name, one path component (letters, digits, `._-`); `--out` defaults to runs/<name>."""
    seed: int = 0
    """Seeds initialisation, data order, masking, dropout and layer paths (each a function of (seed, step))."""


@dataclass
class ModelConfig:
    arch: Literal["bert", "ul2"] = "bert"
    """Architecture: "bert" (masked LM encoder) or "ul2" (decoder-only prefix LM, mixture of denoisers)."""
    preset: str = "tiny"
    """Size preset (bert: tiny, mini, small, medium, base, large; ul2: tiny, mini, small, base, 1b6); the keys below override it."""
    n_layers: int | None = None
    """Number of blocks (default: the preset's)."""
    hidden_size: int | None = None
    """Model width (default: the preset's)."""
    num_heads: int | None = None
    """Attention heads (default: the preset's)."""
    intermediate_size: int | None = None
    """MLP width (default: the preset's)."""
    max_position_embeddings: int | None = None
    """Learned positions (default: the preset's, raised to train.seq_len if that is longer)."""
    norm: Literal["post", "pre", "none"] | None = None
    """BERT LayerNorm placement: "post" (original BERT, default), "pre", or "none" (no LayerNorm in the blocks: an ablation); ul2 is always pre-RMSNorm."""
    residual: bool | None = None
    """BERT residual connections (default true); false is an ablation for `raptr analyze stability`."""
    dropout: float = 0.1
    """Hidden dropout."""
    attention_dropout: float = 0.1
    """Attention-probability dropout."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ["builtin:shakespeare"])
    """Training text: files, globs (relative to the recipe's folder), builtin:shakespeare, or hf:owner/name[:split]."""
    eval: list[str] = field(default_factory=list)
    """Held-out text in the same forms; empty = hold out `eval_fraction` of the packed training blocks."""
    eval_fraction: float = 0.05
    """Share held out for eval when `data.eval` is empty: of the packed blocks ("blocks"), or of the documents, at least one ("documents")."""
    eval_split: Literal["blocks", "documents"] = "blocks"
    """What is held out: random packed blocks, or whole documents (a .txt file, e.g. a whole play, or a .jsonl row) that training never sees, the tokenizer included."""
    split_seed: int = 0
    """Seeds the held-out split, apart from run.seed: every seed is scored on the same eval set."""
    text_field: str = "text"
    """Field holding the text in .jsonl/.json/.parquet inputs."""
    cache_dir: str = ""
    """Where tokenised, packed blocks are cached (default: the raptr cache, ~/.cache/raptr/blocks)."""


@dataclass
class TokenizerConfig:
    path: str = ""
    """A tokenizer.json to load; empty = train one on the training text (bert: WordPiece, ul2: byte-level BPE)."""
    vocab_size: int = 8192
    """Vocabulary size when training one (64 to 2**20 = 1,048,576)."""
    lowercase: bool = False
    """Lowercase before tokenising (trained tokenizers only)."""
    min_frequency: int = 2
    """Minimum pair frequency when training."""
    train_sample_bytes: int = 256_000_000
    """Train the vocabulary on a deterministic sample of about this many bytes of the training files (documents drawn by a hash of their index); a smaller corpus is used whole. 0 = always the whole corpus."""


@dataclass
class ObjectiveConfig:
    mlm_probability: float = 0.15
    """BERT: share of tokens predicted."""
    mask_token_frac: float = 0.8
    """BERT: of the predicted tokens, the share replaced by [MASK]."""
    random_token_frac: float = 0.1
    """BERT: of the predicted tokens, the share replaced by a random token (the rest stay)."""
    denoisers: list[DenoiserConfig] = field(default_factory=default_denoisers)
    """UL2: the mixture of denoisers ([[objective.denoisers]] tables: name, kind, mean_span, rate, paradigm, weight)."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """Decoupled weight decay; never applied to norms, biases or embeddings' LayerNorm."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.98
    """AdamW beta2."""
    eps: float = 1e-6
    """AdamW epsilon."""
    warmup_steps: int | None = None
    """Linear warmup steps (default: warmup_fraction of train.steps)."""
    warmup_fraction: float = 0.06
    """Warmup as a share of the run when warmup_steps is unset."""
    decay: Literal["linear", "cosine", "constant"] = "linear"
    """Shape of the decay after warmup, to min_lr_ratio * lr at the last step."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a share of the peak."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per optimizer step, summed over all processes."""
    micro_batch_size: int = 0
    """Sequences per forward/backward on one process (0 = the whole per-process share): gradient accumulation."""
    seq_len: int = 128
    """Tokens per sequence ([CLS] and [SEP] included)."""
    eval_every: int = 100
    """Full-model eval every N steps (0 = only at the end)."""
    eval_batches: int = 10
    """Batches of `batch_size` sequences per eval."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0 = only at the end of the run)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep (0 = all)."""
    log_every: int = 10
    """Log a training row to metrics.jsonl every N steps (stage boundaries are always logged)."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """A non-finite loss: "stop" (exit naming the step and the last good checkpoint) or "skip" the batch."""
    max_skipped_steps: int = 10
    """With nan_policy = "skip": stop anyway after this many skipped steps."""
    compile: bool = False
    """torch.compile each block separately (one graph per block, so a new random path never recompiles)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """"auto" = bf16 autocast on GPU, fp32 on CPU (bf16 on CPUs without bf16 units is 14-28x slower)."""


@dataclass
class LogConfig:
    console: Literal["rich", "plain", "none"] = "rich"
    """Live display: rich tables, plain lines, or nothing."""
    trackers: list[str] = field(default_factory=list)
    """accelerate trackers to log to as well (e.g. "tensorboard", "wandb"); metrics.jsonl is always written."""


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    base_dir: Path = field(default=Path("."), repr=False, compare=False, init=False)
    """Folder that relative data paths resolve against (the recipe file's folder)."""
    warnings: list[str] = field(default_factory=list, repr=False, compare=False, init=False)

    def to_toml(self, docs: bool = False) -> str:
        """The recipe as TOML; `docs` adds each key's docstring as comments (`raptr recipe show`)."""
        sections = {name: to_dict(getattr(self, name)) for name in fields_of(Recipe)}
        # the keys of objectives this architecture does not train are noise in a resolved recipe
        used = objective_spec(arch_spec(self.model.arch).objective).keys
        sections["objective"] = {k: v for k, v in sections["objective"].items() if k in used}
        if docs:
            return dumps_documented({name: getattr(self, name) for name in sections}, sections)
        return dumps(sections)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.seq_len


def _apply_override(data: dict, assignment: str, problems: list[str]) -> None:
    """Apply `section.key=value` to the raw TOML dict (typed later with the rest)."""
    if "=" not in assignment:
        problems.append(f"--set {assignment!r}: expected section.key=value")
        return
    path, _, raw = assignment.partition("=")
    parts = path.strip().split(".")
    if len(parts) < 2 or not all(parts):
        problems.append(f"--set {assignment!r}: the key must be dotted, like train.steps=200")
        return
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            problems.append(f"--set {path}: {p} is not a table")
            return
        node = child
    raw = raw.strip()
    value = parse_value(raw)
    if _field_type(parts) is str and not isinstance(value, str) and not raw.startswith(("'", '"')):
        value = raw  # `--set run.name=2024`: the schema says string, so the text is the value
    node[parts[-1]] = value


def _field_type(parts: list[str]):
    """The annotated type at a dotted recipe path (None when unknown), unwrapping Optional."""
    import types as _types
    import typing

    cls, tp = Recipe, None
    for p in parts:
        hints = fields_of(cls) if dataclasses.is_dataclass(cls) else {}
        if p not in hints:
            return None
        tp = hints[p]
        if typing.get_origin(tp) in (typing.Union, _types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        cls = tp
    return tp


_RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")

# 4x the largest vocabularies in use (Gemma's 256k); an embedding of 2**20 rows is already most of
# any model raptr trains. The tokenizers trainers reserve ~70 B per vocab_size slot up front
# (74 MB at 2**20), and a failed allocation aborts the process with no exception to catch
# (vocab_size = 1e9 asks for 66 GiB: rc 134), so the bound is checked before they run.
MAX_VOCAB_SIZE = 2**20


def _check_ranges(r: Recipe) -> list[str]:
    """Range checks and contradictions across sections; each names its key."""
    p: list[str] = []

    def positive(key: str, v: float | None, allow_zero: bool = False) -> None:
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            p.append(f"{key} = {v}: must be {'>= 0' if allow_zero else '> 0'}")

    # the name becomes a directory (runs/<name>, compare's OUT/<name>): one component, never a path
    if not _RUN_NAME.fullmatch(r.run.name) or r.run.name in (".", ".."):
        p.append(
            f"run.name = {r.run.name!r}: must be one path component of letters, digits and ._- "
            "(not empty, '.' or '..'), like \"bert-tiny-raptr\""
        )
    t, o = r.train, r.optim
    positive("train.steps", t.steps)
    positive("train.batch_size", t.batch_size)
    positive("train.micro_batch_size", t.micro_batch_size, allow_zero=True)
    positive("train.eval_every", t.eval_every, allow_zero=True)
    positive("train.eval_batches", t.eval_batches)
    positive("train.checkpoint_every", t.checkpoint_every, allow_zero=True)
    positive("train.keep_checkpoints", t.keep_checkpoints, allow_zero=True)
    positive("train.log_every", t.log_every)
    positive("train.max_skipped_steps", t.max_skipped_steps, allow_zero=True)
    if t.seq_len < 8:
        p.append(f"train.seq_len = {t.seq_len}: must be at least 8")
    if t.micro_batch_size and t.batch_size % t.micro_batch_size:
        p.append(f"train.micro_batch_size = {t.micro_batch_size} must divide train.batch_size = {t.batch_size}")
    positive("optim.lr", o.lr)
    positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    positive("optim.eps", o.eps)
    positive("optim.grad_clip", o.grad_clip, allow_zero=True)
    positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    for key, v in (
        ("optim.beta1", o.beta1),
        ("optim.beta2", o.beta2),
        ("optim.min_lr_ratio", o.min_lr_ratio),
        ("optim.warmup_fraction", o.warmup_fraction),
        ("data.eval_fraction", r.data.eval_fraction),
    ):
        if not 0 <= v < 1 and not (key == "optim.min_lr_ratio" and v == 1):
            p.append(f"{key} = {v}: must be in [0, 1)")
    if o.warmup_steps is not None and o.warmup_steps > t.steps:
        p.append(f"optim.warmup_steps = {o.warmup_steps} exceeds train.steps = {t.steps}")
    ob = r.objective
    if not 0 < ob.mlm_probability < 1:
        p.append(f"objective.mlm_probability = {ob.mlm_probability}: must be in (0, 1)")
    if ob.mask_token_frac < 0 or ob.random_token_frac < 0 or ob.mask_token_frac + ob.random_token_frac > 1:
        p.append("objective.mask_token_frac + objective.random_token_frac must be within [0, 1]")
    for key, v in (("model.dropout", r.model.dropout), ("model.attention_dropout", r.model.attention_dropout)):
        if not 0 <= v < 1:
            p.append(f"{key} = {v}: must be in [0, 1)")
    for key in ("n_layers", "hidden_size", "num_heads", "intermediate_size", "max_position_embeddings"):
        positive(f"model.{key}", getattr(r.model, key))
    if not r.data.train:
        p.append("data.train is empty: name at least one file, glob or builtin:shakespeare")
    arch = arch_spec(r.model.arch)
    p += objective_spec(arch.objective).problems(r.objective) + arch.problems(r)
    if r.tokenizer.vocab_size < 64:
        p.append(f"tokenizer.vocab_size = {r.tokenizer.vocab_size}: must be at least 64")
    if r.tokenizer.vocab_size > MAX_VOCAB_SIZE:
        p.append(f"tokenizer.vocab_size = {r.tokenizer.vocab_size}: must be at most {MAX_VOCAB_SIZE:,} (2**20)")
    if r.tokenizer.train_sample_bytes < 0:
        p.append(
            f"tokenizer.train_sample_bytes = {r.tokenizer.train_sample_bytes}: must be >= 0 (0 = the whole corpus)"
        )
    return p


def parse_recipe(data: dict, overrides: list[str] = (), base_dir: Path = Path(".")) -> Recipe:
    """Build and validate a Recipe from a TOML dict plus `--set` overrides; raise UserError listing every problem."""
    problems: list[str] = []
    for a in overrides:
        _apply_override(data, a, problems)
    typed_ok = not problems
    recipe = from_dict(Recipe, data, "", problems)
    recipe.base_dir = base_dir
    # Keys with a wrong type keep their defaults, so range checks still run: report everything at once.
    typed_ok = typed_ok and not problems
    problems += _check_ranges(recipe)
    if typed_ok and not any(p.startswith("model.") for p in problems):
        try:
            mc = resolve_model_config(recipe.model, recipe.tokenizer.vocab_size, recipe.train.seq_len)
            n_layers, widths = mc.num_layers, (mc.num_heads, mc.intermediate_size)
        except UserError as e:
            problems += e.problems or [e.message]
            n_layers = None
        if n_layers is not None and recipe.train.steps > 0 and typed_ok:
            errors, warnings = recipe.schedule.problems(n_layers, recipe.train.steps, recipe.tokens_per_step, widths)
            problems += errors
            recipe.warnings = list(warnings)
    if problems:
        raise UserError(
            f"the recipe has {len(problems)} problem{'s' * (len(problems) > 1)}:",
            hint="Fix the keys above in the recipe or with --set section.key=value "
            "(`raptr recipe show RECIPE` lists every key with its default).",
            problems=problems,
        )
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read RECIPE.toml (strict) and apply overrides; relative data paths resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"recipe file not found: {path}", hint="Pass the path of a .toml recipe, e.g. recipes/bert-tiny-raptr.toml."
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not valid TOML: {e}", hint="Check the line it names (strings need quotes)."
        ) from None
    if not data:  # an empty file (or comments only) would silently train the full default run
        raise UserError(
            f"{path}: the recipe is empty",
            hint="Start from a bundled recipe (recipes/bert-tiny-raptr.toml); "
            "`raptr recipe show RECIPE` prints one with every key.",
        )
    return parse_recipe(data, overrides, base_dir=path.resolve().parent)


def replace(recipe: Recipe, **sections) -> Recipe:
    """A copy of `recipe` with whole sections replaced (keeps base_dir)."""
    out = dataclasses.replace(recipe, **sections)
    out.base_dir, out.warnings = recipe.base_dir, recipe.warnings
    return out


# Keys that may differ between two runs of one recipe without changing the trajectory (what is shown
# and logged, how often it is checkpointed): `--resume` and compare's reuse of a run both ignore them.
TRAJECTORY_FREE = ("log.", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(a: dict, b: dict, ignore: tuple[str, ...] = TRAJECTORY_FREE) -> dict[str, tuple]:
    """Dotted keys whose values differ between two resolved recipes (parsed recipe.toml text), each
    with (value in a, value in b), sorted; keys starting with a prefix in `ignore` are left out."""
    fa, fb = _flat(a), _flat(b)
    return {
        k: (fa.get(k), fb.get(k))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k) and not k.startswith(ignore)
    }
