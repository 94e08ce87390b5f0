"""stacking (gradual stacking, Reddi et al. 2023): the model starts shallow and grows at each stage
start by copying its top layers; every step runs the whole current model, and the LR may re-warm
after each growth."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..stages import stage_bounds
from .base import Checks, Method

if TYPE_CHECKING:
    from ..plan import Plan
    from ..stages import Stage


def growth_sources(old_depth: int, new_depth: int) -> list[int]:
    """Stacking (Reddi et al. 2023): new layers old_depth..new_depth-1 copy, in order, the top
    new_depth - old_depth layers, i.e. source layers [2*old - new .. old - 1]."""
    start = 2 * old_depth - new_depth
    return list(range(start, old_depth))


class Stacking(Method):
    size_key = "depth"
    size_keys = ("depth",)
    full_warmup = False  # checked: the full model exists only in the last stage
    grows = True

    def check(self, c: Checks) -> None:
        self.check_stages(c)
        if c.warmup:
            c.error(f"{c.warmup_key} must be 0 for stacking: the full model exists only in the last stage")
        self.check_range(c, "stack_rewarmup_steps", lambda v: v >= 0, ">= 0")

    def check_sizes(self, ds: list[float], c: Checks) -> None:
        """Depths grow, at most doubling (new layers copy the top m - k), and end at n_layers."""
        for i in range(1, len(ds)):
            k, m = int(ds[i - 1]), int(ds[i])
            if m <= k:
                c.error(f"schedule.stages[{i}].depth = {m} does not increase on the previous stage's {k}")
            elif m > 2 * k:
                c.error(
                    f"schedule.stages[{i}].depth = {m} more than doubles the previous {k}: stacking copies "
                    f"the top {m - k} of {k} layers, so at most {2 * k}"
                )
        if ds[-1] != self.n_layers:
            c.error(f"schedule.stages[{len(ds) - 1}].depth = {int(ds[-1])} must equal model.n_layers = {self.n_layers}")

    def resolve(self, plan: Plan, warmup: int, total_steps: int, tokens_per_step: int) -> list[tuple]:
        ends, _, _ = stage_bounds(self.cfg.stages, total_steps, tokens_per_step, total_steps)
        return [(end, s.depth, 1.0, s.depth) for s, end in zip(self.cfg.stages, ends)]

    def growth(self, plan: Plan, stage: Stage, depth: int) -> int | None:
        return stage.depth if stage.depth != depth else None

    def lr_factor(self, plan: Plan, stage: Stage, step: int) -> float:
        """A linear re-warmup over schedule.stack_rewarmup_steps after each growth."""
        rw = self.cfg.stack_rewarmup_steps
        return min(1.0, (step - stage.start + 1) / rw) if rw and stage.index > 0 else 1.0
