"""pld (progressive layer dropping, Zhang & He 2020): one stage spanning the run (after the optional
full-model warm-up) whose keep probabilities fall with the step, deeper layers dropped more, and
active layers scaled by 1/p."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ..rng import step_generator
from .base import Checks, Method

if TYPE_CHECKING:
    from ..plan import Plan
    from ..stages import Stage


def pld_layer_steps(n_layers: int, fixed: list[int], theta_bar: float, gamma: float, t0: int, t1: int) -> float:
    """Sum_{t0 <= t < t1} Sum_i p_i(t). With S = Sum of 1-based indices of free layers,
    Sum_i p_i(t) = L - (S / L) * (1 - theta(t))."""
    s = sum(i + 1 for i in range(n_layers) if i not in fixed)
    t = np.arange(t0, t1, dtype=np.float64)
    one_minus_theta = (1 - theta_bar) * (1 - np.exp(-gamma * t))
    return float(np.sum(n_layers - s / n_layers * one_minus_theta))


def solve_pld_gamma(n_layers: int, fixed: list[int], theta_bar: float, steps: int, mean_k: float) -> float:
    """The gamma whose PLD run of `steps` steps has `mean_k` expected active layers per step (bisection
    on a log scale; the mean falls monotonically in gamma). Raises ValueError when `mean_k` is out of reach."""

    def mean(g: float) -> float:
        return pld_layer_steps(n_layers, fixed, theta_bar, g, 0, steps) / steps

    lo, hi = 0.0, 1e3
    if mean_k >= mean(lo):
        return 0.0
    if mean_k < mean(hi):
        raise ValueError(f"{mean(hi):.3f}")
    lo = 1e-9
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if mean(mid) > mean_k else (lo, mid)
    return math.sqrt(lo * hi)


class PLD(Method):
    default_fixed = ()  # as in Zhang & He 2020

    def check(self, c: Checks) -> None:
        cfg, L = self.cfg, self.n_layers
        self.check_fixed(c)
        self.check_no_stages(c)
        self.check_range(c, "pld_theta_bar", lambda v: 0 < v <= 1, "in (0, 1]")
        self.check_range(c, "pld_gamma", lambda v: v >= 0, ">= 0")
        if cfg.pld_match_path_lengths:
            if cfg.pld_gamma != 0.001:
                c.error(
                    f"schedule.pld_gamma = {cfg.pld_gamma} and schedule.pld_match_path_lengths: give one "
                    "(matching solves gamma; drop pld_gamma)"
                )
            for j, k in enumerate(cfg.pld_match_path_lengths):
                if not 1 <= k <= L:
                    c.error(f"schedule.pld_match_path_lengths[{j}] = {k} must lie between 1 and model.n_layers = {L}")

    def resolve(self, plan: Plan, warmup: int, total_steps: int, tokens_per_step: int) -> list[tuple]:
        """Sets the plan's gamma (solved when matching raptr path lengths) and the decay's first step."""
        cfg, L, fixed = self.cfg, self.n_layers, plan.fixed
        if cfg.pld_match_path_lengths:
            k_bar = sum(cfg.pld_match_path_lengths) / len(cfg.pld_match_path_lengths)
            try:
                plan.pld_gamma = solve_pld_gamma(L, fixed, cfg.pld_theta_bar, total_steps - warmup, k_bar)
            except ValueError as e:
                raise UserError(
                    f"schedule.pld_match_path_lengths: PLD cannot average {k_bar:g} layers per step",
                    hint=f"With pld_theta_bar = {cfg.pld_theta_bar} its least mean is {e} layers; "
                    "lower pld_theta_bar or match longer paths.",
                ) from None
        plan.pld_start = warmup
        span = total_steps - warmup
        mean_k = pld_layer_steps(L, fixed, cfg.pld_theta_bar, plan.pld_gamma, 0, span) / span
        n_free = L - len(fixed)
        return [(total_steps, mean_k, (mean_k - len(fixed)) / n_free if n_free else 1.0, L)]

    def _dropping(self, plan: Plan, step: int) -> bool:
        return step >= plan.pld_start

    def keep_probs(self, plan: Plan, step: int) -> list[float]:
        if not self._dropping(plan, step):
            return super().keep_probs(plan, step)
        # Zhang & He 2020: theta(t) = (1-theta_bar) e^{-gamma t} + theta_bar; layer i (1-based)
        # kept with prob 1 - (i/L)(1 - theta(t)): deeper layers are dropped more.
        st, L = plan.stage_at(step), plan.n_layers
        theta = (1 - plan.pld_theta_bar) * math.exp(-plan.pld_gamma * (step - plan.pld_start)) + plan.pld_theta_bar
        return [1.0 if i in plan.fixed else 1 - (i + 1) / L * (1 - theta) for i in range(st.depth)]

    def active_layers(self, plan: Plan, step: int) -> list[int]:
        if not self._dropping(plan, step):
            return list(range(plan.stage_at(step).depth))  # the full-model warm-up
        import torch

        u = torch.rand(plan.stage_at(step).depth, generator=step_generator(plan.seed, step), dtype=torch.float64)
        return [i for i, (x, p) in enumerate(zip(u.tolist(), self.keep_probs(plan, step))) if x < p]

    def layer_scales(self, plan: Plan, step: int, layers: list[int], mode: str | None = None) -> list[float]:
        """Always 1/p while dropping, as PLD publishes it."""
        return super().layer_scales(plan, step, layers, "inverse_p" if self._dropping(plan, step) else mode)

    def expected_active(self, plan: Plan, step: int) -> float:
        return (
            float(sum(self.keep_probs(plan, step)))
            if self._dropping(plan, step)
            else super().expected_active(plan, step)
        )

    def expected_layer_steps(self, plan: Plan, stage: Stage) -> float:
        """Closed over numpy: theta changes every step."""
        if stage.start < plan.pld_start:
            return super().expected_layer_steps(plan, stage)
        return pld_layer_steps(
            plan.n_layers,
            plan.fixed,
            plan.pld_theta_bar,
            plan.pld_gamma,
            stage.start - plan.pld_start,
            stage.end - plan.pld_start,
        )

    def is_random(self, plan: Plan, stage: Stage) -> bool:
        return stage.keep_prob < 1.0

    def notes(self, plan: Plan) -> list[str]:
        L = plan.n_layers
        return [
            f"PLD theta(t) = {1 - plan.pld_theta_bar:g} exp(-{plan.pld_gamma:.6g} t) + {plan.pld_theta_bar:g}, "
            f"t from step {plan.pld_start}; layer i of {L} kept with p = 1 - (i/{L})(1 - theta)"
        ]
