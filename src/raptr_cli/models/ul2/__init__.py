"""UL2's decoder-only prefix LM (Llama's block and names): `config` (DecoderConfig, presets,
counts), `model` (the module), `hf` (export to transformers as LlamaForCausalLM)."""

from __future__ import annotations

from typing import Any

from ..registry import ArchSpec, FinetuneSpec, HFExport, TokenizerSpec
from . import hf
from .config import UL2_PRESETS, DecoderConfig, dims, param_count


def _build(cfg: DecoderConfig) -> Any:
    from .model import DecoderForPrefixLM

    return DecoderForPrefixLM(cfg)


def _train_tokenizer(documents: Any, t: Any) -> Any:
    from ...objectives.ul2_tokenizer import train_bpe

    return train_bpe(documents, vocab_size=t.vocab_size, min_frequency=t.min_frequency)


def _specials(tok: Any) -> dict:
    from ...objectives.ul2_tokenizer import ul2_special_ids

    return ul2_special_ids(tok)


def _problems(recipe: Any) -> list[str]:
    """Recipe keys the decoder cannot honour: BERT's norm options, and a vocabulary too small for
    byte-level BPE (which needs the 256 bytes and UL2's specials)."""
    p = []
    if recipe.model.norm is not None:
        p.append("model.norm applies to bert only (ul2 is pre-norm RMSNorm)")
    if recipe.model.residual is not None:
        p.append("model.residual applies to bert only")
    if recipe.tokenizer.vocab_size < 512:
        p.append(
            f"tokenizer.vocab_size = {recipe.tokenizer.vocab_size}: byte-level BPE needs at least 512 (UL2 uses 32128)"
        )
    return p


def _classifier(backbone: Any, num_labels: int) -> Any:
    from .classifier import DecoderClassifier

    return DecoderClassifier(backbone, num_labels)


def _frame(specials: dict, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
    """`[NLU] A ([EOS] B)`, one segment: the whole input is the bidirectional prefix."""
    seq = [specials["[NLU]"], *a] + ([] if b is None else [specials["eos"], *b])
    return seq, [0] * len(seq)


SPEC = ArchSpec(
    name="ul2",
    config=DecoderConfig,
    presets=UL2_PRESETS,
    build=_build,
    param_count=param_count,
    dims=dims,
    tokenizer=TokenizerSpec(kind="bpe", train=_train_tokenizer, specials=_specials),
    objective="ul2",
    layout="examples",
    problems=_problems,
    overrides={
        "n_layers": "num_layers",
        "hidden_size": "hidden_size",
        "num_heads": "num_heads",
        "intermediate_size": "intermediate_size",
        "max_position_embeddings": "max_position_embeddings",
    },
    dropouts={"dropout": "dropout"},
    export=HFExport(
        architecture="LlamaForCausalLM", auto_class="AutoModelForCausalLM", configs=hf.configs, tied_keys=hf.tied_keys
    ),
    finetune=FinetuneSpec(classifier=_classifier, frame=_frame, overhead=(1, 2), head="mean-pooled prefix"),
)
