"""The plan of a run before it starts: stages, tokens, FLOPs, parameters, memory (for --dry-run,
the start of every run, and `raptr flops`). Import-light: torch only when a meta model is asked for."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .errors import UserError
from .flops import Dims, plan_flops
from .models import resolve_model_config
from .models.registry import objective_spec_for, spec_of
from .recipe import Recipe
from .schedule import build_plan, describe


def recipe_vocab_size(recipe: Recipe) -> int:
    """Vocabulary size without tokenising: from tokenizer.path's JSON, else the size to train."""
    t = recipe.tokenizer
    if not t.path:
        return t.vocab_size
    path = Path(t.path) if Path(t.path).is_absolute() else recipe.base_dir / t.path
    try:
        vocab = json.loads(path.read_text())["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"tokenizer.path: cannot read a vocabulary from {path} ({e})",
            hint="Point it at a tokenizers tokenizer.json.",
        ) from None
    return len(vocab)


def param_count(cfg) -> dict[str, int]:
    """{"total", "non_embedding", "per_layer"} of an architecture config, from its registry entry."""
    return spec_of(cfg).param_count(cfg)


def model_dims(cfg, seq_len: int) -> Dims:
    return spec_of(cfg).dims(cfg, seq_len)


def head_fraction(recipe: Recipe) -> float:
    """Share of positions the output head runs on, as the recipe's objective expects it (the
    masking rate for MLM; the mixture's expected target share for UL2)."""
    return objective_spec_for(recipe).head_fraction(recipe.objective)


def env_flag(name: str, default: str = "false") -> bool:
    """A boolean setting from the environment, as accelerate's launcher writes them."""
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD", "5": "HYBRID_SHARD_ZERO2"}


def fsdp_options() -> dict:
    """The accelerate FSDP settings raptr honours (from the launcher's environment); unsupported
    ones are a UserError."""
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").strip().upper()
    strategy = STRATEGIES.get(strategy, strategy)
    reshard_env = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "").strip().upper()
    if reshard_env in STRATEGIES.values():  # an FSDP1-style config stores the strategy's name there
        strategy, reshard_env = reshard_env, ""
    problems = []
    if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        problems.append(
            f"sharding strategy {strategy} (raptr supports FULL_SHARD and SHARD_GRAD_OP; "
            "for no sharding launch with --multi_gpu instead)"
        )
    if env_flag("FSDP_OFFLOAD_PARAMS"):
        problems.append("parameter offloading to CPU (fsdp_offload_params)")
    if env_flag("FSDP_ACTIVATION_CHECKPOINTING"):
        problems.append("activation checkpointing (fsdp_activation_checkpointing)")
    if problems:
        raise UserError(
            "the accelerate FSDP configuration asks for what raptr does not support",
            hint="Change these settings in `accelerate config` (or the launch flags) and launch again.",
            problems=problems,
        )
    reshard = strategy == "FULL_SHARD"
    if reshard_env and strategy == "FULL_SHARD":
        reshard = env_flag("FSDP_RESHARD_AFTER_FORWARD", "true")
    return {"reshard_after_forward": reshard}


SINGLE = {"processes": 1, "rank": 0, "sharded": False, "reshard_after_forward": True}


def launch_layout() -> dict:
    """How the launch this process belongs to splits the run: `accelerate launch` sets RANK,
    WORLD_SIZE and, with --use_fsdp, ACCELERATE_USE_FSDP and the FSDP options (validated here, so
    a dry run under the launcher refuses what training would). Outside a launch (no RANK):
    SINGLE, whatever else the shell exports."""
    try:
        rank, processes = int(os.environ["RANK"]), max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except (KeyError, ValueError):
        return dict(SINGLE)
    sharded = processes > 1 and env_flag("ACCELERATE_USE_FSDP")
    reshard = fsdp_options()["reshard_after_forward"] if sharded else True
    return {"processes": processes, "rank": rank, "sharded": sharded, "reshard_after_forward": reshard}


def effective_precision(precision: str, cuda: bool) -> str:
    """The recipe's train.precision with "auto" resolved: bf16 autocast on GPUs, fp32 on CPUs."""
    return precision if precision != "auto" else ("bf16" if cuda else "fp32")


