"""Architecture-agnostic helpers for progressive training.

Everything here works on any model exposing `.blocks` (an `nn.ModuleList` of residual blocks,
each mapping hidden states to hidden states) and `.config.num_layers`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raptr_cli.errors import UserError
from raptr_cli.subnet import Subnet


def check_layers(layers: Sequence[int], num_layers: int, key: str = "layers") -> list[int]:
    """Validate and normalise a list of block indices; returns them sorted ascending.

    Negative indices count from the end (-1 is the last block), as in the recipe's
    `fixed_layers = [0, -1]`. Duplicates and out-of-range indices are errors rather than being
    silently dropped: a duplicate means the caller's path sampler is wrong, and running a block
    twice would change the math. Every problem is listed at once; `key` names the recipe key or
    argument in the message.
    """
    problems: list[str] = []
    out: list[int] = []
    for raw in layers:
        # bool is an int subclass; True as a layer index is always a mistake. operator.index
        # accepts numpy / 0-d torch integers but not floats (1.0 as an index hides a bug).
        try:
            if isinstance(raw, bool):
                raise TypeError
            i = operator.index(raw)
        except TypeError:
            problems.append(f"{raw!r} is not an integer")
            continue
        if not -num_layers <= i < num_layers:
            problems.append(
                f"{i} is out of range for {num_layers} layers "
                f"(valid: 0..{num_layers - 1}, or -{num_layers}..-1 from the end)"
            )
            continue
        out.append(i % num_layers)
    seen: set[int] = set()
    for i in out:
        if i in seen:
            problems.append(f"layer {i} is listed more than once")
        seen.add(i)
    if problems:
        raise UserError(
            f"invalid `{key}`",
            hint="List each block index once, 0-based (negative counts from the end).",
            problems=problems,
        )
    return sorted(out)


def grow_by_stacking(model: nn.Module, new_depth: int) -> list[tuple[int, int]]:
    """Gradual stacking (Reddi et al. 2023): a k-layer model grows to m layers (k < m <= 2k) by
    appending deep copies of its top m-k layers, i.e. layers [2k-m .. k-1] copied on top, in order.
    Updates model.config.num_layers. Returns (new_index, source_index) pairs.

    The copies are new `nn.Parameter`s (same values, separate storage): an optimizer built before
    the call does not know them, so the caller must rebuild it (or add a param group, copying the
    sources' optimizer state if the recipe asks for that).
    """
    blocks: nn.ModuleList = model.blocks
    config: Any = model.config
    k = len(blocks)
    if config.num_layers != k:
        raise ValueError(f"model.config.num_layers={config.num_layers} but model has {k} blocks")
    if not k < new_depth <= 2 * k:
        raise UserError(
            f"cannot grow a {k}-layer model to {new_depth} layers by stacking",
            hint=f"Gradual stacking appends copies of the top layers: the next depth must be in "
            f"{k + 1}..{2 * k} (at most double). Add an intermediate stage to grow further.",
        )
    from ..schedule import growth_sources  # the one statement of the rule (schedule tests pin it)

    pairs = [(k + j, src) for j, src in enumerate(growth_sources(k, new_depth))]
    # Copy all sources before appending so the copies are of the pre-growth layers only.
    copies = [copy.deepcopy(blocks[src]) for _, src in pairs]
    for block in copies:
        blocks.append(block)
    config.num_layers = new_depth
    return pairs


def resolve_path(
    layers: Sequence[int] | None, scales: Sequence[float] | None, num_layers: int, subnet: Subnet | None = None
) -> tuple[list[int], Sequence[float] | None]:
    """The blocks to run, in order, with their scales: `layers` validated and sorted (None = all),
    each scale kept with its layer through the sort.

    `subnet` says the same as (layers, scales) in one object, the form the schedule hands over;
    the two keywords stay for callers that name blocks directly. Both at once is ambiguous."""
    if subnet is not None:
        if layers is not None or scales is not None:
            raise ValueError("pass either subnet= or layers=/scales=, not both")
        layers, scales = subnet.layers, subnet.scales
    if layers is None:
        if scales is not None and len(scales) != num_layers:
            raise ValueError(f"got {len(scales)} scales for all {num_layers} layers")
        return list(range(num_layers)), scales
    if scales is not None and len(scales) != len(layers):
        raise ValueError(f"got {len(scales)} scales for {len(layers)} layers")
    order = check_layers(layers, num_layers)
    if scales is not None:
        by_layer = {i % num_layers: s for i, s in zip(layers, scales)}
        scales = [by_layer[i] for i in order]
    return order, scales


def branch_scales(scales: Sequence[float] | None, like: torch.Tensor) -> list[torch.Tensor | None]:
    """Each listed block's training-time scale as a 0-d tensor on `like`'s device and dtype (a tensor,
    so a compiled block takes it as an input instead of recompiling per value), or None where it is
    1.0. One host-to-device copy per forward, not one per block; [] when `scales` is None."""
    if scales is None:
        return []
    values = [float(v) for v in scales]
    if all(v == 1.0 for v in values):
        return [None] * len(values)
    on_device = torch.tensor(values, device=like.device, dtype=like.dtype)
    return [None if v == 1.0 else on_device[j] for j, v in enumerate(values)]


def labelled_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat row-major indices of the positions of labels (B, T) that carry a label (!= -100)."""
    return (labels != -100).reshape(-1).nonzero().squeeze(1)


def gather_labelled(
    x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (n, d) and targets (n,) of the positions that carry a label (labels != -100),
    in row-major (b, t) order, from x (B, T, d) and labels (B, T).

    Finding those positions on the device (`x[labels != -100]`, `nonzero`) must copy their count
    to the host before the output can be sized: a device->host sync in the middle of every GPU
    forward that drains the launch queue. The trainer holds the labels on the host before it moves
    them, so it passes `index` (`labelled_index` of the host labels, moved to the device) and the
    forward never waits for the GPU.
    """
    if index is None:
        index = labelled_index(labels)
    return x.reshape(-1, x.shape[-1]).index_select(0, index), labels.reshape(-1).index_select(0, index)


Width = tuple  # (rows, units, attn_scale, mlp_scale), see block_widths
"""One block's width subnetwork as tensors: rows (the hidden dims of its kept heads, for q/k/v rows
and o-proj columns) or None = all heads; units (kept MLP intermediate units) or None = all; the 0-d
scales of the kept heads' and units' output (None = 1)."""


def block_widths(
    subnet: Subnet | None, order: Sequence[int], num_heads: int, n_units: int, like: torch.Tensor
) -> list[Width | None]:
    """Per block of `order` (resolve_path's run order): its `Width`, or None when it computes every
    head and unit. Index tensors are built on the host and moved (non-blocking) to `like`'s device."""
    if subnet is None or not subnet.narrow:
        return [None] * len(order)
    for name, parts in (("heads", subnet.heads), ("units", subnet.units)):
        if parts is not None and len(parts) != len(order):
            raise ValueError(f"subnet.{name} has {len(parts)} entries for {len(order)} blocks that run")
    # entry j of heads / units belongs to the j-th block the subnet lists (the run order may sort it)
    pos = {i: j for j, i in enumerate(order if subnet.layers is None else subnet.layers)}
    if any(i not in pos for i in order):
        raise ValueError("a subnet with heads or units lists its layers as 0-based indices")
    hs = like.shape[-1] // num_heads
    out = []
    for i in order:
        j = pos[i]
        heads = None if subnet.heads is None else subnet.heads[j]
        units = None if subnet.units is None else subnet.units[j]
        rows = None if heads is None else _index([h * hs + i for h in heads for i in range(hs)], like)
        cols = None if units is None else _index(units, like)
        inverse = subnet.width_scale == "inverse_fraction"
        a = _scale(num_heads / len(heads), like) if inverse and heads is not None else None
        m = _scale(n_units / len(units), like) if inverse and units is not None else None
        out.append((rows, cols, a, m))
    return out


def _index(ix, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(ix, dtype=torch.long).to(like.device, non_blocking=True)


def _scale(v: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=like.dtype, device=like.device)


def rows_linear(lin: nn.Linear, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """lin(x) computing only the output features `rows` (None = all): a smaller matmul with the
    gathered weight rows and bias entries, so the dropped features cost nothing (their gradient
    is zero through the gather)."""
    if rows is None:
        return lin(x)
    bias = None if lin.bias is None else lin.bias.index_select(0, rows)
    return F.linear(x, lin.weight.index_select(0, rows), bias)


def cols_linear(
    lin: nn.Linear, x: torch.Tensor, cols: torch.Tensor | None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """lin applied to the input features `cols` only (x holds just those; None = all), with the
    gathered weight columns; `scale` multiplies x first (inverse_fraction), never the bias."""
    if scale is not None:
        x = x * scale
    if cols is None:
        return lin(x)
    return F.linear(x, lin.weight.index_select(1, cols), lin.bias)
