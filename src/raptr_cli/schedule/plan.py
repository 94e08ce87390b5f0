"""The resolved schedule of a run: `build_plan` checks the `[schedule]` section against the model and
run length and turns it into a `Plan` (stage boundaries plus "which subnetwork runs at step t", a pure
function of (seed, step)); each question goes to the plan's Method."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from ..errors import UserError
from ..subnet import Subnet
from .config import ScheduleConfig, method_class
from .stages import LENGTH_KEYS, SIZE_KEYS, WIDTH_KEYS, Stage, stage_ends, stage_length


@dataclass
class Plan:
    """The resolved schedule: stage boundaries plus the per-step path sampler."""

    method: str
    """The `schedule.method` name, as logged."""
    rule: Any
    """The `methods.base.Method` that resolved this plan and answers its per-step questions (typed Any:
    the methods import this module)."""
    n_layers: int
    stages: list[Stage]
    fixed: list[int]
    seed: int
    sampler: str = "subset"
    scale: str = "none"
    pld_theta_bar: float = 0.5
    pld_gamma: float = 0.001
    pld_start: int = 0
    """pld: first step of the layer-dropping stage; theta(t) counts t from here."""
    n_heads: int = 0
    """Attention heads per block (what width stages draw from; 0 = not given, no width stages)."""
    n_units: int = 0
    """MLP intermediate units per block."""
    width_scale: str = "none"
    warnings: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end

    @property
    def size_key(self) -> str:
        """The stage column that holds its layer count: "path_length", or "depth" for a growing method."""
        return self.rule.size_key

    def stage_at(self, step: int) -> Stage:
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the plan's [0, {self.total_steps})")
        return self.stages[bisect.bisect_right([s.start for s in self.stages], step) - 1]

    def is_random(self, stage: Stage) -> bool:
        """Whether the stage's layer count is an expectation (subset paths have an exact count)."""
        return self.rule.is_random(self, stage)

    def keep_probs(self, step: int) -> list[float]:
        """Keep probability of each layer of the current depth (fixed layers 1.0)."""
        return self.rule.keep_probs(self, step)

    def active_layers(self, step: int) -> list[int]:
        """Ascending indices of the layers that run at `step`; a pure function of (seed, step)."""
        return self.rule.active_layers(self, step)

    def layer_scales(self, step: int, layers: list[int]) -> list[float]:
        """Training-time output scale s_i of each listed layer (see Method.layer_scales)."""
        return self.rule.layer_scales(self, step, layers)

    @property
    def narrow(self) -> bool:
        """Whether some stage drops attention heads or MLP units."""
        return any(s.narrow for s in self.stages)

    def subnet(self, step: int) -> Subnet:
        """The subnetwork of `step`: its layers (None when every layer of the current depth runs),
        their scales (None when all are 1.0), and each one's heads and MLP units (None = all)."""
        layers = self.active_layers(step)
        scales = self.layer_scales(step, layers)
        heads, units = self.rule.parts(self, step, layers)
        return Subnet(
            None if len(layers) == self.stage_at(step).depth else tuple(layers),
            None if all(s == 1.0 for s in scales) else tuple(scales),
            heads,
            units,
            self.width_scale if heads is not None or units is not None else "none",
        )

    def notes(self) -> list[str]:
        """Resolved schedule values worth showing next to the stage table (PLD's decay)."""
        return self.rule.notes(self)

    def expected_active(self, step: int) -> float:
        return self.rule.expected_active(self, step)

    def expected_layer_steps(self, stage: Stage) -> float:
        """Sum over the stage's steps of the expected active layer count (its cost in layer-steps)."""
        return self.rule.expected_layer_steps(self, stage)

    def growth(self, step: int, depth: int) -> int | None:
        """The depth a `depth`-layer model must grow to before `step` (stacking's stage start), or None."""
        return self.rule.growth(self, self.stage_at(step), depth)

    def lr_factor(self, step: int) -> float:
        """The method's factor on the recipe's LR schedule at `step` (stacking's re-warmup; else 1.0)."""
        return self.rule.lr_factor(self, self.stage_at(step), step)


