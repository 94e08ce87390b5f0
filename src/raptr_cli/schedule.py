"""Stage schedules and per-step layer paths for progressive subnetwork training (method.md).

`build_plan` checks the `[schedule]` section against the model and run length and resolves it into
a `Plan`: stage boundaries plus "which layers run at step t", a pure function of (seed, step) drawn
from a private torch.Generator (never global RNG), so data-parallel ranks agree without talking, a
resumed run replays the same paths, and tests can pin them."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

from .schedule_check import METHODS, stage_bounds  # noqa: F401 (METHODS re-exported)


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
        if self.method in ("baseline", "stacking"):
            return []
        raw = self.fixed_layers if self.fixed_layers is not None else ([] if self.method == "pld" else [0, -1])
        return sorted({i + n_layers if i < 0 else i for i in raw if -n_layers <= i < n_layers})

    def problems(self, n_layers: int, total_steps: int, tokens_per_step: int) -> tuple[list[str], list[str]]:
        """(errors, warnings); each message starts with the dotted key, e.g.
        'schedule.stages[2].path_length = 14 exceeds model.n_layers = 12'."""
        from .schedule_check import schedule_problems

        return schedule_problems(self, n_layers, total_steps, tokens_per_step)


def _splitmix64(x: int) -> int:
    """SplitMix64 finaliser: a bijection on 64-bit ints that scatters nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _mix32(x: int) -> int:
    """lowbias32 (C. Wellons): xorshifts and odd multiplies, so a bijection on 32-bit ints."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def step_generator(seed: int, step: int) -> "torch.Generator":
    """CPU generator for `step`, seeded by mix32((salt(seed) + step) mod 2^32), salt = splitmix64(seed)
    folded to 32 bits. torch's CPU generator (mt19937) keeps only 32 bits of a seed, so the key is a
    32-bit bijection of the step: no two steps of one run (< 2^32 steps) share a key, and another
    seed replays these paths only shifted by a random ~2^31 steps."""
    salt = _splitmix64(seed & 0xFFFFFFFFFFFFFFFF)
    import torch  # lazy: `raptr flops` and recipe validation never sample paths

    return torch.Generator(device="cpu").manual_seed(_mix32(((salt ^ (salt >> 32)) + step) & 0xFFFFFFFF))


def sample_subset(n_layers: int, fixed: list[int], k: int, gen: "torch.Generator") -> list[int]:
    """k active layers: all fixed ones plus k - |fixed| of the others uniformly (one randperm)."""
    free = [i for i in range(n_layers) if i not in fixed]
    import torch

    pick = torch.randperm(len(free), generator=gen)[: k - len(fixed)].tolist()
    return sorted(set(fixed) | {free[j] for j in pick})


def growth_sources(old_depth: int, new_depth: int) -> list[int]:
    """Stacking (Reddi et al. 2023): new layers old_depth..new_depth-1 copy, in order, the top
    new_depth - old_depth layers, i.e. source layers [2*old - new .. old - 1]."""
    start = 2 * old_depth - new_depth
    return list(range(start, old_depth))


@dataclass(frozen=True)
class Stage:
    """A resolved stage: optimizer steps [start, end)."""

    index: int
    start: int
    end: int
    path_length: float
    """EXPECTED active layers (exact for subset, baseline, stacking; pld: mean over the stage)."""
    keep_prob: float
    """p_s of each non-fixed layer (1.0 = full; pld: mean over free layers and steps)."""
    depth: int
    """Model depth in this stage (stacking grows it; otherwise n_layers)."""

    @property
    def steps(self) -> int:
        return self.end - self.start


@dataclass
class Plan:
    """The resolved schedule: stage boundaries plus the per-step path sampler."""

    method: str
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
    warnings: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end

    def stage_at(self, step: int) -> Stage:
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the plan's [0, {self.total_steps})")
        return self.stages[bisect.bisect_right([s.start for s in self.stages], step) - 1]

    def _is_pld(self, step: int) -> bool:
        return self.method == "pld" and step >= self.pld_start

    def is_random(self, stage: Stage) -> bool:
        """Whether the stage's layer count is an expectation (subset paths have an exact count)."""
        exact = self.method == "raptr" and self.sampler == "subset"
        return self.method in ("raptr", "pld", "stochastic_depth") and stage.keep_prob < 1.0 and not exact

    def keep_probs(self, step: int) -> list[float]:
        """Keep probability of each layer of the current depth (fixed layers 1.0)."""
        st = self.stage_at(step)
        if self._is_pld(step):
            # Zhang & He 2020: theta(t) = (1-theta_bar) e^{-gamma t} + theta_bar; layer i (1-based)
            # kept with prob 1 - (i/L)(1 - theta(t)): deeper layers are dropped more.
            theta = (1 - self.pld_theta_bar) * math.exp(-self.pld_gamma * (step - self.pld_start)) + self.pld_theta_bar
            return [1.0 if i in self.fixed else 1 - (i + 1) / self.n_layers * (1 - theta) for i in range(st.depth)]
        return [1.0 if i in self.fixed else st.keep_prob for i in range(st.depth)]

    def active_layers(self, step: int) -> list[int]:
        """Ascending indices of the layers that run at `step`; a pure function of (seed, step)."""
        import torch

        st = self.stage_at(step)
        if self._is_pld(step):
            u = torch.rand(st.depth, generator=step_generator(self.seed, step), dtype=torch.float64).tolist()
            return [i for i, (x, p) in enumerate(zip(u, self.keep_probs(step))) if x < p]
        if st.keep_prob >= 1.0 or self.method in ("baseline", "stacking"):
            return list(range(st.depth))
        gen = step_generator(self.seed, step)
        if self.method == "raptr" and self.sampler == "subset":
            return sample_subset(self.n_layers, self.fixed, int(round(st.path_length)), gen)
        free = [i for i in range(self.n_layers) if i not in self.fixed]
        on = (torch.rand(len(free), generator=gen, dtype=torch.float64) < st.keep_prob).tolist()
        return sorted(set(self.fixed) | {i for i, b in zip(free, on) if b})

    def layer_scales(self, step: int, layers: list[int]) -> list[float]:
        """Training-time output scale s_i of each listed layer: 1/p (inverse_p, and always for pld),
        1/sqrt(p) (sqrt_inverse_p), else 1.0; fixed layers have p = 1 so always 1.0."""
        probs = self.keep_probs(step)
        mode = "inverse_p" if self._is_pld(step) else self.scale
        if mode == "none":
            return [1.0] * len(layers)
        power = 1.0 if mode == "inverse_p" else 0.5
        return [1.0 / probs[i] ** power if probs[i] > 0 else 1.0 for i in layers]

    def notes(self) -> list[str]:
        """Resolved schedule values worth showing next to the stage table (PLD's decay)."""
        if self.method != "pld":
            return []
        return [f"PLD theta(t) = {1 - self.pld_theta_bar:g} exp(-{self.pld_gamma:.6g} t) + {self.pld_theta_bar:g}, "
                f"t from step {self.pld_start}; layer i of {self.n_layers} kept with p = 1 - (i/{self.n_layers})(1 - theta)"]

    def expected_active(self, step: int) -> float:
        if self._is_pld(step):
            return float(sum(self.keep_probs(step)))
        return float(self.stage_at(step).path_length)

    def expected_layer_steps(self, stage: Stage) -> float:
        """Sum over the stage's steps of the expected active layer count (closed over numpy for pld)."""
        if self.method != "pld" or stage.start < self.pld_start:
            return stage.path_length * stage.steps
        return _pld_layer_steps(self.n_layers, self.fixed, self.pld_theta_bar, self.pld_gamma,
                                stage.start - self.pld_start, stage.end - self.pld_start)