def memory_estimate(recipe: Recipe, cfg, params: int, bf16: bool, layout: dict = SINGLE) -> dict:
    """Rough training memory of ONE process in GiB (allocator slack, the CUDA context and
    kernels' workspaces come on top), the larger of two moments of a step:
    - forward/backward: fp32 weights + grads + AdamW moments, 16 B/param (split over the processes
      when sharded, plus the units gathered to compute: the root unit with the embeddings and head
      and its unsharded gradient, and two blocks with theirs, or every block when parameters stay
      gathered between forward and backward), and the activations of one micro-batch (at most this
      rank's share of the global batch) over the full path, ~34 h bytes-per-half-precision-value
      per token per layer (Korthikanti et al. 2022, flash attention assumed; doubled for fp32);
    - the gradient all-reduce of a replicated launch: the state plus its flat 4 B/param buffer,
      after the activations are freed."""
    t = recipe.train
    n, sharded = layout["processes"], layout["sharded"]
    per_rank = max(1, t.batch_size // n)
    micro = min(t.micro_batch_size or per_rank, per_rank)  # as forward_backward chunks it
    act_bytes = 34 * cfg.hidden_size * t.seq_len * micro * cfg.num_layers * (1 if bf16 else 2)
    transient = 0.0
    if sharded:
        block = param_count(cfg)["per_layer"]
        root = params - cfg.num_layers * block
        gathered = 2 if layout["reshard_after_forward"] else cfg.num_layers
        state_bytes = 16 * params / n + 8 * root + 4 * gathered * block + 4 * 2 * block
    else:
        state_bytes = 16 * params
        transient = 4 * params if n > 1 else 0.0
    gib = 1024**3
    return {
        "weights_optimizer_gib": state_bytes / gib,
        "activations_gib": act_bytes / gib,
        "total_gib": (state_bytes + max(act_bytes, transient)) / gib,
        "processes": n,
        "sharded": sharded,
        "micro_batch": micro,
        "precision": "bf16" if bf16 else "fp32",
    }


# Host bytes per token of the global batch while it is built (every process builds all of it, then
# keeps its rows): int32 rows, int64 ids, labels and random replacements, two float32 draws and the
# boolean masks of masking (objectives/mlm.py), with the temporaries of torch.where.
HOST_BATCH_BYTES_PER_TOKEN = 64


def device_memory() -> tuple[float, str] | None:
    """(GiB one process may use, what that is): the total memory of this process's GPU (LOCAL_RANK
    under a launch), else the host's physical RAM shared by the processes launched on it; None
    when neither can be read. Total, not free: a check must not flip with what else runs."""
    gib = 1024**3
    import torch

    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count()
        props = torch.cuda.get_device_properties(index)
        return props.total_memory / gib, f"GPU {index} ({props.name})"
    return host_memory()


def host_memory() -> tuple[float, str] | None:
    """(GiB of physical RAM per process launched on this host, a label), or None if unreadable."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX
        try:
            import psutil
        except ImportError:
            return None
        ram = psutil.virtual_memory().total
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return ram / 1024**3 / local, "RAM" + (f" (1/{local} per process)" if local > 1 else "")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def check_memory(
    recipe: Recipe,
    layout: dict = SINGLE,
    precision: str = "fp32",
    device: tuple[float, str] | None = None,
    host: tuple[float, str] | None = None,
) -> None:
    """Refuse (UserError) a run whose memory_estimate exceeds `device` (device_memory(): where the
    model state and activations live) or whose global batch exceeds `host` (host_memory(): the
    RAM batches are built in; on CPU the same memory, so both add up), naming the estimate, the
    memory and a micro-batch that would fit. Nothing to check when `device` is None."""
    if device is None:
        return
    try:
        vocab = recipe_vocab_size(recipe)
    except UserError:  # a bad tokenizer.path is reported by the data pipeline, in its own words
        vocab = recipe.tokenizer.vocab_size
    cfg = resolve_model_config(recipe.model, vocab, recipe.train.seq_len)
    params, bf16 = param_count(cfg)["total"], precision == "bf16"
    t = recipe.train
    batch_gib = t.batch_size * t.seq_len * HOST_BATCH_BYTES_PER_TOKEN / 1024**3
    on_host = host is None or device[1] == host[1]  # CPU: the host batch lives in the same RAM
    extra = batch_gib if on_host else 0.0

    def need(micro: int) -> dict:
        return memory_estimate(
            dataclasses.replace(recipe, train=dataclasses.replace(t, micro_batch_size=micro)), cfg, params, bf16, layout
        )

    mem = need(t.micro_batch_size)
    host_short = not on_host and batch_gib > host[0]
    if mem["total_gib"] + extra <= device[0] and not host_short:
        return
    override = "--ignore-memory-check starts it anyway (the estimate is rough)"
    if host_short or extra > device[0]:  # the batch itself does not fit: no micro-batch helps
        where = host if host_short else device
        raise UserError(
            f"one batch of train.batch_size = {t.batch_size} x train.seq_len = {t.seq_len} takes ~{_size(batch_gib)} "
            f"of host memory to build, but {where[1]} has {_size(where[0])}",
            hint=f"Lower train.batch_size (--set train.batch_size=N); {override}.",
        )
    # the suggestion keeps 10% headroom for what the estimate leaves out (allocator slack, CUDA
    # context, kernel workspaces); micro-batches divide this process's share of the batch
    per_rank = max(1, t.batch_size // layout["processes"])
    fits = next((m for m in reversed(_divisors(per_rank)) if need(m)["total_gib"] + extra <= 0.9 * device[0]), None)
    if fits is not None:
        fix = (
            f"Use --set train.micro_batch_size={fits} (gradient accumulation: the same optimizer step in "
            "smaller forward/backward chunks)"
        )
    else:
        fix = "No micro-batch fits, not even 1 sequence per forward/backward: choose a smaller model" + (
            "" if layout["sharded"] else " or shard it over GPUs (accelerate launch --use_fsdp)"
        )
    raise UserError(
        f"the run needs ~{_size(mem['total_gib'] + extra)}{_layout_note(mem)} but {device[1]} has {_size(device[0])}",
        problems=[
            f"model state and AdamW moments: {_size(mem['weights_optimizer_gib'])}",
            f"activations of a micro-batch of {mem['micro_batch']} sequences: {_size(mem['activations_gib'])}",
        ]
        + ([f"building the batch on the host: {_size(batch_gib)}"] if on_host else []),
        hint=f"{fix}; {override}.",
    )


def _size(gib: float) -> str:
    for unit, scale in (("GiB", 1), ("MiB", 1024), ("KiB", 1024**2)):
        if gib * scale >= 1 or unit == "KiB":
            return f"{gib * scale:,.1f} {unit}"


def _layout_note(mem: dict) -> str:
    n = mem["processes"]
    return f" ({mem['precision']}" + (f", per process of {n}" if n > 1 else "") + ")"


def describe_run(
    recipe: Recipe,
    vocab_size: int | None = None,
    meta_model: bool = False,
    layout: dict = SINGLE,
    precision: str | None = None,
) -> dict:
    """Everything a user should know before spending compute, as a JSON-able dict. The memory
    figure is per process of `layout` (launch_layout(), or the trainer's) at `precision` (the
    recipe's when None, "auto" counted as fp32 without a device to resolve it)."""
    vocab = vocab_size or recipe_vocab_size(recipe)
    cfg = resolve_model_config(recipe.model, vocab, recipe.train.seq_len)
    t = recipe.train
    plan = build_plan(
        recipe.schedule,
        cfg.num_layers,
        t.steps,
        recipe.tokens_per_step,
        recipe.run.seed,
        (cfg.num_heads, cfg.intermediate_size),
    )
    pc = param_count(cfg)
    if meta_model:  # build for real on the meta device: catches config errors the formula cannot
        import torch

        from .models import build_model

        with torch.device("meta"):
            model = build_model(cfg)
        pc["total"] = sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights
    fl = plan_flops(plan, model_dims(cfg, t.seq_len), recipe.tokens_per_step, head_fraction(recipe))
    stages = describe(plan)
    for row, f in zip(stages, fl["stages"]):
        row.update(
            tokens=f["tokens"], flops=f["flops"], flops_layers=f["flops_layers"], share=f["flops"] / fl["total_flops"]
        )
    return {
        "run": recipe.run.name,
        "method": plan.method,
        "arch": recipe.model.arch,
        "model": {
            "n_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.num_heads,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": vocab,
            "norm": getattr(cfg, "norm", "pre-rms"),
        },
        "head_fraction": head_fraction(recipe),
        "params": pc["total"],
        "params_non_embedding": pc["non_embedding"],
        "steps": t.steps,
        "batch_size": t.batch_size,
        "seq_len": t.seq_len,
        "tokens": t.steps * recipe.tokens_per_step,
        "flops_per_token_full": fl["flops_per_token_full"],
        "stages": stages,
        "total_flops": fl["total_flops"],
        "baseline_flops": fl["baseline_flops"],
        "ratio": fl["ratio"],
        "speedup": fl["speedup"],
        "layers_only": fl["layers_only"],
        "memory": memory_estimate(recipe, cfg, pc["total"], (precision or t.precision) == "bf16", layout),
        "fixed_layers": plan.fixed,
        "sampler": plan.sampler,
        "scale": plan.scale,
        "schedule_notes": plan.notes(),
        "warnings": list(recipe.warnings),
    }
