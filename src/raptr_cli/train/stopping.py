"""Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop; every rank after the same step.

One process reads its own flag at the end of the step. Under `accelerate launch` a scheduler may
signal only some workers, so the ranks vote once per step (`vote`, a one-float all-reduce) and
decide on the reduced value alone: all of them stop after the same step, none is left waiting in a
collective. The vote is taken before the optimizer step, so its host sync waits for the backward
only (which the grad-norm check waits for anyway), not for the optimizer's kernels; a signal that
lands after it counts at the next step.
"""

from __future__ import annotations

import signal
import time

import torch


class StopSignals:
    """Installs SIGINT/SIGTERM handlers while entered; `stop(vote())` says whether to stop now."""

    def __init__(self, world: int, device: torch.device):
        self.world, self.device = world, device
        self.signum, self._at = 0, 0.0
        self._saved: dict = {}

    def __enter__(self) -> StopSignals:
        self._saved = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)

    def on_signal(self, signum, frame) -> None:
        # One process: a second Ctrl-C aborts at once (one within a second of the first is the same
        # request delivered twice). Under a launch repeats are ignored: a scheduler may signal every
        # process while the launcher forwards its own copy, and a copy can reach the handler late
        # (Python runs handlers between bytecodes, not inside a long C call such as a CUDA sync), so
        # telling a second request from a duplicate is guesswork; the launcher's kill after its
        # shutdown timeout is the hard stop there.
        now = time.monotonic()
        if self.signum and self.world == 1 and now - self._at > 1.0:
            raise KeyboardInterrupt
        if not self.signum:
            self.signum, self._at = signum, now

    def vote(self) -> bool | None:
        """Several ranks: whether any of them has been signalled (a collective: every rank calls it
        at the same point of every step). One process: None, it decides on its own flag."""
        if self.world == 1:
            return None
        import torch.distributed as dist

        flag = torch.tensor([float(self.signum)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() != 0

    def stop(self, vote: bool | None) -> bool:
        return bool(self.signum) if vote is None else vote
