"""UL2 decoder -> transformers `LlamaForCausalLM`: same parameter names and block math. Llama has
no prefix-LM mask, so the exported model reproduces raptr's logits for fully causal input
(prefix_len=None) only; a UL2 prompt whose prefix raptr attended to bidirectionally is seen
causally by Llama."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DecoderConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def configs(cfg: DecoderConfig, tok: Tokenizer, specials: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, tokenizer_config.json) of the exported model."""
    hf = {
        **cfg.to_hf_dict(),
        "pad_token_id": specials["pad"],
        "bos_token_id": specials["bos"],
        "eos_token_id": specials["eos"],
    }
    return hf, tokenizer_config(tok, cfg)


def tied_keys(cfg: DecoderConfig) -> tuple[str, ...]:
    """The head HF re-ties from the embedding, only when the config ties them."""
    return ("lm_head.weight",) if cfg.tie_embeddings else ()


def tokenizer_config(tok: Tokenizer, cfg: DecoderConfig) -> dict[str, Any]:
    """tokenizer_config.json for the UL2 byte-level BPE: loaded verbatim as a
    `PreTrainedTokenizerFast`. No BOS/EOS is added on encode, as in raptr's own tokenizer (the UL2
    objective places [BOS]/paradigm tokens itself); callers prepend them when they want them."""
    from ...objectives.ul2_tokenizer import BASE_SPECIALS, sentinel_token

    extras = [t for k, t in BASE_SPECIALS.items() if k.startswith("[")]
    n = 0
    while tok.token_to_id(sentinel_token(n)) is not None:
        n += 1
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BASE_SPECIALS["bos"],
        "eos_token": BASE_SPECIALS["eos"],
        "unk_token": BASE_SPECIALS["unk"],
        "pad_token": BASE_SPECIALS["pad"],
        "additional_special_tokens": extras + [sentinel_token(i) for i in range(n)],
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": False,  # byte-level decoding is already lossless
        "model_input_names": ["input_ids", "attention_mask"],
    }
