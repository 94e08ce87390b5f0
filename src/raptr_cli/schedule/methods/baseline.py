"""baseline: the full model at every step (the reference `compare` measures savings against)."""

from __future__ import annotations

from .base import Checks, Method


class Baseline(Method):
    full_warmup = False  # every step is full already
    full_model = True

    def check(self, c: Checks) -> None:
        if c.warmup > 0:
            c.warn(f"{c.warmup_key} = {c.warmup_given} is ignored by method 'baseline' (every step is full)")
        self.check_no_stages(c)
