"""Model registry: recipe [model] section -> architecture config -> nn.Module.

Model files hold architecture only; the one hook progressive training uses is the `layers=`
argument of `forward` (which blocks run this step) and the `blocks` ModuleList (stacking grows it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..recipe import Recipe

_OVERRIDES = {  # recipe key -> architecture config field
    "n_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "norm": "norm",
    "residual": "residual",
}


def resolve_model_config(recipe: "Recipe", vocab_size: int) -> Any:
    """The architecture config a recipe asks for: preset, then the recipe's overrides."""
    m = recipe.model
    from .presets import BERT_PRESETS, UL2_PRESETS, BertConfig, DecoderConfig

    presets = BERT_PRESETS if m.arch == "bert" else UL2_PRESETS
    if m.preset not in presets:
        raise UserError(
            f"model.preset = {m.preset!r} is not a {m.arch} preset",
            hint=f"Choose one of: {', '.join(presets)}.",
        )
    kw = dict(presets[m.preset])
    for key, target in _OVERRIDES.items():
        if getattr(m, key) is not None:
            kw[target] = getattr(m, key)
    kw["max_position_embeddings"] = max(kw.get("max_position_embeddings", 512), recipe.train.seq_len)
    if kw["num_heads"] < 1 or kw["hidden_size"] % kw["num_heads"]:
        raise UserError(
            f"model.hidden_size = {kw['hidden_size']} is not divisible by model.num_heads = {kw['num_heads']}",
            hint="Pick a head count that divides the width (the preset's widths and heads are listed in models/presets.py).",
        )
    if m.arch == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_dropout=m.dropout, attention_dropout=m.attention_dropout, **kw)
    kw.pop("norm", None)
    kw.pop("residual", None)
    return DecoderConfig(vocab_size=vocab_size, dropout=m.dropout, **kw)


def build_model(cfg: Any):
    """Instantiate the module for an architecture config."""
    from .presets import BertConfig

    if isinstance(cfg, BertConfig):
        from .bert import BertForMaskedLM

        return BertForMaskedLM(cfg)
    from .decoder import DecoderForPrefixLM

    return DecoderForPrefixLM(cfg)


def config_from_dict(arch: str, conf: dict) -> Any:
    """A checkpoint's config.json -> architecture config (unknown keys ignored)."""
    import dataclasses

    from .presets import BertConfig, DecoderConfig

    cls = BertConfig if arch == "bert" else DecoderConfig
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in conf.items() if k in names})
