"""Stage arithmetic: a stage's length from its one length key, and the cumulative rounding that turns
lengths into boundaries. `stage_bounds` (the loader, build_plan) and `rescaled_schedule` (flops
--budget) both go through `stage_length` and `stage_ends`, so a budget's --set line loads as computed."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import StageConfig

LENGTH_KEYS = ("steps", "fraction", "tokens")
SIZE_KEYS = ("path_length", "keep_prob", "depth")
WIDTH_KEYS = ("heads_fraction", "mlp_fraction")


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
    heads_fraction: float = 1.0
    """Share of its attention heads each active block computes (exact: a fixed count per block)."""
    mlp_fraction: float = 1.0
    """Share of its MLP intermediate units each active block computes (exact)."""

    @property
    def narrow(self) -> bool:
        """Whether the stage drops heads or MLP units."""
        return self.heads_fraction < 1.0 or self.mlp_fraction < 1.0

    @property
    def steps(self) -> int:
        return self.end - self.start


def one_key(s: StageConfig, keys: tuple[str, ...], key: str, kind: str, E) -> str | None:
    """The one `kind` key a stage gives, or None after reporting zero or several."""
    given = [k for k in keys if getattr(s, k) is not None]
    if len(given) != 1:
        E(
            f"{key} has {'no ' + kind + ' key' if not given else 'several ' + kind + ' keys (' + ', '.join(given) + ')'}"
            f": give exactly one of {', '.join(keys)}"
        )
    return given[0] if len(given) == 1 else None


def stage_length(s: StageConfig, key: str, available: int, tokens_per_step: int) -> float:
    """A stage's length in (fractional) steps from its length key."""
    v = getattr(s, key)
    # a fraction is of the staged span (train.steps minus the full-model warm-up), so fractions sum to 1
    return {"steps": float(v), "fraction": v * available, "tokens": v / max(tokens_per_step, 1)}[key]


def stage_ends(cumulative: list[float], span: int) -> list[int]:
    """Stage end steps from cumulative (fractional) lengths: each rounded on its own, the last pinned
    to `span`, so equal fractions of an odd step count still tile the span exactly."""
    return [span if i == len(cumulative) - 1 else int(round(c)) for i, c in enumerate(cumulative)]


def stage_bounds(
    stages: list[StageConfig], total_steps: int, tokens_per_step: int, available: int, warmup_label: str = ""
) -> tuple[list[int], list[str], list[str]]:
    """Cumulative end steps (relative to the first stage's start), errors, warnings.
    `warmup_label` names the warm-up in messages (default: full_warmup_steps = train.steps - available).

    Lengths are summed as floats (units may mix) and boundaries rounded cumulatively (`stage_ends`)."""
    errors, warnings, lengths, parts = [], [], [], []
    for i, s in enumerate(stages):
        key = f"schedule.stages[{i}]"
        if (k := one_key(s, LENGTH_KEYS, key, "length", errors.append)) is None:
            continue
        v = getattr(s, k)
        n = stage_length(s, k, available, tokens_per_step)
        if k == "fraction" and not 0 < v <= 1:
            errors.append(f"{key}.fraction = {v} must be in (0, 1]")
            continue
        if round(n) < 1:
            errors.append(f"{key}.{k} = {v} gives {n:g} steps; a stage needs at least one step")
            continue
        if k == "tokens" and abs(n - round(n)) > 1e-9:
            warnings.append(f"{key}.tokens = {v} is {n:.3f} steps of {tokens_per_step} tokens; rounded")
        lengths.append(n)
        parts.append(f"stages[{i}] {n:g}" + ("" if k == "steps" else f" (from {k} = {v})"))
    if errors or not stages:
        return [], errors, warnings
    total = sum(lengths)
    if abs(total - available) >= 0.5:
        warm = warmup_label or f"schedule.full_warmup_steps = {total_steps - available}"
        whole = f"train.steps = {total_steps}" + (
            f" minus {warm}, i.e. {available}" if available != total_steps else ""
        )
        errors.append(f"schedule.stages add up to {total:g} steps ({' + '.join(parts)}) but {whole}")
        return [], errors, warnings
    ends = stage_ends(list(accumulate(lengths)), available)
    for i, end in enumerate(ends):
        if end <= (ends[i - 1] if i else 0):
            errors.append(f"schedule.stages[{i}] rounds to 0 steps")
    return ends, errors, warnings
