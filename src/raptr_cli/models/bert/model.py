"""BERT encoder for masked-language-model pretraining with per-step layer selection.

Math and parameter names follow Hugging Face transformers' `BertForMaskedLM` (post-LN, exact
GELU, MLM head = dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a
separate output bias), so `model.state_dict()` loads 1:1 into `transformers.BertForMaskedLM`
and gives the same logits. Two deliberate additions:

- `forward(subnet=...)` (or its two fields as `layers=`, `scales=`): the one hook progressive
  training needs. Blocks not listed are not executed at all (identity through the residual); that
  is where the compute saving comes from. A subnet's heads and units (Random Part Training) run
  on gathered weight rows and columns: the dropped heads and MLP units are not computed either.
- `norm="pre"`: pre-LN variant with no HF equivalent. It reuses the post-LN parameter names
  (`attention.output.LayerNorm` normalises the attention input, `output.LayerNorm` the MLP
  input) and adds `bert.encoder.final_layer_norm` after the last block. Such a checkpoint loads
  into HF only with `strict=False` and then computes something different: export post-LN only.
- `norm="none"` and `residual=False`: ablations for the stability analysis (`raptr analyze`).
  "none" has no LayerNorm in the blocks (x + Attn(x), then h + MLP(h)) and no final LayerNorm; the
  embedding LayerNorm and the MLM head's LayerNorm (after its dense + GELU) stay, so only the
  residual stream goes unnormalised. `residual=False` drops the `x +` of both sublayers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.common import (
    Width,
    block_widths,
    branch_scales,
    cols_linear,
    gather_labelled,
    resolve_path,
    rows_linear,
)
from raptr_cli.subnet import Subnet


@dataclass
class MLMOutput:
    """What `BertForMaskedLM.forward` returns."""

    loss: torch.Tensor | None
    """Mean cross-entropy over masked positions (labels != -100); None without labels."""
    logits: torch.Tensor
    """(n_masked, V) when labels are given (masked positions in row-major (b, t) order), else (B, T, V)."""
    n_predictions: int
    """Number of positions the MLM head ran on."""


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, T, d)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # all segment 0, as HF's default
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings.weight[:T]  # (T, d) broadcast over B
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout_p = config.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d_kept): `rows` (the hidden dims of the kept heads; None = all) selects
        the q/k/v rows that are computed, so attention runs over the kept heads only."""
        B, T, d = x.shape
        hs = d // self.num_heads
        nh = self.num_heads if rows is None else rows.numel() // hs
        # (B, T, d_kept) -> (B, nh, T, hs)
        q, k, v = (
            rows_linear(lin, x, rows).view(B, T, nh, hs).transpose(1, 2) for lin in (self.query, self.key, self.value)
        )
        # SDPA scales by 1/sqrt(hs), as BERT does.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, nh * hs)


