"""stochastic_depth (Huang et al. 2016): one constant keep probability for every free layer over the
whole run, given or solved to match the FLOPs of equal raptr stages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Checks, Method, bernoulli_layers

if TYPE_CHECKING:
    from ..plan import Plan
    from ..stages import Stage


class StochasticDepth(Method):
    default_fixed = (0, -1)

    def check(self, c: Checks) -> None:
        self.check_fixed(c)
        self.check_no_stages(c, "; for staged keep probs use method 'raptr' with sampler 'bernoulli'")
        self.check_range(c, "sd_keep_prob", lambda v: 0 < v <= 1, "in (0, 1]")
        p, ks, n_fixed = self.cfg.sd_keep_prob, self.cfg.sd_match_path_lengths, len(self.fixed)
        if (p is None) == (not ks):
            c.error(
                "schedule.sd_keep_prob and schedule.sd_match_path_lengths: give exactly one (a keep prob, "
                "or the raptr path lengths whose FLOPs to match, e.g. [6, 8, 10, 12])"
            )
        for j, k in enumerate(ks):
            if not n_fixed <= k <= self.n_layers:
                c.error(
                    f"schedule.sd_match_path_lengths[{j}] = {k} must lie between the {n_fixed} fixed "
                    f"layers and model.n_layers = {self.n_layers}"
                )

    def resolve(self, plan: Plan, warmup: int, total_steps: int, tokens_per_step: int) -> list[tuple]:
        """k_bar = |I| + p (L - |I|): p as given, or solved with k_bar the mean of equal raptr stages."""
        n_fixed = len(plan.fixed)
        n_free = self.n_layers - n_fixed
        p = self.cfg.sd_keep_prob
        if p is None:
            k_bar = sum(self.cfg.sd_match_path_lengths) / len(self.cfg.sd_match_path_lengths)
            p = (k_bar - n_fixed) / n_free if n_free else 1.0
        return [(total_steps, n_fixed + p * n_free, p, self.n_layers)]

    def active_layers(self, plan: Plan, step: int) -> list[int]:
        st = plan.stage_at(step)
        return list(range(st.depth)) if st.keep_prob >= 1.0 else bernoulli_layers(plan, step, st.keep_prob)

    def is_random(self, plan: Plan, stage: Stage) -> bool:
        return stage.keep_prob < 1.0
