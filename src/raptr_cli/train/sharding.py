"""Sharded data parallelism (FSDP2) when the run is launched with accelerate's FSDP config.

`accelerate launch --use_fsdp ...` (or a config file with `distributed_type: FSDP`) tells every
process through environment variables. raptr then shards the model itself instead of letting
`accelerator.prepare` wrap it, because the wrapping must follow the layer structure RaPTr skips:
each block is its own `fully_shard` unit, and the embeddings and head belong to the root unit. A
block that a step skips is never all-gathered and gets no gradient, on every rank alike (every
rank draws the same path), so skipped layers cost neither compute nor communication here either.

Gradients are reduce-scattered as sums (the trainer weights each rank's loss by its share of the
global prediction count, exactly as in the replicated mode), parameters, gradients and AdamW state
are sharded over the ranks. Checkpoints and the final model are gathered to full tensors on rank 0
and written in the same formats as unsharded runs, so `raptr eval`, `export` and the transformers
round trip do not care how a run was trained; a sharded run resumes only sharded, with the same
number of processes.

Of accelerate's FSDP options raptr honours the resharding choice (`--fsdp_reshard_after_forward`,
or `--fsdp_sharding_strategy SHARD_GRAD_OP` for "keep parameters gathered between forward and
backward"); the wrapping policy is always per block (the options for it are ignored) and
parameter offloading, activation checkpointing and hybrid sharding are refused with a clear error.
"""

from __future__ import annotations

import torch
from torch import nn

from ..planning import env_flag


def fsdp_requested(accelerator=None) -> bool:
    """True when accelerate was told to use FSDP (its launcher sets ACCELERATE_USE_FSDP)."""
    if env_flag("ACCELERATE_USE_FSDP"):
        return True
    dt = getattr(accelerator, "distributed_type", None)
    return getattr(dt, "value", str(dt)).upper() == "FSDP"


def shard_model(model: nn.Module, device: torch.device, reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard every block, then the root (embeddings, final norm, head); sums gradients."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    # each rank's loss is already weighted by its share of the global prediction count, so the
    # gradient of the global mean is the SUM over ranks (FSDP divides by the world size by default);
    # a plain SUM reduce-scatter, since Gloo has no pre-multiplied sum
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            if hasattr(m, "set_force_sum_reduction_for_comms"):  # torch >= 2.8
                m.set_force_sum_reduction_for_comms(True)
    return model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """Full (unsharded) model and optimizer state dicts on rank 0, on the CPU; empty elsewhere.
    A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_full_state(
    model: nn.Module,
    model_state: dict,
    optimizer: torch.optim.Optimizer | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """Shard full state dicts (present on every rank) into the sharded model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=opts)
