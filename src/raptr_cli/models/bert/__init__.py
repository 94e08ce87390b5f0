"""BERT masked-LM encoder (post-LN as HF's BertForMaskedLM; pre-LN and ablations as options):
`config` (BertConfig, presets, counts), `model` (the module), `hf` (export to transformers)."""

from __future__ import annotations

from typing import Any

from ..registry import ArchSpec, FinetuneSpec, HFExport, TokenizerSpec
from . import hf
from .config import BERT_PRESETS, BertConfig, dims, param_count


def _build(cfg: BertConfig) -> Any:
    from .model import BertForMaskedLM

    return BertForMaskedLM(cfg)


def _train_tokenizer(documents: Any, t: Any) -> Any:
    from ...data.tokenizer import train_wordpiece

    return train_wordpiece(documents, vocab_size=t.vocab_size, lowercase=t.lowercase, min_frequency=t.min_frequency)


def _specials(tok: Any) -> dict:
    from ...data.tokenizer import special_ids

    return special_ids(tok)


def _classifier(backbone: Any, num_labels: int) -> Any:
    from .classifier import BertClassifier

    return BertClassifier(backbone, num_labels)


def _frame(specials: dict, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
    """`[CLS] A [SEP] (B [SEP])` with segment ids 0 (then 1 for B), as BERT pretraining packs text."""
    seq = [specials["cls"], *a, specials["sep"]]
    types = [0] * len(seq)
    if b is not None:
        seq += [*b, specials["sep"]]
        types += [1] * (len(b) + 1)
    return seq, types


SPEC = ArchSpec(
    name="bert",
    config=BertConfig,
    presets=BERT_PRESETS,
    build=_build,
    param_count=param_count,
    dims=dims,
    tokenizer=TokenizerSpec(kind="wordpiece", train=_train_tokenizer, specials=_specials),
    objective="mlm",
    layout="bert",
    frame=("cls", "sep"),
    overrides={
        "n_layers": "num_layers",
        "hidden_size": "hidden_size",
        "num_heads": "num_heads",
        "intermediate_size": "intermediate_size",
        "max_position_embeddings": "max_position_embeddings",
        "norm": "norm",
        "residual": "residual",
    },
    dropouts={"dropout": "hidden_dropout", "attention_dropout": "attention_dropout"},
    export=HFExport(
        architecture="BertForMaskedLM",
        auto_class="AutoModelForMaskedLM",
        configs=hf.configs,
        tied_keys=hf.tied_keys,
        check=hf.check,
    ),
    finetune=FinetuneSpec(
        classifier=_classifier, frame=_frame, overhead=(2, 3), head="pooler", hf_configs=hf.classifier_configs
    ),
)
