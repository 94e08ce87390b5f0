"""Classification heads on a pretrained raptr encoder, and the tokenisation that feeds them.

- BERT: transformers' `BertForSequenceClassification` exactly: the [CLS] hidden state ->
  pooler (dense + tanh, `bert.pooler.dense`) -> dropout (the model's hidden dropout) -> linear
  (`classifier`). The parameter names are HF's, so `state_dict()` (encoder + pooler + head)
  loads into `BertForSequenceClassification` and gives the same logits. The MLM head is dropped.
  The pooler is new (raptr pretrains without next-sentence prediction, so there is none to reuse).
- UL2 (decoder-only prefix LM): the whole input is the prefix, attended bidirectionally as in
  pretraining (UL2's [NLU] paradigm token first), and the head reads the mean of the final hidden
  states over the input tokens, then dropout and a linear layer (`score`). Mean pooling rather
  than the last token (LlamaForSequenceClassification's choice) because under a bidirectional
  prefix no position is privileged, and the mean uses every token's representation.

Inputs: BERT `[CLS] A [SEP] (B [SEP])` with segment ids 0/1; UL2 `[NLU] A ([EOS] B)`. Longer
inputs are cut to `max_seq_len`, the longer text of a pair first (HF's "longest_first").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class BertPooler(nn.Module):
    """HF's pooler: tanh(dense(h[:, 0]))."""

    def __init__(self, d: int):
        super().__init__()
        self.dense = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, T, d) -> (B, d)


class BertClassifier(nn.Module):
    """raptr's BertModel + HF's pooler and classifier, under HF's parameter names."""

    def __init__(self, mlm: nn.Module, num_labels: int):
        super().__init__()
        self.config = mlm.config
        self.bert = mlm.bert  # embeddings + encoder, shared with the pretrained model
        self.bert.pooler = BertPooler(self.config.hidden_size)  # -> bert.pooler.dense.*
        self.dropout = nn.Dropout(self.config.hidden_dropout)
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)
        for m in (self.bert.pooler.dense, self.classifier):  # HF's init: N(0, initializer_range), zero bias
            nn.init.normal_(m.weight, 0.0, self.config.initializer_range)
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, d)
        return self.classifier(self.dropout(self.bert.pooler(h)))  # (B, num_labels)


class DecoderClassifier(nn.Module):
    """raptr's prefix-LM decoder, mean-pooled over the (bidirectional) input, + a linear head."""

    def __init__(self, lm: nn.Module, num_labels: int):
        super().__init__()
        self.config = lm.config
        if not lm.config.tie_embeddings:
            lm.lm_head = None  # unused here: keep its (V, d) weight out of AdamW and the saved model
        self.decoder = lm
        self.dropout = nn.Dropout(self.config.dropout)
        self.score = nn.Linear(self.config.hidden_size, num_labels)
        nn.init.normal_(self.score.weight, 0.0, self.config.initializer_range)
        nn.init.zeros_(self.score.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        n = attention_mask.sum(1)  # (B,) real tokens; padding is on the right
        h = self.decoder.hidden_states(input_ids, prefix_len=n)  # (B, T, d), input fully bidirectional
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        pooled = (h * m).sum(1) / n.clamp(min=1).unsqueeze(-1).to(h.dtype)  # (B, d)
        return self.score(self.dropout(pooled))


def classifier_for(arch: str, backbone: nn.Module, num_labels: int) -> nn.Module:
    return (BertClassifier if arch == "bert" else DecoderClassifier)(backbone, num_labels)


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
    """Tokenise examples as the architecture's pretraining saw text (see the module docstring)."""
    ea = [e.ids for e in tok.encode_batch(a, add_special_tokens=False)]
    eb = [e.ids for e in tok.encode_batch(b, add_special_tokens=False)] if b is not None else [None] * len(a)
    ids, types = [], []
    for x, y in zip(ea, eb):
        if arch == "bert":
            x, y = _truncate(x, y, max_len - (2 if y is None else 3))
            seq = [specials["cls"], *x, specials["sep"]]
            t = [0] * len(seq)
            if y is not None:
                seq += [*y, specials["sep"]]
                t += [1] * (len(y) + 1)
        else:
            x, y = _truncate(x, y, max_len - (1 if y is None else 2))
            seq = [specials["[NLU]"], *x] + ([] if y is None else [specials["eos"], *y])
            t = [0] * len(seq)
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


__all__ = ["BertClassifier", "DecoderClassifier", "Encoded", "classifier_for", "collate", "encode"]
