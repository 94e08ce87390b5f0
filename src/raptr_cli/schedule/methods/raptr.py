"""raptr (Panigrahi et al. 2024): random paths whose length grows stage by stage; fixed layers always
run, the others are a uniform subset of the stage's size (sampler "subset") or each on with the
stage's keep probability ("bernoulli").

Random Part Training (the paper's second version) adds width: a stage's heads_fraction and
mlp_fraction keep, per step and per active block, a uniform subset of its attention heads and MLP
intermediate units (drawn per (seed, step, block)); a stage with only width keys runs every layer.
The dropped parts are not computed (the models slice the weights). Optimizer semantics: a dropped
slice gets no update at all - its weights and AdamW moments (exp_avg, exp_avg_sq) are restored
around the step (train/width.py), so neither the moments' decay nor weight decay touches it; AdamW's
per-parameter step count (its bias correction) still advances, as for the kept slices of the same
tensor. Width lives in this method rather than a method of its own because a stage is one
subnetwork: depth and width are two axes of the same draw, validated, resolved and costed together."""

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
    takes_width = True

    def check(self, c: Checks) -> None:
        self.check_fixed(c)
        self.check_stages(c)

    def check_sizes(self, ks: list[float], c: Checks) -> None:
        """Path lengths should grow (warning, not error) and end at the full model."""
        L = self.n_layers
        for i in range(1, len(ks)):
            if ks[i] < ks[i - 1] - 1e-9:
                c.warn(
                    f"schedule.stages[{i}]: path length {ks[i]:g} < the previous stage's {ks[i - 1]:g}: a "
                    "decreasing schedule is PLD's direction, which the paper argues against"
                )
        if ks[-1] < L - 1e-9:
            c.warn(
                f"schedule.stages[{len(ks) - 1}]: the last stage runs {ks[-1]:g} of {L} layers, so the full "
                "model is never trained (the paper's last stage is the full model)"
            )

    def resolve(self, plan: Plan, warmup: int, total_steps: int, tokens_per_step: int) -> list[tuple]:
        cfg, L, fixed = self.cfg, self.n_layers, plan.fixed
        n_free = L - len(fixed)
        ends, _, _ = stage_bounds(cfg.stages, total_steps, tokens_per_step, total_steps - warmup)
        rows = []
        for s, end in zip(cfg.stages, ends):
            path = L if s.path_length is None and s.keep_prob is None else s.path_length  # width only: all layers
            p = s.keep_prob if s.keep_prob is not None else ((path - len(fixed)) / n_free if n_free else 1.0)
            k = path if path is not None else len(fixed) + p * n_free
            width = (
                1.0 if s.heads_fraction is None else s.heads_fraction,
                1.0 if s.mlp_fraction is None else s.mlp_fraction,
            )
            rows.append((warmup + end, round(k) if cfg.sampler == "subset" else k, p, L, *width))
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
