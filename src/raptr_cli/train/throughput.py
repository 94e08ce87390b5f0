"""The loop's clock: tokens/s, TFLOP/s, data-loading share and MFU of each logged row, the run's
time counters in TrainState (elapsed_s, data_s, train_s), and the machine figures they are read
against (a GPU's peak FLOP/s, the process's peak memory).

A row's rates cover the window since the previous logged row, training time only: evals and
checkpoints run inside `paused()` and are left out of the window (elapsed_s keeps them).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import torch

from .state import TrainState


class Throughput:
    def __init__(self, state: TrainState, peak: float | None, world: int):
        """`peak`: one GPU's dense FLOP/s (None: no MFU); `world`: the processes sharing the work."""
        self.state, self.peak, self.world = state, peak, world
        self.t_start = time.perf_counter() - state.elapsed_s  # a resumed run's clock goes on
        self._window(time.perf_counter())

    def _window(self, now: float) -> None:
        self.window_t, self.tokens, self.flops, self.data = now, 0, 0.0, 0.0

    def start_step(self) -> None:
        self.step_t0 = time.perf_counter()

    def batch_ready(self) -> None:
        self.dt_data = time.perf_counter() - self.step_t0  # time the loop waited for its batch
        self.data += self.dt_data
        self.state.data_s += self.dt_data

    def count(self, tokens: int, flops: float) -> None:
        """The step's work, once its optimizer step is taken."""
        self.step_tokens, self.step_flops = tokens, flops
        self.state.tokens += tokens
        self.state.flops += flops
        self.tokens += tokens
        self.flops += flops

    def rates(self) -> dict:
        """elapsed_s and the window's rates, for a logged row; a new window starts."""
        now = time.perf_counter()
        self.state.elapsed_s = now - self.t_start
        span = max(now - self.window_t, 1e-9)
        row = {
            "elapsed_s": round(self.state.elapsed_s, 3),
            "tokens_per_s": self.tokens / span,
            "tflops_per_s": self.flops / span / 1e12,
            "data_share": self.data / span,
        }
        if self.peak:  # MFU against the dense bf16/fp32 peak of the GPU model, all ranks
            row["mfu"] = row["tflops_per_s"] * 1e12 / (self.peak * self.world)
        self._window(now)
        return row

    def at_step_start(self) -> dict:
        """The run's counters as they stood when this step began: where a stage's statistics start."""
        s = self.state
        return {
            "tokens_start": s.tokens - self.step_tokens,
            "elapsed_start": self.step_t0 - self.t_start,
            "flops_start": s.flops - self.step_flops,
            "data_start": s.data_s - self.dt_data,
            "train_start": s.train_s,
        }

    def end_step(self) -> None:
        self.state.train_s += time.perf_counter() - self.step_t0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Evals and checkpoints: left out of the throughput window."""
        t_side = time.perf_counter()
        yield
        self.window_t += time.perf_counter() - t_side


def device_peak(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of this GPU for MFU, from the datasheet table; None on CPU/unknown GPUs."""
    if device.type != "cuda":
        return None
    from ..budget import GPU_PEAKS

    words = set(re.split(r"[^a-z0-9]+", torch.cuda.get_device_name(device).lower()))
    if "nvl" in words:  # H100 NVL has its own clocks: no table entry, so no MFU rather than a wrong one
        return None
    for key in sorted(GPU_PEAKS, key=len, reverse=True):  # "h100-pcie" before "h100"
        base, *variant = key.split("-")
        # whole words only: "L40S" must not match "l4"
        if base in words and ("pcie" in words) == ("pcie" in variant):
            return GPU_PEAKS[key].get("bf16" if precision == "bf16" else "fp32", 0.0) * 1e12 or None
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
