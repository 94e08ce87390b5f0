"""The `[schedule]` section as recipe.py reads it: which layers train at each step. The fields are the
TOML schema; what they mean for each method, and which of them a method checks, lives in methods/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS: dict[str, Any] = {}
"""The registry of schedule methods, name -> `methods.base.Method` subclass, filled by `methods/__init__.py`
(one line per method). It lives here, with the section that names a method, so that the config, the plan
and the methods import each other in one direction only (methods -> plan -> config)."""


def method_class(name: str) -> Any:
    """The Method class registered as `name` (a validated recipe always names one)."""
    return METHODS[name]


@dataclass
class StageConfig:
    """One `[[schedule.stages]]` table: exactly one length key and one size key."""

    steps: int | None = None
    """Stage length in optimizer steps."""
    fraction: float | None = None
    """Or: stage length as a fraction of the staged steps (train.steps minus the full-model warm-up; 0 < fraction <= 1)."""
    tokens: int | None = None
    """Or: stage length in tokens; steps = tokens / tokens_per_step (rounded, with a warning)."""
    path_length: int | None = None
    """raptr: number of active layers, fixed layers included (expected count for bernoulli)."""
    keep_prob: float | None = None
    """raptr: keep probability p of each non-fixed layer (instead of path_length)."""
    depth: int | None = None
    """stacking: model depth during this stage."""
    heads_fraction: float | None = None
    """raptr: share of each active block's attention heads drawn per step (0 < f <= 1, heads * f whole;
    None = all). With no size key the stage runs every layer (width only)."""
    mlp_fraction: float | None = None
    """raptr: share of each active block's MLP intermediate units drawn per step (as heads_fraction)."""


@dataclass
class ScheduleConfig:
    """The `[schedule]` section: which layers train at each step."""

    method: str = "baseline"
    """"baseline" | "raptr" | "stacking" | "pld" | "stochastic_depth"."""
    stages: list[StageConfig] = field(default_factory=list)
    """raptr and stacking stages, in order; their lengths add up to train.steps minus the full-model warm-up."""
    fixed_layers: list[int] | None = None
    """Always-on layers, 0-based, negatives from the end. None = method default: [0, -1] (the paper's
    first and last) for raptr/stochastic_depth, [] for pld (as in Zhang & He 2020)."""
    sampler: str = "subset"
    """raptr: "subset" (exactly k - |fixed| free layers, uniformly) | "bernoulli" (each free layer on with p)."""
    scale: str = "none"
    """Train-time scale of active free layers (OPEN): "none" | "inverse_p" | "sqrt_inverse_p"; pld: 1/p."""
    width_scale: str = "none"
    """raptr width stages: output scale of the kept heads and units, "none" | "inverse_fraction" (n / kept)."""
    skipped_grad: str = "none"
    """"none": skipped layers get grad None, so AdamW skips them (no moment update, no decay) | "zero"."""
    full_warmup_steps: int = 0
    """Full-model steps before the first stage (the UL2 recipe); plan stage 0 when > 0."""
    full_warmup_fraction: float | None = None
    """Or: that full-model phase as a fraction of train.steps (0 <= fraction < 1, rounded to whole steps),
    so the recipe keeps its shape under --set train.steps=N; give at most one of the two."""
    pld_theta_bar: float = 0.5
    """pld: asymptotic keep probability of the last layer, theta_bar."""
    pld_gamma: float = 0.001
    """pld: decay rate gamma of theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar."""
    pld_match_path_lengths: list[int] = field(default_factory=list)
    """pld: raptr path lengths (equal stages) whose expected layer count, hence FLOPs, PLD matches by
    solving for gamma (then pld_gamma must stay at its default); e.g. [6, 8, 10, 12]."""
    sd_keep_prob: float | None = None
    """stochastic_depth: constant keep prob of free layers; None = solve from sd_match_path_lengths."""
    sd_match_path_lengths: list[int] = field(default_factory=list)
    """stochastic_depth: raptr path lengths (equal stages) whose expected layer count it matches."""
    stack_rewarmup_steps: int = 0
    """stacking: linear LR re-warmup steps after each growth."""
    stack_optimizer_state: str = "fresh"
    """stacking: "fresh" | "copy" (new layers copy their source layer's AdamW state)."""

    def full_warmup_for(self, total_steps: int) -> int:
        """Full-model warm-up steps of a `total_steps` run: full_warmup_steps, or the rounded fraction."""
        if self.full_warmup_fraction is None:
            return self.full_warmup_steps
        return int(round(self.full_warmup_fraction * total_steps))

    def fixed_for(self, n_layers: int) -> list[int]:
        """Fixed layers normalised to sorted 0-based indices (out-of-range ones dropped; see problems)."""
        return method_class(self.method)(self, n_layers).fixed

    def problems(
        self, n_layers: int, total_steps: int, tokens_per_step: int, widths: tuple[int, int] | None = None
    ) -> tuple[list[str], list[str]]:
        """(errors, warnings); each message starts with the dotted key, e.g.
        'schedule.stages[2].path_length = 14 exceeds model.n_layers = 12'. `widths` = the model's
        (num_heads, intermediate_size), for the whole-number checks of width fractions."""
        if self.method not in METHODS:
            return [f"schedule.method = {self.method!r} is not one of {', '.join(METHODS)}"], []
        return method_class(self.method)(self, n_layers, widths).problems(total_steps, tokens_per_step)
