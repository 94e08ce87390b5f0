"""The Method protocol: everything one schedule method means, in one class. A method checks its own
keys of the [schedule] section, resolves the stages of a run, draws the subnetwork of each step, says
what a stage is expected to cost, and answers the trainer's two questions (grow the model before this
step? scale the LR?). The plan, FLOPs, console, comparison and trainer ask it; none of them branches
on a method name. A new method is one module with a subclass plus one line in `methods.METHODS`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ..rng import sample_parts, step_generator, stream
from ..stages import SIZE_KEYS, WIDTH_KEYS, Stage, one_key, stage_bounds

if TYPE_CHECKING:
    from ..config import ScheduleConfig, StageConfig
    from ..plan import Plan

_CHOICES = {
    "sampler": ("subset", "bernoulli"),
    "scale": ("none", "inverse_p", "sqrt_inverse_p"),
    "width_scale": ("none", "inverse_fraction"),
    "skipped_grad": ("none", "zero"),
    "stack_optimizer_state": ("fresh", "copy"),
}


@dataclass
class Checks:
    """What validation reads (the run the section is checked against) and writes (errors, warnings)."""

    n_layers: int
    total_steps: int
    tokens_per_step: int
    warmup: int
    """The resolved full-model warm-up (0 after an invalid fraction)."""
    warmup_key: str
    """`schedule.full_warmup_steps` or `schedule.full_warmup_fraction`, whichever the section gives."""
    warmup_given: str
    """That key's value as given, for messages."""
    widths: tuple[int, int] | None = None
    """The model's (num_heads, intermediate_size) when known: width fractions must give whole counts."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class Method:
    """Base of every schedule method: the full model at every step, no stages, no fixed layers."""

    size_key: ClassVar[str] = "path_length"
    """The stage column tables and JSON show: its layer count ("depth" for a method that grows)."""
    size_keys: ClassVar[tuple[str, ...]] = ()
    """The [[schedule.stages]] size keys it takes; () = it takes no stages."""
    default_fixed: ClassVar[tuple[int, ...] | None] = None
    """Always-on layers when schedule.fixed_layers is not given; None = no fixed layers, key ignored."""
    full_warmup: ClassVar[bool] = True
    """Whether the full-model warm-up runs before its stages (else the warm-up keys are ignored)."""
    grows: ClassVar[bool] = False
    """The model's depth changes during the run: no FSDP, and a checkpoint may be shallower."""
    full_model: ClassVar[bool] = False
    """Every step trains the whole model: `compare`'s reference."""
    takes_width: ClassVar[bool] = False
    """Its stages may drop attention heads and MLP units (heads_fraction, mlp_fraction)."""

    def __init__(self, cfg: ScheduleConfig, n_layers: int, widths: tuple[int, int] | None = None):
        self.cfg, self.n_layers, self.widths = cfg, n_layers, widths

    @classmethod
    def warmup_steps(cls, cfg: ScheduleConfig, total_steps: int) -> int:
        """The full-model steps a `total_steps` run of this method starts with."""
        return cfg.full_warmup_for(total_steps) if cls.full_warmup else 0

    @property
    def fixed(self) -> list[int]:
        """Fixed layers normalised to sorted 0-based indices (out-of-range ones dropped; see check_fixed)."""
        if self.default_fixed is None:
            return []
        L, raw = self.n_layers, self.cfg.fixed_layers
        raw = raw if raw is not None else self.default_fixed
        return sorted({i + L if i < 0 else i for i in raw if -L <= i < L})

    # --- validation ------------------------------------------------------------------------------
    def problems(self, total_steps: int, tokens_per_step: int) -> tuple[list[str], list[str]]:
        """(errors, warnings): the keys every method shares, then `check`'s own."""
        cfg = self.cfg
        f, w = cfg.full_warmup_fraction, cfg.full_warmup_for(total_steps)
        c = Checks(
            self.n_layers,
            total_steps,
            tokens_per_step,
            w,
            "schedule.full_warmup_steps" if f is None else "schedule.full_warmup_fraction",
            str(cfg.full_warmup_steps if f is None else f),
            self.widths,
        )
        for key, allowed in _CHOICES.items():
            if getattr(cfg, key) not in allowed:
                c.error(f"schedule.{key} = {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
        if f is not None and cfg.full_warmup_steps:
            c.error(
                "schedule.full_warmup_steps and schedule.full_warmup_fraction: give at most one "
                "(the fraction keeps the warm-up's share when train.steps changes)"
            )
        elif f is not None and not 0 <= f < 1:
            c.error(f"schedule.full_warmup_fraction = {f} must be in [0, 1)")
            c.warmup = 0
        elif w < 0 or w >= total_steps:
            c.error(
                f"{c.warmup_key} = {c.warmup_given} must be >= 0 and < train.steps = {total_steps}"
                + ("" if f is None else f" (it gives {w} of {total_steps} steps)")
            )
        self.check(c)
        return c.errors, c.warnings

    def check(self, c: Checks) -> None:
        """This method's own checks (the base has none), in the order their messages should appear."""

    def check_fixed(self, c: Checks) -> None:
        """schedule.fixed_layers in range and without a layer named twice."""
        given, L = self.cfg.fixed_layers, self.n_layers
        if given is None:
            return
        normed = [i + L if i < 0 else i for i in given if -L <= i < L]
        for i in (i for i in given if not -L <= i < L):
            c.error(f"schedule.fixed_layers: {i} is out of range for model.n_layers = {L} (valid: {-L}..{L - 1})")
        dups = sorted({i for i in normed if normed.count(i) > 1})
        if dups:
            c.error(
                f"schedule.fixed_layers = {given} names layer(s) {dups} twice "
                f"(negatives count from the end of {L} layers)"
            )

    def check_no_stages(self, c: Checks, hint: str = "") -> None:
        if self.cfg.stages:
            c.error(
                f"schedule.stages: method {self.cfg.method!r} takes no stages (got {len(self.cfg.stages)}); "
                f"remove them{hint}"
            )

    def check_range(self, c: Checks, key: str, ok, rule: str) -> None:
        v = getattr(self.cfg, key)
        if v is not None and not ok(v):
            c.error(f"schedule.{key} = {v} must be {rule}")

    def check_stages(self, c: Checks) -> None:
        """At least one stage; lengths that tile the staged span; one valid size key each; their order."""
        cfg = self.cfg
        if not cfg.stages:
            c.error(
                f"schedule.stages is empty: method {self.cfg.method!r} needs at least one [[schedule.stages]] table"
            )
        f = cfg.full_warmup_fraction
        label = "" if f is None else f"schedule.full_warmup_fraction = {f} ({c.warmup} steps)"
        _, errors, warnings = stage_bounds(
            cfg.stages, c.total_steps, c.tokens_per_step, c.total_steps - max(c.warmup, 0), label
        )
        c.errors += errors
        c.warnings += warnings
        sizes = [self.stage_size(s, i, c) for i, s in enumerate(cfg.stages)]
        if None not in sizes and sizes:
            self.check_sizes(sizes, c)
        for i, s in enumerate(cfg.stages):
            self.check_width(s, i, c)

    def check_width(self, s: StageConfig, i: int, c: Checks) -> None:
        """heads_fraction and mlp_fraction: only where the method takes them, in (0, 1], and (with the
        model's widths known) a whole number of heads and units."""
        names = ("model.num_heads", "model.intermediate_size")
        for j, k in enumerate(WIDTH_KEYS):
            v, key = getattr(s, k), f"schedule.stages[{i}].{k}"
            if v is None:
                continue
            if not self.takes_width:
                c.error(f"{key} is not for method {self.cfg.method!r}: width fractions are for method 'raptr'")
            elif not 0 < v <= 1:
                c.error(f"{key} = {v} must be in (0, 1]")
            elif c.widths is not None and abs(v * c.widths[j] - round(v * c.widths[j])) > 1e-9:
                c.error(
                    f"{key} = {v} gives {v * c.widths[j]:g} of {names[j]} = {c.widths[j]}, not a whole "
                    f"number; give a multiple of 1/{c.widths[j]}"
                )

    def stage_size(self, s: StageConfig, i: int, c: Checks) -> float | None:
        """A stage's layer count (expected path length, or depth), or None after reporting it invalid."""
        key, L, n_fixed = f"schedule.stages[{i}]", self.n_layers, len(self.fixed)
        if (
            self.takes_width
            and all(getattr(s, k) is None for k in SIZE_KEYS)
            and any(getattr(s, k) is not None for k in WIDTH_KEYS)
        ):
            return float(L)  # a width-only stage: every layer runs
        if (k := one_key(s, SIZE_KEYS, key, "size", c.error)) is None:
            return None
        if k not in self.size_keys:
            c.error(
                f"{key}.{k} is not for method {self.cfg.method!r}: {self.cfg.method} stages take {' or '.join(self.size_keys)}"
            )
            return None
        v = getattr(s, k)
        free = L - n_fixed
        if k == "depth" and v < 1:
            c.error(f"{key}.depth = {v} must be >= 1")
        elif k == "path_length" and v > L:
            c.error(f"{key}.path_length = {v} exceeds model.n_layers = {L}")
        elif k == "path_length" and v < n_fixed:
            c.error(f"{key}.path_length = {v} is below the {n_fixed} fixed layers (schedule.fixed_layers)")
        elif k == "keep_prob" and not 0 < v <= 1:
            c.error(f"{key}.keep_prob = {v} must be in (0, 1]")
        elif k == "keep_prob" and self.cfg.sampler == "subset" and abs(v * free - round(v * free)) > 1e-9:
            c.error(
                f"{key}.keep_prob = {v} gives {v * free:g} of {free} free layers, not a whole number, "
                "with sampler 'subset'; give path_length or set schedule.sampler = 'bernoulli'"
            )
        else:
            return float(v if k != "keep_prob" else n_fixed + v * free)
        return None

    def check_sizes(self, sizes: list[float], c: Checks) -> None:
        """The stages' sizes as a sequence (raptr: growing paths; stacking: at most doubling depths)."""

    # --- resolution ------------------------------------------------------------------------------
    def resolve(self, plan: Plan, warmup: int, total_steps: int, tokens_per_step: int) -> list[tuple]:
        """The stages after the warm-up as (end, expected layers, keep prob, depth[, heads_fraction,
        mlp_fraction]) rows; may set the
        plan's own resolved values (pld's gamma). The base: one full-model stage to the end."""
        return [(total_steps, self.n_layers, 1.0, self.n_layers)]

    # --- per step --------------------------------------------------------------------------------
    def keep_probs(self, plan: Plan, step: int) -> list[float]:
        """Keep probability of each layer of the current depth (fixed layers 1.0)."""
        st = plan.stage_at(step)
        return [1.0 if i in plan.fixed else st.keep_prob for i in range(st.depth)]

    def active_layers(self, plan: Plan, step: int) -> list[int]:
        """Ascending indices of the layers that run at `step`; a pure function of (seed, step)."""
        return list(range(plan.stage_at(step).depth))

    def layer_scales(self, plan: Plan, step: int, layers: list[int], mode: str | None = None) -> list[float]:
        """Training-time output scale s_i of each listed layer: 1/p (inverse_p), 1/sqrt(p)
        (sqrt_inverse_p), else 1.0; fixed layers have p = 1 so always 1.0. `mode` defaults to schedule.scale."""
        mode = mode or plan.scale
        if mode == "none":
            return [1.0] * len(layers)
        probs, power = self.keep_probs(plan, step), 1.0 if mode == "inverse_p" else 0.5
        return [1.0 / probs[i] ** power if probs[i] > 0 else 1.0 for i in layers]

    def parts(self, plan: Plan, step: int, layers: list[int]) -> tuple[tuple | None, tuple | None]:
        """(heads, units) of the listed blocks at `step`, one ascending tuple per block, each None when
        the stage keeps all of them. Block b's draw is a pure function of (seed, step, b) (its own
        stream per axis), so ranks agree and a block's parts do not depend on the path."""
        st = plan.stage_at(step)
        out = []
        for tag, n, frac in (("heads", plan.n_heads, st.heads_fraction), ("units", plan.n_units, st.mlp_fraction)):
            if frac >= 1.0:
                out.append(None)
                continue
            k = int(round(frac * n))
            out.append(tuple(sample_parts(n, k, stream(plan.seed, step, tag, b)) for b in layers))
        return out[0], out[1]

    def expected_active(self, plan: Plan, step: int) -> float:
        return float(plan.stage_at(step).path_length)

    def expected_layer_steps(self, plan: Plan, stage: Stage) -> float:
        """A stage's expected cost: the sum over its steps of the expected active layer count."""
        return stage.path_length * stage.steps

    def is_random(self, plan: Plan, stage: Stage) -> bool:
        """Whether the stage's layer count is an expectation (exact counts are not)."""
        return False

    def notes(self, plan: Plan) -> list[str]:
        """Resolved values worth showing next to the stage table."""
        return []

    def growth(self, plan: Plan, stage: Stage, depth: int) -> int | None:
        """Stage-start hook: the depth a `depth`-layer model must grow to before a step of `stage`, or None."""
        return None

    def lr_factor(self, plan: Plan, stage: Stage, step: int) -> float:
        """Factor on the recipe's LR schedule at `step` (a re-warmup after growth)."""
        return 1.0


def bernoulli_layers(plan: Plan, step: int, keep_prob: float) -> list[int]:
    """Fixed layers plus each free layer independently with probability `keep_prob` (one torch.rand)."""
    import torch

    free = [i for i in range(plan.n_layers) if i not in plan.fixed]
    on = (torch.rand(len(free), generator=step_generator(plan.seed, step), dtype=torch.float64) < keep_prob).tolist()
    return sorted(set(plan.fixed) | {i for i, b in zip(free, on) if b})
