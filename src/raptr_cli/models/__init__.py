"""Models: recipe [model] section -> architecture config -> nn.Module, through the registry.

Each architecture is a package (`bert/`, `ul2/`: config + presets + counts, the module, HF export)
registered here by name (`registry.ArchSpec`). Model files hold architecture only; the one hook
progressive training uses is `forward(subnet=...)` (which blocks run this step, at what scale)
and the `blocks` ModuleList (stacking grows it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UserError
from .bert import SPEC as BERT
from .registry import arch_spec, register, spec_of
from .ul2 import SPEC as UL2

for _spec in (BERT, UL2):
    register(_spec)


def resolve_model_config(model: Any, vocab_size: int, seq_len: int | None = None) -> Any:
    """The architecture config the recipe's [model] section (`recipe.ModelConfig`) asks for: preset,
    then its overrides, with positions for at least `seq_len` tokens. A whole `recipe.Recipe` (seq_len
    None) reads its [model] section and train.seq_len. (Typed Any: the recipe imports this module, so
    importing its classes here would close a circle.)"""
    if seq_len is None:
        model, seq_len = model.model, model.train.seq_len
    spec = arch_spec(model.arch)
    if model.preset not in spec.presets:
        raise UserError(
            f"model.preset = {model.preset!r} is not a {model.arch} preset",
            hint=f"Choose one of: {', '.join(spec.presets)}.",
        )
    kw = dict(spec.presets[model.preset])
    for key, target in spec.overrides.items():
        if getattr(model, key) is not None:
            kw[target] = getattr(model, key)
    kw["max_position_embeddings"] = max(kw.get("max_position_embeddings", 512), seq_len)
    if kw["num_heads"] < 1 or kw["hidden_size"] % kw["num_heads"]:
        raise UserError(
            f"model.hidden_size = {kw['hidden_size']} is not divisible by model.num_heads = {kw['num_heads']}",
            hint="Pick a head count that divides the width (each preset's widths and heads are in "
            "models/<arch>/config.py).",
        )
    kw.update({target: getattr(model, key) for key, target in spec.dropouts.items()})
    return spec.config(vocab_size=vocab_size, **kw)


def build_model(cfg: Any):
    """Instantiate the module for an architecture config."""
    return spec_of(cfg).build(cfg)


def config_from_dict(arch: str, conf: dict) -> Any:
    """A checkpoint's config.json -> architecture config (unknown keys ignored)."""
    cls = arch_spec(arch).config
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in conf.items() if k in names})
