"""The architecture registry: one `ArchSpec` per model family, looked up by the recipe's
`model.arch` (torchtitan's TrainSpec in spirit). Whoever needs something architecture-specific
(the recipe check, the data pipeline, the FLOPs count, the trainer, HF export) asks the spec;
nothing outside `models/` and `objectives/` compares architecture names.

Torch-free: a spec's fields are data and plain functions; those that need torch or tokenizers
(`build`, the tokenizer's `train`) import them when called, so `raptr flops` and recipe
validation stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..objectives import Objective, ObjectiveSpec, objective_spec

if TYPE_CHECKING:
    from ..flops import Dims


@dataclass(frozen=True)
class TokenizerSpec:
    """How an architecture's tokenizer is trained and which special tokens it must have."""

    kind: str
    """Names the trainer in the tokenizer cache key ("wordpiece", "bpe"): a change of trainer is a new key."""
    train: Callable[[Any, Any], Any]
    """(documents, recipe [tokenizer] section) -> a trained `tokenizers.Tokenizer`."""
    specials: Callable[[Any], dict]
    """Tokenizer -> the special-token ids the objective reads; a UserError names any missing one."""


@dataclass(frozen=True)
class HFExport:
    """What `raptr export --to hf` needs from an architecture (no transformers import anywhere)."""

    architecture: str
    """transformers class the export is for, as config.json's "architectures" names it."""
    auto_class: str
    """The `Auto*` loader that opens the exported directory (printed by `raptr export`)."""
    configs: Callable[[Any, Any, dict], tuple[dict, dict]]
    """(config, tokenizer, specials) -> (config.json, tokenizer_config.json) contents."""
    tied_keys: Callable[[Any], tuple[str, ...]]
    """State-dict keys HF re-ties from the embedding, left out of model.safetensors."""
    check: Callable[[Any, object], None] | None = None
    """(config, where) -> raises a UserError naming `where` when the model has no transformers
    equivalent; None: every config of the architecture exports."""


@dataclass(frozen=True)
class FinetuneSpec:
    """How `raptr finetune` puts a classification head on the architecture and feeds it."""

    classifier: Callable[[Any, int], Any]
    """(pretrained module, num_labels) -> the classifier module (imports torch)."""
    frame: Callable[[dict, list[int], list[int] | None], tuple[list[int], list[int]]]
    """(specials, text ids, pair ids or None) -> (ids, segment ids), as pretraining saw text."""
    overhead: tuple[int, int]
    """Specials `frame` adds to a single text and to a pair (the texts are cut to fit)."""
    head: str
    """Names the head in a raptr-format classifier's config.json."""
    hf_configs: Callable[[Any, Any, dict, dict], tuple[dict, dict] | None] = field(default=lambda *a: None)
    """(config, tokenizer, specials, label metadata) -> (config.json, tokenizer_config.json) of a
    transformers classifier directory; None: saved in raptr's format."""


@dataclass(frozen=True)
class ArchSpec:
    """One model family: its config and presets, how the recipe's [model] keys map onto them,
    its counts, its module, tokenizer, default objective, data layout and HF export."""

    name: str
    """The recipe's `model.arch`."""
    config: type
    """Architecture config dataclass (validates itself in `__post_init__`)."""
    presets: Mapping[str, dict]
    """Preset name -> config fields."""
    build: Callable[[Any], Any]
    """Config -> the `nn.Module` (imports torch)."""
    param_count: Callable[[Any], dict[str, int]]
    """Config -> {"total", "non_embedding", "per_layer"}, analytic (equals the built module's count)."""
    dims: Callable[[Any, int], Dims]
    """(config, seq_len) -> the sizes the FLOPs count reads."""
    tokenizer: TokenizerSpec
    objective: str
    """Name of the default objective in the objectives registry."""
    layout: str
    """Packing of the token store: "bert" ([CLS] chunk [SEP] blocks) or "examples" (per-document
    chunks, -1 padded)."""
    overrides: Mapping[str, str]
    """Recipe [model] key -> config field, applied when the key is set."""
    dropouts: Mapping[str, str]
    """Recipe [model] dropout key -> config field, always applied."""
    frame: tuple[str, str] | None = None
    """Specials (keys of `tokenizer.specials`) that open and close each "bert" block."""
    export: HFExport | None = None
    finetune: FinetuneSpec | None = None
    problems: Callable[[Any], list[str]] = field(default=lambda recipe: [])
    """Recipe -> problems with keys this architecture cannot honour, each naming its key."""


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add an architecture (a second registration under one name is a bug: refused)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def arch_spec(name: str) -> ArchSpec:
    """The spec registered as `name`; UserError listing the known ones otherwise."""
    if name not in _REGISTRY:
        raise UserError(f"unknown architecture {name!r}", hint=f"Choose one of: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def spec_of(cfg: Any) -> ArchSpec:
    """The spec whose config class `cfg` is (a checkpoint's or a resolved recipe's config)."""
    for spec in _REGISTRY.values():
        if type(cfg) is spec.config:
            return spec
    raise TypeError(f"{type(cfg).__name__} is not the config of a registered architecture")


def arch_names() -> list[str]:
    return list(_REGISTRY)


def objective_spec_for(recipe: Any) -> ObjectiveSpec:
    """The objective of a `recipe.Recipe`'s architecture (typed Any: the recipe imports this package)."""
    return objective_spec(arch_spec(recipe.model.arch).objective)


def objective_for(recipe: Any, specials: dict, vocab_size: int) -> Objective:
    """The recipe's objective, built for a tokenizer's specials and vocabulary."""
    cls = objective_spec_for(recipe).load()
    return cls(recipe.objective, specials, vocab_size, recipe.train.seq_len)
