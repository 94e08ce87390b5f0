"""raptr (Panigrahi et al. 2024): random paths whose length grows stage by stage; fixed layers always
run, the others are a uniform subset of the stage's size (sampler "subset") or each on with the
stage's keep probability ("bernoulli")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..rng import sample_subset, step_generator
from ..stages import stage_bounds
from .base import Checks, Method, bernoulli_layers

if TYPE_CHECKING:
    from ..plan import Plan
    from ..stages import Stage


class RaPTr(Method):
    size_keys = ("path_length", "keep_prob")
    default_fixed = (0, -1)  # the paper's first and last layer

    def check(self, c: Checks) -> None:
        self.check_fixed(c)
        self.check_stages(c)

    def check_sizes(self, ks: list[float], c: Checks) -> None:
        """Path lengths should grow (warning, not error) and end at the full model."""
        L = self.n_layers
        for i in range(1, len(ks)):
            if ks[i] < ks[i - 1] - 1e-9:
                c.warn(f"schedule.stages[{i}]: path length {ks[i]:g} < the previous stage's {ks[i - 1]:g}: a "
                       "decreasing schedule is PLD's direction, which the paper argues against")
        if ks[-1] < L - 1e-9:
            c.warn(f"schedule.stages[{len(ks) - 1}]: the last stage runs {ks[-1]:g} of {L} layers, so the full "
                   "model is never trained (the paper's last stage is the full model)")

    def resolve(self, plan: Plan, warmup: int, total_steps: int, tokens_per_step: int) -> list[tuple]:
        cfg, L, fixed = self.cfg, self.n_layers, plan.fixed
        n_free = L - len(fixed)
        ends, _, _ = stage_bounds(cfg.stages, total_steps, tokens_per_step, total_steps - warmup)
        rows = []
        for s, end in zip(cfg.stages, ends):
            p = s.keep_prob if s.keep_prob is not None else ((s.path_length - len(fixed)) / n_free if n_free else 1.0)
            k = s.path_length if s.path_length is not None else len(fixed) + p * n_free
            rows.append((warmup + end, round(k) if cfg.sampler == "subset" else k, p, L))
        return rows

    def active_layers(self, plan: Plan, step: int) -> list[int]:
        st = plan.stage_at(step)
        if st.keep_prob >= 1.0:
            return list(range(st.depth))
        if plan.sampler == "subset":
            return sample_subset(plan.n_layers, plan.fixed, int(round(st.path_length)), step_generator(plan.seed, step))
        return bernoulli_layers(plan, step, st.keep_prob)

    def is_random(self, plan: Plan, stage: Stage) -> bool:
        return stage.keep_prob < 1.0 and plan.sampler != "subset"  # a subset path has an exact length
