"""Fine-tuning inputs and heads, asked of the architecture's registry entry (`ArchSpec.finetune`;
the heads themselves are `models/<arch>/classifier.py`): tokenise examples as the architecture's
pretraining saw text, and pad them into batches. Longer inputs are cut to `max_seq_len`, the
longer text of a pair first (HF's "longest_first").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.registry import arch_spec


def classifier_for(arch: str, backbone: nn.Module, num_labels: int) -> nn.Module:
    return arch_spec(arch).finetune.classifier(backbone, num_labels)


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Token ids per example (unpadded) and their segment ids."""

    ids: list[list[int]]
    types: list[list[int]]


def _truncate(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Drop tokens from the end of the longer text until both fit `budget` (HF's longest_first)."""
    if b is None:
        return a[:budget], None
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def encode(tok, arch: str, specials: dict, a: list[str], b: list[str] | None, max_len: int) -> Encoded:
    """Tokenise examples as the architecture's pretraining saw text (its `FinetuneSpec.frame`)."""
    spec = arch_spec(arch).finetune
    ea = [e.ids for e in tok.encode_batch(a, add_special_tokens=False)]
    eb = [e.ids for e in tok.encode_batch(b, add_special_tokens=False)] if b is not None else [None] * len(a)
    ids, types = [], []
    for x, y in zip(ea, eb):
        x, y = _truncate(x, y, max_len - spec.overhead[y is not None])
        seq, t = spec.frame(specials, x, y)
        ids.append(seq)
        types.append(t)
    return Encoded(ids, types)


def collate(enc: Encoded, index: list[int], pad: int) -> dict[str, torch.Tensor]:
    """Right-pad the examples `index` to their longest: input_ids, attention_mask, token_type_ids (B, T)."""
    T = max(len(enc.ids[i]) for i in index)
    ids = torch.full((len(index), T), pad, dtype=torch.long)
    types = torch.zeros((len(index), T), dtype=torch.long)
    mask = torch.zeros((len(index), T), dtype=torch.long)
    for r, i in enumerate(index):
        n = len(enc.ids[i])
        ids[r, :n] = torch.tensor(enc.ids[i])
        types[r, :n] = torch.tensor(enc.types[i])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


__all__ = ["Encoded", "classifier_for", "collate", "encode"]
