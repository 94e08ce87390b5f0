"""Decoder-only prefix LM for UL2 pretraining, with per-step layer selection.

Llama's block (pre-norm RMSNorm, rotary positions, SwiGLU MLP, no biases) and parameter names
(`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `model.layers.{i}.mlp.
{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`), so
a state dict loads 1:1 into `transformers.LlamaForCausalLM` (see `DecoderConfig.to_hf_dict`) and,
for fully causal input, gives the same logits. The differences from Llama:

- prefix-LM attention: row b attends bidirectionally over its inputs (positions < prefix_len[b])
  and causally over the rest, as UL2's decoder-only models (Tay et al. 2022, Sec. 3.2);
- labels are already aligned (label[t] is what position t predicts; the UL2 objective builds
  them), so the model does no shifting, and the head runs only on labelled positions;
- `forward(subnet=...)` (or its fields as `layers=`, `scales=`): the progressive-training hook.
  Blocks not listed are not executed at all, nor are a subnet's dropped heads and MLP units (the
  q/k/v rows, o-proj columns, gate/up rows and down columns of the kept ones are gathered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raptr_cli.models.common import (
    Width,
    block_widths,
    branch_scales,
    cols_linear,
    gather_labelled,
    resolve_path,
    rows_linear,
)
from raptr_cli.models.ul2.config import DecoderConfig
from raptr_cli.subnet import Subnet


@dataclass
class LMOutput:
    """What `DecoderForPrefixLM.forward` returns (same fields as bert's `MLMOutput`)."""

    loss: torch.Tensor | None
    """Mean cross-entropy over labelled positions (labels != -100); None without labels."""
    logits: torch.Tensor
    """(n_labelled, V) when labels are given (row-major (b, t) order), else (B, T, V)."""
    n_predictions: int
    """Number of positions the LM head ran on."""


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in float32 as Llama does."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(
    T: int, head_size: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_size) for positions 0..T-1 (HF Llama's "rotate_half" layout:
    dim i and dim i + hs/2 form a pair rotated by pos * theta^(-2i/hs)).

    Computed per forward instead of cached in a buffer: it costs T*hs/2 multiplies, and a
    buffer would be garbage after a meta-device build + `to_empty()`."""
    inv_freq = theta ** -(torch.arange(0, head_size, 2, device=device, dtype=torch.float32) / head_size)  # (hs/2,)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def prefix_lm_mask(prefix_len: torch.Tensor, T: int) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True = may attend: key k is visible from query q when
    k <= q (causal) or k < prefix_len[b] (the bidirectional input block).

    Every query sees at least itself, so no softmax row is empty (no NaNs)."""
    pos = torch.arange(T, device=prefix_len.device)
    causal = pos[None, :] <= pos[:, None]  # (T_q, T_k)
    in_prefix = pos[None, None, :] < prefix_len[:, None, None]  # (B, 1, T_k)
    return (causal[None] | in_prefix)[:, None]  # (B, 1, T_q, T_k)


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.dropout_p = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        rows: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`rows`: the hidden dims of the kept heads (None = all), `scale` their output's factor."""
        B, T, d = x.shape
        hs = d // self.num_heads
        nh = self.num_heads if rows is None else rows.numel() // hs
        # (B, T, d_kept) -> (B, nh, T, hs)
        q, k, v = (
            rows_linear(lin, x, rows).view(B, T, nh, hs).transpose(1, 2)
            for lin in (self.q_proj, self.k_proj, self.v_proj)
        )
        q = q * cos + _rotate_half(q) * sin  # cos, sin (T, hs) broadcast over (B, nh)
        k = k * cos + _rotate_half(k) * sin
        # mask None = fully causal: lets SDPA pick its causal fast path.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, nh, T, hs)
        return cols_linear(self.o_proj, y.transpose(1, 2).reshape(B, T, nh * hs), rows, scale)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), d -> d_ff -> d."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        d, ff = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(
        self, x: torch.Tensor, units: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`units`: the kept intermediate units (None = all), `scale` their output's factor."""
        h = F.silu(rows_linear(self.gate_proj, x, units)) * rows_linear(self.up_proj, x, units)
        return cols_linear(self.down_proj, h, units, scale)


