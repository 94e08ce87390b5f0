"""BERT -> transformers `BertForMaskedLM`: raptr's state-dict names are HF's, so the weights go
over unchanged and `AutoModelForMaskedLM.from_pretrained(out)` gives the same logits. Pre-LN BERT
(and the no-LayerNorm / no-residual ablations) has no HF architecture: its weights would load with
`strict=False` and silently compute something else, so it is refused."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ...errors import UserError
from .config import BertConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# HF's `_tied_weights_keys`: re-created from the word embedding by `tie_weights()` on load.
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def check(cfg: BertConfig, where: object) -> None:
    """Refuse (UserError naming `where`) a BERT that transformers' BERT would compute differently."""
    if cfg.norm != "post" or not cfg.residual:
        what = {"pre": "a pre-LN BERT", "none": "a BERT without LayerNorm"}.get(cfg.norm, "a BERT without residuals")
        raise UserError(
            f"{where} holds {what} (norm = {cfg.norm!r}, residual = {cfg.residual}), which has no "
            "transformers equivalent",
            hint="Only post-LN BERT with residuals (the default) exports to "
            "BertForMaskedLM; HF's BERT would load these weights but compute a different "
            "function.",
        )


def configs(cfg: BertConfig, tok: Tokenizer, specials: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, tokenizer_config.json) of the exported model."""
    return {**cfg.to_hf_dict(), "pad_token_id": specials["pad"]}, tokenizer_config(tok, cfg)


def tied_keys(cfg: BertConfig) -> tuple[str, ...]:
    return TIED_KEYS  # BERT's decoder is always tied


def classifier_configs(cfg: BertConfig, tok: Tokenizer, specials: dict, meta: dict) -> tuple[dict, dict] | None:
    """(config.json, tokenizer_config.json) of a fine-tuned model saved as a transformers
    `BertForSequenceClassification` directory; None for a pre-LN or no-LayerNorm BERT, which
    HF's BERT would compute differently."""
    if cfg.norm != "post":
        return None
    conf = {
        **cfg.to_hf_dict(),
        "architectures": ["BertForSequenceClassification"],
        "pad_token_id": int(specials["pad"]),
        "torch_dtype": "float32",
        **meta,
    }
    return conf, tokenizer_config(tok, cfg)


def tokenizer_config(tok: Tokenizer, cfg: BertConfig) -> dict[str, Any]:
    """tokenizer_config.json for a raptr WordPiece tokenizer.

    `BertTokenizerFast` (transformers 4) and `BertTokenizer` (5) re-apply `do_lower_case`,
    `strip_accents` and `tokenize_chinese_chars` to the normaliser (v5 rebuilds the whole
    pipeline from the vocabulary), and both default to lowercasing: the flags must be copied from
    tokenizer.json or a cased tokenizer would come back uncased. A tokenizer.json that is not the
    standard BERT pipeline is declared as `PreTrainedTokenizerFast`, which uses the file verbatim.
    """
    spec = json.loads(tok.to_str())
    norm = spec.get("normalizer") or {}
    model = spec.get("model") or {}
    bert_like = (
        model.get("type") == "WordPiece"
        and model.get("continuing_subword_prefix") == "##"
        and model.get("max_input_chars_per_word", 100) == 100
        and norm.get("type") == "BertNormalizer"
        and norm.get("clean_text", True)
        and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
    )
    out: dict[str, Any] = {
        "tokenizer_class": "BertTokenizerFast" if bert_like else "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": True,
    }
    if bert_like:
        out.update(
            do_lower_case=bool(norm.get("lowercase", False)),
            strip_accents=norm.get("strip_accents"),
            tokenize_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        )
    else:
        out["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    return out