class _DenseNorm(nn.Module):
    """Parameter holder: HF's `BertSelfOutput` / `BertOutput` (dense, LayerNorm, dropout).

    The wiring (post- vs pre-LN) lives in `BertLayer.forward` so both variants read in one place.
    """

    def __init__(self, d_in: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        # norm="none": no parameters at all (not unused ones), so checkpoints hold what runs
        self.LayerNorm = (
            nn.Identity() if config.norm == "none" else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        )
        self.dropout = nn.Dropout(config.hidden_dropout)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # HF's name, hence `attention.self.query`
        self.output = _DenseNorm(config.hidden_size, config)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        return F.gelu(rows_linear(self.dense, x, units))  # exact (erf) GELU, HF's "gelu"


class BertLayer(nn.Module):
    """One transformer block: (B, T, d) -> (B, T, d)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.pre_norm = config.norm in ("pre", "none")  # "none": pre-LN wiring, LayerNorm = Identity
        self.residual = config.residual
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = _DenseNorm(config.intermediate_size, config)

    def width_parts(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter], int]]:
        """The parameters a width subnetwork slices, per axis: (sliced by rows, sliced by columns,
        rows per part). heads: q/k/v weight rows and biases, the attention output's weight columns,
        head_size rows a head; units: the intermediate weight rows and bias, the MLP output's weight
        columns, one a unit (train/width.py)."""
        sa = self.attention.self
        return {
            "heads": (
                [sa.query.weight, sa.query.bias, sa.key.weight, sa.key.bias, sa.value.weight, sa.value.bias],
                [self.attention.output.dense.weight],
                sa.query.out_features // sa.num_heads,
            ),
            "units": ([self.intermediate.dense.weight, self.intermediate.dense.bias], [self.output.dense.weight], 1),
        }

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        width: Width | None = None,
    ) -> torch.Tensor:
        """`scale` (a 0-d tensor, so a compiled block does not recompile per value; None = 1): the
        training-time 1/p of stochastic depth, PLD and RaPTr's inverse_p. Pre-LN scales each residual
        branch, x + s Attn(LN(x)) then h + s MLP(LN(h)), as PLD publishes it (Zhang & He 2020);
        post-LN has no residual branch outside its LayerNorm, so there the whole block update is
        scaled: x + s (block(x) - x). `width` (models.common.block_widths; None = the whole block):
        only the kept heads and MLP units are computed."""
        att, mlp = self.attention.output, self.output
        rows, units, a_s, m_s = width or (None, None, None, None)

        def attn(h):
            return att.dropout(cols_linear(att.dense, self.attention.self(h, mask, rows), rows, a_s))

        def ffn(h):
            return mlp.dropout(cols_linear(mlp.dense, self.intermediate(h, units), units, m_s))

        if self.pre_norm:
            branch = (lambda f: f) if scale is None else (lambda f: scale * f)
            add = (
                (lambda x, f: x + branch(f)) if self.residual else (lambda x, f: branch(f))
            )  # residual=False: f(x) replaces x
            # x + Attn(LN(x)), then h + MLP(LN(h))
            x = add(x, attn(att.LayerNorm(x)))
            return add(x, ffn(mlp.LayerNorm(x)))
        add = torch.add if self.residual else (lambda x, f: f)
        # Post-LN (original BERT): LN(x + Attn(x)), then LN(h + MLP(h))
        h = att.LayerNorm(add(x, attn(x)))
        out = mlp.LayerNorm(add(h, ffn(h)))
        return out if scale is None else torch.lerp(x, out, scale)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))
        # Pre-LN leaves the residual stream unnormalised; the head expects normalised input.
        self.final_layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm == "pre" else None
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        layers: Sequence[int],
        scales: Sequence[float] | None,
        widths: Sequence[Width | None] | None = None,
    ) -> torch.Tensor:
        scaled = branch_scales(scales, x)
        for j, i in enumerate(layers):
            x = self.layer[i](x, mask, scaled[j] if scaled else None, None if widths is None else widths[j])
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        layers: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        subnet: Subnet | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, d): what the MLM head and a fine-tuning pooler read.

        subnet / layers / scales: as `BertForMaskedLM.forward` (None = every block, unscaled).
        """
        order, scales = resolve_path(layers, scales, len(self.encoder.layer), subnet)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, d)
        mask = None  # None keeps SDPA on its fastest kernel
        if attention_mask is not None:
            # Additive (B, 1, 1, T) mask over keys, as HF: 0 where attended, dtype-min at padding
            # (a finite value keeps all-padding rows NaN-free, unlike a boolean mask).
            keep = attention_mask[:, None, None, :].to(torch.bool)
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)
        c = self.encoder.layer[0].attention.self
        widths = block_widths(subnet, order, c.num_heads, self.encoder.layer[0].intermediate.dense.out_features, x)
        return self.encoder(x, mask, order, scales, widths)  # (B, T, d)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        # decoder.weight is tied to the word embeddings by BertForMaskedLM.tie_weights();
        # decoder.bias IS `self.bias` (HF's layout: both names appear in the state dict).
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))  # (..., d) -> (..., V)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertForMaskedLM(nn.Module):
    """BERT + MLM head; `forward(subnet=...)` runs only the subnet's blocks."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.apply(self._init_weights)
        self.tie_weights()

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder blocks (`bert.encoder.layer`), the unit RaPTr samples and stacking copies."""
        return self.bert.encoder.layer

    def tie_weights(self) -> None:
        """Share the decoder weight with the word embeddings (and the decoder bias with
        `cls.predictions.bias`). Call again after anything that re-creates parameters, e.g.
        `to_empty()` from the meta device, which un-ties them."""
        head = self.cls.predictions
        head.decoder.weight = self.bert.embeddings.word_embeddings.weight
        head.decoder.bias = head.bias

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """HF BERT init: N(0, initializer_range) weights, zero biases, LayerNorm (1, 0)."""
        std = self.config.initializer_range
        if module is self.cls.predictions.decoder:
            return  # tied: re-initialising it would overwrite the embedding's zero padding row
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, BertLMPredictionHead):
            module.bias.zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        layers: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        subnet: Subnet | None = None,
        label_index: torch.Tensor | None = None,
    ) -> MLMOutput:
        """input_ids, attention_mask ({0,1}), token_type_ids, labels: (B, T) integer tensors.

        layers: blocks to run this step (None = all); the others are not executed.
        scales: one per entry of `layers` (None = all 1), see `BertLayer.forward`.
        subnet: layers and scales as one `Subnet` (what the schedule draws); not with either of them.
        label_index: `models.common.labelled_index(labels)` when the caller has it (computed on the
            host, it spares the forward a device->host sync).
        """
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        x = self.bert(
            input_ids, attention_mask, token_type_ids, layers=layers, scales=scales, subnet=subnet
        )  # (B, T, d)

        head = self.cls.predictions
        if labels is None:
            return MLMOutput(loss=None, logits=head(x), n_predictions=B * T)
        # Run the head only where there is a target: with 15% masking that skips ~85% of the
        # (d x V) decoder matmul, the most expensive single op for small BERTs.
        h, targets = gather_labelled(x, labels, label_index)
        logits = head(h)  # (n_masked, V)
        if targets.numel() == 0:
            # Nothing to predict: a zero loss still attached to the graph so backward() works.
            loss = logits.sum()
        else:
            loss = F.cross_entropy(logits.float(), targets)
        return MLMOutput(loss=loss, logits=logits, n_predictions=int(targets.numel()))


def num_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Trainable-or-not parameter count with tied weights counted once (as HF's
    `num_parameters`); `exclude_embeddings` drops every `nn.Embedding` table, including the
    decoder weight tied to the word embeddings."""
    skip: set[int] = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    # model.parameters() already yields a shared Parameter once.
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
