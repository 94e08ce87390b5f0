"""Sequence classification on raptr's BERT, exactly transformers' `BertForSequenceClassification`:
the [CLS] hidden state -> pooler (dense + tanh, `bert.pooler.dense`) -> dropout (the model's hidden
dropout) -> linear (`classifier`). The parameter names are HF's, so `state_dict()` (encoder + pooler
+ head) loads into `BertForSequenceClassification` and gives the same logits. The MLM head is
dropped. The pooler is new (raptr pretrains without next-sentence prediction, so there is none to
reuse)."""

from __future__ import annotations

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

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, d)
        return self.classifier(self.dropout(self.bert.pooler(h)))  # (B, num_labels)
