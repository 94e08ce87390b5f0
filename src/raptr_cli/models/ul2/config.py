"""The UL2 decoder's architecture config, size presets and analytic counts, importable without
torch (so `raptr flops` and `--dry-run` validation stay fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import UserError

if TYPE_CHECKING:
    from ...flops import Dims


@dataclass
class DecoderConfig:
    """Architecture of the UL2 decoder-only prefix LM (Llama-style: pre-norm RMSNorm, rotary
    positions, SwiGLU MLP, no biases); field names follow `BertConfig` / HF `LlamaConfig`."""

    vocab_size: int = 32128
    """Tokenizer vocabulary size (rows of `embed_tokens` and of `lm_head`); 32128 is T5/UL2's."""
    hidden_size: int = 512
    """Model width d."""
    num_layers: int = 12
    """Number of transformer blocks L (HF: `num_hidden_layers`)."""
    num_heads: int = 8
    """Attention heads; must divide `hidden_size` into an even head size (rotary pairs dims)."""
    intermediate_size: int = 1376
    """SwiGLU inner width d_ff (Llama's ~8/3 d, rounded to a multiple of 32)."""
    max_position_embeddings: int = 2048
    """Longest sequence accepted. Rotary has no position table, so this only bounds inputs."""
    rope_theta: float = 10000.0
    """Rotary base: pair i of a head rotates by angle pos * theta^(-2i/head_size)."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    dropout: float = 0.0
    """Dropout on attention probabilities and on each residual branch output (training only)."""
    tie_embeddings: bool = False
    """Share `lm_head.weight` with `model.embed_tokens.weight` (untied by default, as Llama)."""
    initializer_range: float = 0.02
    """Std of the normal init of every Linear and Embedding weight."""
    pad_token_id: int = 0
    """Padding token id; its embedding row starts at zero and gets no embedding gradient."""

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
        ):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            out.append(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        elif self.num_heads >= 1 and (self.hidden_size // self.num_heads) % 2:
            out.append(
                f"head size hidden_size/num_heads = {self.hidden_size // self.num_heads} "
                "must be even (rotary embeddings rotate pairs of dimensions)"
            )
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            out.append(f"rope_theta and rms_norm_eps must be > 0 (got {self.rope_theta}, {self.rms_norm_eps})")
        if not 0 <= self.pad_token_id < self.vocab_size:
            out.append(f"pad_token_id ({self.pad_token_id}) must be in 0..vocab_size-1")
        return out

    def __post_init__(self) -> None:
        if found := self.problems():
            raise UserError("invalid UL2 decoder model config", hint="Fix the listed model keys.", problems=found)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> DecoderConfig:
        """A preset from `UL2_PRESETS` with `overrides` applied on top."""
        if name not in UL2_PRESETS:
            raise UserError(f"unknown UL2 preset {name!r}", hint=f"Choose one of: {', '.join(UL2_PRESETS)}.")
        return cls(**{**UL2_PRESETS[name], **overrides})

    def to_hf_dict(self) -> dict[str, object]:
        """Keys of a transformers `LlamaConfig` with the same weights layout. The math matches
        Llama only for fully causal input (prefix_len=None): Llama has no prefix-LM mask."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "attention_dropout": self.dropout,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": self.tie_embeddings,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
        }


# Decoder sizes: head size 64 from "small" up (tiny: 32); d_ff ~ 8/3 d rounded up to a multiple
# of 32 (Llama's SwiGLU sizing, which keeps MLP FLOPs ~ a 4d GELU MLP). "1b6" is the depth and
# width of the paper's UL2 decoder (24 x 2048); with the default 32128-token vocabulary and an
# untied head it has 1,364,822,016 parameters (1,233,223,680 in the blocks), pinned by a
# meta-device build in tests/test_ul2.py. The paper's "1.6B" must count a larger vocabulary or
# d_ff than these (unpublished) settings: OPEN.
UL2_PRESETS: dict[str, dict] = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=4, intermediate_size=352),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=704),
    "small": dict(num_layers=12, hidden_size=512, num_heads=8, intermediate_size=1376),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=2048),
    "1b6": dict(num_layers=24, hidden_size=2048, num_heads=16, intermediate_size=5632),
}


def param_count(cfg: DecoderConfig) -> dict[str, int]:
    """Analytic parameter count of the UL2 decoder (Llama layout, no biases)."""
    h, f, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    block = 4 * h * h + 3 * h * f + 2 * h  # q,k,v,o + gate,up,down + two RMSNorms
    head = 0 if cfg.tie_embeddings else V * h
    total = V * h + L * block + h + head
    return {"total": total, "non_embedding": total - V * h - head, "per_layer": block}


def dims(cfg: DecoderConfig, seq_len: int) -> Dims:
    """The sizes the FLOPs count reads: a SwiGLU MLP (three matrices), a bare linear head."""
    from ...flops import Dims  # lazy: flops imports the schedule, which this config must not need

    return Dims(
        hidden=cfg.hidden_size,
        ffn=cfg.intermediate_size,
        vocab=cfg.vocab_size,
        n_layers=cfg.num_layers,
        seq_len=seq_len,
        ffn_matrices=3,
        head_transform=False,
    )
