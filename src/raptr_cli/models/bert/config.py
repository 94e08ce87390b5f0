"""BERT's architecture config, size presets and analytic counts, importable without torch (so
`raptr flops` and `--dry-run` validation stay fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import UserError

if TYPE_CHECKING:
    from ...flops import Dims


@dataclass
class BertConfig:
    """Architecture of a BERT masked-LM model (field names mirror HF's `BertConfig` where one exists)."""

    vocab_size: int = 30522
    """Tokenizer vocabulary size (rows of the word embedding and of the tied decoder)."""
    hidden_size: int = 768
    """Model width d."""
    num_layers: int = 12
    """Number of transformer blocks L (HF: `num_hidden_layers`)."""
    num_heads: int = 12
    """Attention heads; must divide `hidden_size` (HF: `num_attention_heads`)."""
    intermediate_size: int = 3072
    """MLP inner width d_ff."""
    max_position_embeddings: int = 512
    """Longest sequence the learned position table supports."""
    type_vocab_size: int = 2
    """Number of segment (token type) ids."""
    hidden_dropout: float = 0.1
    """Dropout on embeddings and on each residual branch output (HF: `hidden_dropout_prob`)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities, training only (HF: `attention_probs_dropout_prob`)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT uses 1e-12)."""
    norm: str = "post"
    """"post" (original BERT, HF-exportable), "pre" (pre-LN, adds a final LayerNorm) or "none" (no
    LayerNorm in the blocks nor after them; embedding and MLM-head LayerNorms kept: an ablation)."""
    residual: bool = True
    """Residual connections around both sublayers; False is an ablation (`raptr analyze stability`)."""
    pad_token_id: int = 0
    """Padding token id; its embedding row starts at zero and gets no embedding gradient."""
    initializer_range: float = 0.02
    """Std of the normal init of Linear and Embedding weights."""

    def problems(self) -> list[str]:
        """Every invalid field, as messages naming it (empty when the config is usable)."""
        out: list[str] = []
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            out.append(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.norm not in ("post", "pre", "none"):
            out.append(f'norm must be "post", "pre" or "none" (got {self.norm!r})')
        if not 0 <= self.pad_token_id < self.vocab_size:
            out.append(f"pad_token_id ({self.pad_token_id}) must be in 0..vocab_size-1")
        return out

    def __post_init__(self) -> None:
        if found := self.problems():
            raise UserError("invalid BERT model config", hint="Fix the listed model keys.", problems=found)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> BertConfig:
        """A preset from `BERT_PRESETS` with `overrides` applied on top."""
        if name not in BERT_PRESETS:
            raise UserError(f"unknown BERT preset {name!r}", hint=f"Choose one of: {', '.join(BERT_PRESETS)}.")
        return cls(**{**BERT_PRESETS[name], **overrides})

    def to_hf_dict(self) -> dict[str, object]:
        """Keys of a transformers `BertConfig` (config.json) describing the same post-LN model."""
        return {
            "architectures": ["BertForMaskedLM"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
        }


# Sizes from Turc et al. 2019 ("Well-Read Students", the BERT-tiny..medium family) and Devlin et
# al. 2019 (base, large); d_ff = 4d and head size 64 except tiny/mini.
BERT_PRESETS: dict[str, dict] = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}


def param_count(cfg: BertConfig) -> dict[str, int]:
    """Analytic parameter count of BertForMaskedLM (tied decoder counted once); equals
    `models.bert.model.num_parameters` (a test pins it)."""
    h, f, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    emb = (V + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    norms = 0 if cfg.norm == "none" else 2 * h  # each block's two LayerNorms (none: no parameters)
    block = 4 * (h * h + h) + norms + (h * f + f) + (f * h + h) + norms
    head = (h * h + h) + 2 * h + V  # transform dense + LayerNorm + decoder bias (weight tied)
    final = 2 * h if cfg.norm == "pre" else 0
    embeddings = (V + cfg.max_position_embeddings + cfg.type_vocab_size) * h
    total = emb + L * block + head + final
    return {"total": total, "non_embedding": total - embeddings, "per_layer": block}


def dims(cfg: BertConfig, seq_len: int) -> Dims:
    """The sizes the FLOPs count reads: a GELU MLP (two matrices) and a dense transform in the head."""
    from ...flops import Dims  # lazy: flops imports the schedule, which this config must not need

    return Dims(
        hidden=cfg.hidden_size,
        ffn=cfg.intermediate_size,
        vocab=cfg.vocab_size,
        n_layers=cfg.num_layers,
        seq_len=seq_len,
        ffn_matrices=2,
        head_transform=True,
    )