def build_plan(
    cfg: ScheduleConfig,
    n_layers: int,
    total_steps: int,
    tokens_per_step: int,
    seed: int,
    widths: tuple[int, int] | None = None,
) -> Plan:
    """Validate `cfg` (every problem at once, as a UserError) and resolve it into a Plan. `widths` =
    the model's (num_heads, intermediate_size); a schedule with width stages needs them."""
    errors, warnings = cfg.problems(n_layers, total_steps, tokens_per_step, widths)
    if not errors and widths is None and any(getattr(s, k) is not None for s in cfg.stages for k in WIDTH_KEYS):
        errors = [
            "schedule.stages: heads_fraction / mlp_fraction need the model's num_heads and "
            "intermediate_size (build_plan(..., widths=...))"
        ]
    if errors:
        raise UserError(
            f"the [schedule] section has {len(errors)} problem(s)",
            problems=errors,
            hint="Fix the keys named above; --set schedule.KEY=VALUE overrides one.",
        )
    rule, L = method_class(cfg.method)(cfg, n_layers, widths), n_layers
    w = rule.warmup_steps(cfg, total_steps)
    n_heads, n_units = widths or (0, 0)
    plan = Plan(
        cfg.method,
        rule,
        L,
        [],
        rule.fixed,
        seed,
        cfg.sampler,
        cfg.scale,
        cfg.pld_theta_bar,
        cfg.pld_gamma,
        n_heads=n_heads,
        n_units=n_units,
        width_scale=cfg.width_scale,
        warnings=warnings,
    )
    stages = [Stage(0, 0, w, float(L), 1.0, L)] if w else []
    for end, k, p, depth, *width in rule.resolve(plan, w, total_steps, tokens_per_step):
        start = stages[-1].end if stages else 0
        stages.append(Stage(len(stages), start, end, float(k), float(p), depth, *map(float, width)))
    plan.stages = stages
    return plan


def describe(plan: Plan) -> list[dict]:
    """One row per stage for tables and JSON: index, start, end, steps, path_length (or depth for
    stacking), keep_prob, and `expected` (True where the layer count is an expectation); a plan with
    width stages adds heads_fraction and mlp_fraction to every row."""
    size, narrow = plan.size_key, plan.narrow
    return [
        {
            "index": s.index,
            "start": s.start,
            "end": s.end,
            "steps": s.steps,
            size: getattr(s, size),
            "keep_prob": s.keep_prob,
            "expected": plan.is_random(s),
            **({"heads_fraction": s.heads_fraction, "mlp_fraction": s.mlp_fraction} if narrow else {}),
        }
        for s in plan.stages
    ]


def rescaled_schedule(cfg: ScheduleConfig, total_steps: int, tokens_per_step: int, new_steps: int) -> dict:
    """The [schedule] keys that give a `new_steps` run the stage proportions of this `total_steps` one.

    The warm-up keeps its share of the run and each stage its share of the staged span; keys given as
    fractions rescale by themselves and are left out. A stage in steps or tokens makes every stage a
    `steps` entry: the cumulative boundaries scaled and rounded by `stage_ends` over the staged span
    build_plan will compute at `new_steps`: a warm-up fraction is rounded at `new_steps` (also where
    it rounded to 0 steps at `total_steps`). Call it on a schedule that validated for `total_steps`."""
    out: dict = {}
    M = method_class(cfg.method)
    w = M.warmup_steps(cfg, total_steps)
    if cfg.full_warmup_fraction is not None:
        new_w = M.warmup_steps(cfg, new_steps)
    elif w:
        new_w = out["full_warmup_steps"] = int(round(w * new_steps / total_steps))
    else:
        new_w = 0
    stages = cfg.stages if M.size_keys else []
    keys = [next(k for k in LENGTH_KEYS if getattr(s, k) is not None) for s in stages]
    if all(k == "fraction" for k in keys):
        return out
    available, new_available = total_steps - w, new_steps - new_w
    cums = accumulate(stage_length(s, k, available, tokens_per_step) for s, k in zip(stages, keys))
    ends = stage_ends([c * new_available / available for c in cums], new_available)
    out["stages"] = [
        {"steps": end - start, **{k: getattr(s, k) for k in SIZE_KEYS + WIDTH_KEYS if getattr(s, k) is not None}}
        for s, start, end in zip(stages, [0, *ends], ends)
    ]
    return out
