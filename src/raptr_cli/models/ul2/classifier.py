"""Sequence classification on the UL2 decoder: the whole input is the prefix, attended
bidirectionally as in pretraining (UL2's [NLU] paradigm token first), and the head reads the mean
of the final hidden states over the input tokens, then dropout and a linear layer (`score`). Mean
pooling rather than the last token (LlamaForSequenceClassification's choice) because under a
bidirectional prefix no position is privileged, and the mean uses every token's representation."""

from __future__ import annotations

import torch
from torch import nn


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

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = attention_mask.sum(1)  # (B,) real tokens; padding is on the right
        h = self.decoder.hidden_states(input_ids, prefix_len=n)  # (B, T, d), input fully bidirectional
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        pooled = (h * m).sum(1) / n.clamp(min=1).unsqueeze(-1).to(h.dtype)  # (B, d)
        return self.score(self.dropout(pooled))