class DecoderLayer(nn.Module):
    """One pre-norm block, (B, T, d) -> (B, T, d): h = x + Attn(N(x)); out = h + MLP(N(h))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def width_parts(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter], int]]:
        """The parameters a width subnetwork slices, per axis: (sliced by rows, sliced by columns,
        rows per part), as `BertLayer.width_parts`."""
        a, m = self.self_attn, self.mlp
        return {
            "heads": (
                [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight],
                [a.o_proj.weight],
                a.q_proj.out_features // a.num_heads,
            ),
            "units": ([m.gate_proj.weight, m.up_proj.weight], [m.down_proj.weight], 1),
        }

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        scale: torch.Tensor | None = None,
        width: Width | None = None,
    ) -> torch.Tensor:
        """`scale` (0-d tensor or None = 1; training-time 1/p): each residual branch is scaled,
        x + s Attn(N(x)), then h + s MLP(N(h)), as PLD (Zhang & He 2020) scales a pre-norm block.
        `width` (models.common.block_widths; None = whole block): only kept heads and units run."""
        rows, units, a_s, m_s = width or (None, None, None, None)
        a = self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, rows, a_s))
        x = x + (a if scale is None else scale * a)
        m = self.dropout(self.mlp(self.post_attention_layernorm(x), units, m_s))
        return x + (m if scale is None else scale * m)


class DecoderModel(nn.Module):
    """Embeddings + blocks + final norm (HF: `LlamaModel`)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DecoderForPrefixLM(nn.Module):
    """Prefix-LM decoder + LM head; `forward(subnet=...)` runs only the subnet's blocks."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.tie_weights()

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder blocks (`model.layers`), the unit RaPTr samples and stacking copies."""
        return self.model.layers

    def tie_weights(self) -> None:
        """With `tie_embeddings`, share `lm_head.weight` with the token embedding. Call again
        after anything that re-creates parameters (e.g. `to_empty()` from the meta device)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """HF Llama init: N(0, initializer_range) for Linear and Embedding, zero padding row,
        RMSNorm weights 1 (set by RMSNorm itself)."""
        std = self.config.initializer_range
        if module is self.lm_head and self.config.tie_embeddings:
            return  # tied: re-initialising it would overwrite the embedding's zero padding row
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        prefix_len: torch.Tensor | None = None,
        *,
        layers: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        subnet: Subnet | None = None,
    ) -> torch.Tensor:
        """Final (normed) hidden states (B, T, d): what the LM head and a fine-tuning head read.

        prefix_len, layers, scales, subnet: as `forward`.
        """
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        order, scales = resolve_path(layers, scales, len(self.blocks), subnet)

        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        cos, sin = rotary_cos_sin(
            T, self.config.hidden_size // self.config.num_heads, self.config.rope_theta, x.device, x.dtype
        )
        mask = None if prefix_len is None else prefix_lm_mask(prefix_len.to(x.device), T)
        widths = block_widths(subnet, order, self.config.num_heads, self.config.intermediate_size, x)
        scaled = branch_scales(scales, x)
        for j, i in enumerate(order):
            x = self.blocks[i](x, cos, sin, mask, scaled[j] if scaled else None, widths[j])
        return self.model.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        *,
        layers: Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        subnet: Subnet | None = None,
        label_index: torch.Tensor | None = None,
    ) -> LMOutput:
        """input_ids, labels: (B, T) long; prefix_len: (B,) long, or None for a plain causal LM.

        labels[b, t] is the token position t predicts (-100 = no loss there); no shifting here.
        layers: blocks to run this step (None = all); the others are not executed.
        scales: one per entry of `layers` (None = all 1), applied to each residual branch (`DecoderLayer`).
        subnet: layers and scales as one `Subnet` (what the schedule draws); not with either of them.
        label_index: `models.common.labelled_index(labels)` when the caller has it (computed on the
            host, it spares the forward a device->host sync).
        """
        B, T = input_ids.shape
        x = self.hidden_states(input_ids, prefix_len, layers=layers, scales=scales, subnet=subnet)  # (B, T, d)
        if labels is None:
            return LMOutput(loss=None, logits=self.lm_head(x), n_predictions=B * T)
        # Head only where there is a target: in a UL2 batch the inputs (often > half of each row)
        # and the padding carry no loss, and the d x V head is the costliest matmul of small models.
        h, targets = gather_labelled(x, labels, label_index)
        logits = self.lm_head(h)  # (n_labelled, V)
        if targets.numel() == 0:
            loss = logits.sum()  # zero, still attached to the graph so backward() works
        else:
            loss = F.cross_entropy(logits.float(), targets)
        return LMOutput(loss=loss, logits=logits, n_predictions=int(targets.numel()))
