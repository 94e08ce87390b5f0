"""One optimizer step and one eval pass: the hot path, kept free of logging and bookkeeping.

Data-parallel design: the model is NOT wrapped in DistributedDataParallel. Every rank draws the
same layer path (a pure function of (seed, step)), so the set of parameters that received a
gradient is identical on every rank; after backward we all-reduce exactly those gradients in one
flattened buffer. Skipped layers therefore cost no communication and need no
`find_unused_parameters` graph walk, and a step never errors on unused parameters.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from ..models.common import labelled_index
from ..subnet import Subnet


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for (seed, step, stream): splitmix-style mixing so nearby steps decorrelate."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_batch(
    blocks: torch.Tensor, objective, batch_size: int, seed: int, step: int, lo: int = 0, hi: int | None = None
) -> tuple[dict, int]:
    """The inputs of optimizer step `step` (a pure function of (seed, step)): the step's rows of the
    packed blocks, masked or corrupted by the objective, cut to this rank's rows [lo, hi), and the
    number of labelled positions in the whole global batch (the loss is normalised by it)."""
    from ..data.packing import batch_indices

    rows = blocks[batch_indices(step, batch_size, len(blocks), seed)]
    batch, _ = objective.batch(rows, seed, step)
    n_global = int((batch["labels"] != -100).sum())
    return {k: v[lo:hi] for k, v in batch.items()}, n_global


def _rows(batch: dict, lo: int, hi: int, device: torch.device) -> dict:
    return {k: v[lo:hi].to(device, non_blocking=True) for k, v in batch.items()}


def forward_backward(
    model,
    batch: dict,
    n_global: int,
    micro: int,
    layers: list[int] | None,
    scales: list[float] | None,
    precision: str,
    subnet: Subnet | None = None,
) -> torch.Tensor:
    """Forward+backward over this rank's rows of `batch` in micro-batches; returns the summed loss share.
    `subnet`: the step's whole Subnet when it drops heads or units (its layers and scales are then the
    `layers` and `scales` given); None runs `layers` at `scales`.

    Each micro-batch's mean loss is weighted by its share of the *global* predicted positions, so the
    accumulated gradient is the mean over every prediction of the optimizer step, independent of
    micro-batch size and world size (exact gradient accumulation).
    """
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    n_rows = batch["input_ids"].shape[0]
    for lo in range(0, n_rows, micro):
        index = labelled_index(batch["labels"][lo : lo + micro])  # on the host batch: no device sync
        n = index.numel()
        mb = _rows(batch, lo, lo + micro, device)
        # a micro-batch without targets still runs (its loss is 0 x graph): every rank must end with
        # gradients for the same parameters, or the flat all-reduce would not line up across ranks
        with autocast(device, precision):
            path = {"subnet": subnet} if subnet is not None else {"layers": layers, "scales": scales}
            out = model(**mb, **path, label_index=index.to(device, non_blocking=True))
        loss = out.loss.float() * (n / n_global)
        loss.backward()
        total += loss.detach()
    return total


def sync_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients that exist, in one flat buffer. Same set on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum scalars over ranks (eval and logging only, never per step on the hot path)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(
    model,
    blocks: torch.Tensor,
    batch_size: int,
    n_batches: int,
    objective,
    seed: int,
    precision: str,
    rank: int = 0,
    world: int = 1,
    layers: list[int] | None = None,
    unigram: torch.Tensor | None = None,
) -> dict:
    """Mean loss and token accuracy over fixed eval batches (inputs fixed by (seed, batch index)),
    plus, for objectives with groups (UL2 denoisers), the loss of each group.

    `layers=None` runs the full model without scaling (the method's eval); a path-length eval
    passes explicit layers. `unigram` (log-probs (V,), -inf at specials; floor.py) adds the
    context-free floor at these very labels: `unigram_loss`, `loss_below_unigram`.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    names = objective.group_names
    u0 = 3 + 2 * len(names)
    sums = [0.0] * (u0 + 3)  # loss*n, correct, n, (loss*n, n) per group, then the floor's 3 sums
    n_batches = min(n_batches, max(1, len(blocks) // batch_size))
    for b in range(rank, n_batches, world):
        rows = blocks[b * batch_size : (b + 1) * batch_size]
        if len(rows) == 0:
            break
        batch, groups = objective.batch(rows, seed ^ 0x5EED, b)
        parts = (
            [(None, slice(None))]
            if groups is None
            else [(g, groups == g) for g in range(len(names)) if bool((groups == g).any())]
        )
        for g, sel in parts:
            index = labelled_index(batch["labels"][sel])
            n = index.numel()
            if n == 0:
                continue
            mb = {k: v[sel].to(device) for k, v in batch.items()}
            y = mb["labels"]
            with autocast(device, precision):
                out = model(**mb, layers=layers, label_index=index.to(device))
            loss = float(out.loss.float()) * n
            sums[0] += loss
            sums[1] += float((out.logits.argmax(-1) == y[y != -100]).sum())
            sums[2] += n
            if g is not None:
                sums[3 + 2 * g] += loss
                sums[4 + 2 * g] += n
            if unigram is not None:
                _floor_sums(sums, u0, unigram, batch["labels"][sel], out.logits, y, loss, n)
    if world > 1:
        sums = all_sum(sums, device)
    model.train(was_training)
    res = {
        "eval_loss": sums[0] / max(sums[2], 1),
        "eval_accuracy": sums[1] / max(sums[2], 1),
        "eval_tokens": int(sums[2]),
    }
    if unigram is not None:
        from ..floor import AT_FLOOR_POSITIONS, floor_fields

        res.update(floor_fields(sums[u0], sums[u0 + 1], int(sums[u0 + 2])))
        if 0 < int(sums[u0 + 2]) != res["eval_tokens"]:  # UL2: the floor leaves the marker targets out
            res[AT_FLOOR_POSITIONS] = sums[u0 + 1] / max(sums[u0 + 2], 1)
    if names:
        res["eval_loss_by_denoiser"] = {
            name: sums[3 + 2 * i] / sums[4 + 2 * i] for i, name in enumerate(names) if sums[4 + 2 * i] > 0
        }
    return res


def _floor_sums(
    sums: list[float],
    u0: int,
    unigram: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    y: torch.Tensor,
    loss_sum: float,
    n: int,
) -> None:
    """Add the unigram's and the model's summed loss, and the count, over the labels (host, B x T)
    the unigram can score (not special), to sums[u0:u0 + 3]."""
    lp = unigram[labels[labels != -100].long()]  # (n,) in the row-major order of the logits
    keep = torch.isfinite(lp)
    k = int(keep.sum())
    if k == 0:
        return
    sums[u0] += float(-lp[keep].sum())
    sums[u0 + 2] += k
    if k == n:  # every label scored (MLM): the model's sum is the loss already computed
        sums[u0 + 1] += loss_sum
    else:
        ce = torch.nn.functional.cross_entropy(logits.float(), y[y != -100], reduction="none")
        sums[u0 + 1] += float(ce[keep.to(ce.device)].sum())