def _pld_layer_steps(n_layers: int, fixed: list[int], theta_bar: float, gamma: float, t0: int, t1: int) -> float:
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
        return _pld_layer_steps(n_layers, fixed, theta_bar, g, 0, steps) / steps
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


def build_plan(cfg: ScheduleConfig, n_layers: int, total_steps: int, tokens_per_step: int, seed: int) -> Plan:
    """Validate `cfg` (every problem at once, as a UserError) and resolve it into a Plan."""
    errors, warnings = cfg.problems(n_layers, total_steps, tokens_per_step)
    if errors:
        raise UserError(f"the [schedule] section has {len(errors)} problem(s)", problems=errors,
                        hint="Fix the keys named above; --set schedule.KEY=VALUE overrides one.")
    m, L, fixed = cfg.method, n_layers, cfg.fixed_for(n_layers)
    n_free = L - len(fixed)
    w = cfg.full_warmup_for(total_steps) if m in ("raptr", "pld", "stochastic_depth") else 0
    gamma = cfg.pld_gamma
    if m == "pld" and cfg.pld_match_path_lengths:
        k_bar = sum(cfg.pld_match_path_lengths) / len(cfg.pld_match_path_lengths)
        try:
            gamma = solve_pld_gamma(L, fixed, cfg.pld_theta_bar, total_steps - w, k_bar)
        except ValueError as e:
            raise UserError(f"schedule.pld_match_path_lengths: PLD cannot average {k_bar:g} layers per step",
                            hint=f"With pld_theta_bar = {cfg.pld_theta_bar} its least mean is {e} layers; "
                                 "lower pld_theta_bar or match longer paths.") from None
    plan = Plan(m, L, [], fixed, seed, cfg.sampler, cfg.scale, cfg.pld_theta_bar, gamma, warnings=warnings)
    stages = [Stage(0, 0, w, float(L), 1.0, L)] if w else []

    def add(end: int, k: float, p: float, depth: int = L) -> None:
        start = stages[-1].end if stages else 0
        stages.append(Stage(len(stages), start, end, float(k), float(p), depth))

    if m == "baseline":
        add(total_steps, L, 1.0)
    elif m in ("raptr", "stacking"):
        ends, _, _ = stage_bounds(cfg.stages, total_steps, tokens_per_step, total_steps - w)
        for s, end in zip(cfg.stages, ends):
            if m == "stacking":
                add(w + end, s.depth, 1.0, s.depth)
                continue
            p = s.keep_prob if s.keep_prob is not None else ((s.path_length - len(fixed)) / n_free if n_free else 1.0)
            k = s.path_length if s.path_length is not None else len(fixed) + p * n_free
            if cfg.sampler == "subset":
                k = round(k)
            add(w + end, k, p)
    elif m == "stochastic_depth":  # else solve k_bar = |I| + p (L - |I|), k_bar = mean of equal raptr stages
        p = cfg.sd_keep_prob
        if p is None:
            k_bar = sum(cfg.sd_match_path_lengths) / len(cfg.sd_match_path_lengths)
            p = (k_bar - len(fixed)) / n_free if n_free else 1.0
        add(total_steps, len(fixed) + p * n_free, p)
    else:  # pld: one stage spanning the run (after the optional warmup)
        plan.pld_start = w
        mean_k = _pld_layer_steps(L, fixed, cfg.pld_theta_bar, gamma, 0, total_steps - w) / (total_steps - w)
        add(total_steps, mean_k, (mean_k - len(fixed)) / n_free if n_free else 1.0)
    plan.stages = stages
    return plan


def describe(plan: Plan) -> list[dict]:
    """One row per stage for tables and JSON: index, start, end, steps, path_length (or depth for
    stacking), keep_prob, and `expected` (True where the layer count is an expectation)."""
    size = "depth" if plan.method == "stacking" else "path_length"
    return [{"index": s.index, "start": s.start, "end": s.end, "steps": s.steps, size: getattr(s, size),
             "keep_prob": s.keep_prob, "expected": plan.is_random(s)} for s in plan.stages]
