"""The masked optimizer step of width subnetworks (Random Part Training).

A step that ran only some heads and MLP units of a block gives the dropped rows and columns of its
weights an exactly zero gradient (the models gather the kept slices). Plain AdamW would still move
them: the moments decay towards zero (exp_avg *= beta1, exp_avg_sq *= beta2), the decayed momentum
keeps changing the weight, and weight decay shrinks it. The default semantics here is that a dropped
unit did not take part in the step at all: its weights and both AdamW moments are saved before
`optimizer.step()` and put back after it, so the step touches only what ran - the same rule as a
skipped layer, whose grad None makes AdamW skip it. One thing is shared by the whole tensor and so
advances for dropped units too: AdamW's per-parameter `step` count (its bias correction), since
torch keeps one count per tensor; after the first few hundred steps the correction is ~1 either way.

Saving the dropped slices costs a gather and a scatter of (1 - fraction) of the block's sliced
parameters (and of the two moments) per step, small against the step's matmuls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..subnet import Subnet


def dropped_slices(model, subnet: Subnet) -> list[tuple[torch.nn.Parameter, int, torch.Tensor]]:
    """(parameter, dim, indices) of every slice the subnet dropped: per active block, the rows of its
    heads' (units') input projections and the columns of their output projections that did not run
    (each block lists them in `width_parts()`)."""
    blocks = model.blocks
    order = range(len(blocks)) if subnet.layers is None else subnet.layers
    out = []
    for j, i in enumerate(order):
        parts = blocks[i].width_parts()
        for axis, kept in (("heads", subnet.heads), ("units", subnet.units)):
            if kept is None:
                continue
            rows, cols, per = parts[axis]
            n = cols[0].shape[1]  # the output projection's input width: hidden size or d_ff
            dropped = torch.ones(n // per, dtype=torch.bool)
            dropped[list(kept[j])] = False
            if not dropped.any():
                continue
            idx = dropped.repeat_interleave(per).nonzero().squeeze(1).to(cols[0].device, non_blocking=True)
            out += [(p, 0, idx) for p in rows] + [(p, 1, idx) for p in cols]
    return out


@contextlib.contextmanager
def masked_update(optimizer: torch.optim.Optimizer, model, subnet: Subnet | None) -> Iterator[None]:
    """Around `optimizer.step()`: leave the weights and AdamW moments of the subnet's dropped heads
    and units as they were (nothing to do for a subnet that keeps every head and unit). A moment the
    step creates (the optimizer's first step) is zero at a dropped slice already: its grad is zero."""
    if subnet is None or not subnet.narrow:
        yield
        return
    saved = []
    with torch.no_grad():
        for p, dim, idx in dropped_slices(model, subnet):
            state = optimizer.state.get(p, {})
            for t in (p, *(state[k] for k in ("exp_avg", "exp_avg_sq") if k in state)):
                saved.append((t, dim, idx, t.index_select(dim, idx)))
    yield
    with torch.no_grad():
        for t, dim, idx, v in saved:
            t.index_copy_(dim, idx, v)
