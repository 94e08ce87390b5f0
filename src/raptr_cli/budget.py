"""Compute budgets: GPU peak throughput, budget strings, and solving steps for a FLOPs budget.

Peaks are dense (no 2:4 sparsity) tensor-core figures from the vendors' datasheets, in TFLOP/s.
MFU computed against the wrong peak (e.g. a sparse figure) is the classic "104% MFU" bug, so the
table says which number it holds and `--peak` overrides it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UserError

# name -> {dtype: dense peak TFLOP/s}. Sources: NVIDIA datasheets (A100 SXM, H100 SXM, H200 SXM,
# L4, A10) and AWS's G5 page for A10G. fp32 is the non-tensor-core rate; tf32 the tensor-core one.
GPU_PEAKS: dict[str, dict[str, float]] = {
    "a100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "h100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "h100-pcie": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "h200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "l4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "a10g": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2},
    "v100": {"fp16": 125.0, "fp32": 15.7},
}


def gpu_peak(name: str, dtype: str = "bf16", override_tflops: float | None = None) -> float:
    """Dense peak FLOP/s of one GPU for `dtype` (override wins)."""
    if override_tflops is not None:
        if not (math.isfinite(override_tflops) and override_tflops > 0):
            raise UserError(f"--peak = {override_tflops}: must be a finite number > 0 of TFLOP/s")
        return override_tflops * 1e12
    key = name.lower().replace("_", "-")
    if key not in GPU_PEAKS:
        raise UserError(
            f"--gpu {name!r} is not in the peak table",
            hint=f"Use one of {', '.join(GPU_PEAKS)}, or give --peak TFLOPS.",
        )
    if dtype not in GPU_PEAKS[key]:
        raise UserError(
            f"--gpu {name} has no {dtype} peak in the table",
            hint=f"It has {', '.join(GPU_PEAKS[key])}; pass --dtype or --peak.",
        )
    return GPU_PEAKS[key][dtype] * 1e12


@dataclass
class Budget:
    flops: float | None = None  # a FLOPs budget
    gpu_hours: float | None = None  # or GPU-hours (needs a GPU peak and an MFU)


_GPU_H = re.compile(r"^\s*([0-9.eE+]+)\s*gpu[-_ ]?h(ours?)?\s*$", re.I)


def parse_budget(text: str) -> Budget:
    """'3e18' -> FLOPs; '200gpu-h' / '200 gpu-hours' -> GPU-hours."""
    m = _GPU_H.match(text)
    try:
        if m:
            b = Budget(gpu_hours=float(m.group(1)))
        else:
            b = Budget(flops=float(text))
    except ValueError:
        b = None
    value = None if b is None else (b.flops if b.flops is not None else b.gpu_hours)
    if value is None or not math.isfinite(value) or value <= 0:  # nan, inf and 1e400 parse as floats
        raise UserError(
            f"--budget {text!r} is not a budget (a finite number > 0 of FLOPs or GPU-hours)",
            hint="Give FLOPs (--budget 3e18) or GPU-hours (--budget 200gpu-h --gpu h100 --mfu 0.4).",
        )
    return b


def budget_flops(b: Budget, peak: float | None, mfu: float) -> float:
    """FLOPs a budget buys: as given, or GPU-hours x 3600 x peak x MFU (GPU-hours count every GPU)."""
    if b.flops is not None:
        return b.flops
    if peak is None:
        raise UserError(
            "--budget in GPU-hours needs --gpu NAME (or --peak TFLOPS)",
            hint="e.g. --budget 200gpu-h --gpu h100 --mfu 0.4",
        )
    return b.gpu_hours * 3600.0 * peak * mfu


def solve_steps(total_flops_now: float, steps_now: int, target_flops: float) -> int:
    """Steps that give `target_flops` keeping the recipe's stage proportions.

    Every stage's FLOPs scale linearly with its step count, and proportions are kept, so total
    FLOPs are linear in the total step count."""
    return max(1, int(round(steps_now * target_flops / total_flops_now)))


def hours(flops: float, peak: float, mfu: float, n_gpus: int = 1) -> float:
    """Wall-clock hours for `flops` on `n_gpus` GPUs at `mfu` of `peak`."""
    return flops / (peak * mfu * n_gpus) / 3600.0
