"""Validation of the [schedule] section: every problem named by its dotted key, errors and warnings
apart (a decreasing RaPTr schedule is allowed but warned about). Also the stage-boundary arithmetic
that `schedule.build_plan` shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schedule import ScheduleConfig, StageConfig

METHODS = ("baseline", "raptr", "stacking", "pld", "stochastic_depth")
_CHOICES = {"sampler": ("subset", "bernoulli"), "scale": ("none", "inverse_p", "sqrt_inverse_p"),
            "skipped_grad": ("none", "zero"), "stack_optimizer_state": ("fresh", "copy")}
_LENGTH_KEYS = ("steps", "fraction", "tokens")
_SIZE_KEYS = ("path_length", "keep_prob", "depth")
_RANGES = [("pld_theta_bar", "pld", lambda v: 0 < v <= 1, "in (0, 1]"), ("pld_gamma", "pld", lambda v: v >= 0, ">= 0"),
           ("sd_keep_prob", "stochastic_depth", lambda v: 0 < v <= 1, "in (0, 1]"),
           ("stack_rewarmup_steps", "stacking", lambda v: v >= 0, ">= 0")]


def schedule_problems(cfg: "ScheduleConfig", n_layers: int, total_steps: int,
                      tokens_per_step: int) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a [schedule] section; each message starts with the dotted key."""
    errors: list[str] = []
    warnings: list[str] = []
    E, W, m, w, L = errors.append, warnings.append, cfg.method, cfg.full_warmup_for(total_steps), n_layers
    if m not in METHODS:
        return [f"schedule.method = {m!r} is not one of {', '.join(METHODS)}"], []
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            E(f"schedule.{key} = {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    f = cfg.full_warmup_fraction
    wkey = "schedule.full_warmup_steps" if f is None else "schedule.full_warmup_fraction"
    if f is not None and cfg.full_warmup_steps:
        E("schedule.full_warmup_steps and schedule.full_warmup_fraction: give at most one "
          "(the fraction keeps the warm-up's share when train.steps changes)")
    elif f is not None and not 0 <= f < 1:
        E(f"schedule.full_warmup_fraction = {f} must be in [0, 1)")
        w = 0
    elif w < 0 or w >= total_steps:
        E(f"{wkey} = {cfg.full_warmup_steps if f is None else f} must be >= 0 and < train.steps = {total_steps}"
          + ("" if f is None else f" (it gives {w} of {total_steps} steps)"))
    if m == "baseline" and w > 0:
        W(f"{wkey} = {cfg.full_warmup_steps if f is None else f} is ignored by method 'baseline' (every step is full)")
    if m in ("raptr", "pld", "stochastic_depth") and cfg.fixed_layers is not None:
        normed = [i + L if i < 0 else i for i in cfg.fixed_layers if -L <= i < L]
        for i in (i for i in cfg.fixed_layers if not -L <= i < L):
            E(f"schedule.fixed_layers: {i} is out of range for model.n_layers = {L} (valid: {-L}..{L - 1})")
        dups = sorted({i for i in normed if normed.count(i) > 1})
        if dups:
            E(f"schedule.fixed_layers = {cfg.fixed_layers} names layer(s) {dups} twice "
              f"(negatives count from the end of {L} layers)")
    n_fixed = len(cfg.fixed_for(L))
    if m in ("baseline", "pld", "stochastic_depth") and cfg.stages:
        E(f"schedule.stages: method {m!r} takes no stages (got {len(cfg.stages)}); remove them"
          + ("; for staged keep probs use method 'raptr' with sampler 'bernoulli'"
             if m == "stochastic_depth" else ""))
    if m in ("raptr", "stacking"):
        if not cfg.stages:
            E(f"schedule.stages is empty: method {m!r} needs at least one [[schedule.stages]] table")
        label = "" if f is None else f"schedule.full_warmup_fraction = {f} ({w} steps)"
        _, e2, w2 = stage_bounds(cfg.stages, total_steps, tokens_per_step, total_steps - max(w, 0), label)
        errors += e2
        warnings += w2
        sizes = [_size_of(s, i, m, L, n_fixed, cfg.sampler, E) for i, s in enumerate(cfg.stages)]
        if None not in sizes and sizes:
            (_raptr_order if m == "raptr" else _stacking_order)(sizes, L, E, W)
    if m == "stacking" and w:
        E(f"{wkey} must be 0 for stacking: the full model exists only in the last stage")
    for key, method, ok, rule in _RANGES:
        v = getattr(cfg, key)
        if m == method and v is not None and not ok(v):
            E(f"schedule.{key} = {v} must be {rule}")
    if m == "pld" and cfg.pld_match_path_lengths:
        if cfg.pld_gamma != 0.001:
            E(f"schedule.pld_gamma = {cfg.pld_gamma} and schedule.pld_match_path_lengths: give one "
              "(matching solves gamma; drop pld_gamma)")
        for j, k in enumerate(cfg.pld_match_path_lengths):
            if not 1 <= k <= L:
                E(f"schedule.pld_match_path_lengths[{j}] = {k} must lie between 1 and model.n_layers = {L}")
    if m == "stochastic_depth":
        p, ks = cfg.sd_keep_prob, cfg.sd_match_path_lengths
        if (p is None) == (not ks):
            E("schedule.sd_keep_prob and schedule.sd_match_path_lengths: give exactly one (a keep prob, "
              "or the raptr path lengths whose FLOPs to match, e.g. [6, 8, 10, 12])")
        for j, k in enumerate(ks):
            if not n_fixed <= k <= L:
                E(f"schedule.sd_match_path_lengths[{j}] = {k} must lie between the {n_fixed} fixed "
                  f"layers and model.n_layers = {L}")
    return errors, warnings


def _one_key(s: StageConfig, keys: tuple[str, ...], key: str, kind: str, E) -> str | None:
    """The one `kind` key a stage gives, or None after reporting zero or several."""
    given = [k for k in keys if getattr(s, k) is not None]
    if len(given) != 1:
        E(f"{key} has {'no ' + kind + ' key' if not given else 'several ' + kind + ' keys (' + ', '.join(given) + ')'}"
          f": give exactly one of {', '.join(keys)}")
    return given[0] if len(given) == 1 else None


def _size_of(s: StageConfig, i: int, method: str, L: int, n_fixed: int, sampler: str, E) -> float | None:
    """A stage's layer count (raptr: expected path length; stacking: depth), or None if invalid."""
    key = f"schedule.stages[{i}]"
    if (k := _one_key(s, _SIZE_KEYS, key, "size", E)) is None:
        return None
    if (k == "depth") != (method == "stacking"):
        E(f"{key}.{k} is not for method {method!r}: "
          + ("stacking stages take depth" if method == "stacking" else "raptr stages take path_length or keep_prob"))
        return None
    v = getattr(s, k)
    if k == "depth" and v < 1:
        E(f"{key}.depth = {v} must be >= 1")
    elif k == "path_length" and v > L:
        E(f"{key}.path_length = {v} exceeds model.n_layers = {L}")
    elif k == "path_length" and v < n_fixed:
        E(f"{key}.path_length = {v} is below the {n_fixed} fixed layers (schedule.fixed_layers)")
    elif k == "keep_prob" and not 0 < v <= 1:
        E(f"{key}.keep_prob = {v} must be in (0, 1]")
    elif k == "keep_prob" and sampler == "subset" and abs(v * (L - n_fixed) - round(v * (L - n_fixed))) > 1e-9:
        E(f"{key}.keep_prob = {v} gives {v * (L - n_fixed):g} of {L - n_fixed} free layers, not a whole number, "
          "with sampler 'subset'; give path_length or set schedule.sampler = 'bernoulli'")
    else:
        return float(v if k != "keep_prob" else n_fixed + v * (L - n_fixed))
    return None


def _raptr_order(ks: list[float], L: int, E, W) -> None:
    """Path lengths should grow (warning, not error) and end at the full model."""
    for i in range(1, len(ks)):
        if ks[i] < ks[i - 1] - 1e-9:
            W(f"schedule.stages[{i}]: path length {ks[i]:g} < the previous stage's {ks[i - 1]:g}: a decreasing "
              "schedule is PLD's direction, which the paper argues against")
    if ks[-1] < L - 1e-9:
        W(f"schedule.stages[{len(ks) - 1}]: the last stage runs {ks[-1]:g} of {L} layers, so the full model "
          "is never trained (the paper's last stage is the full model)")


def _stacking_order(ds: list[float], L: int, E, W) -> None:
    """Depths grow, at most doubling (new layers copy the top m - k), and end at n_layers."""
    for i in range(1, len(ds)):
        k, m = int(ds[i - 1]), int(ds[i])
        if m <= k:
            E(f"schedule.stages[{i}].depth = {m} does not increase on the previous stage's {k}")
        elif m > 2 * k:
            E(f"schedule.stages[{i}].depth = {m} more than doubles the previous {k}: stacking copies the top "
              f"{m - k} of {k} layers, so at most {2 * k}")
    if ds[-1] != L:
        E(f"schedule.stages[{len(ds) - 1}].depth = {int(ds[-1])} must equal model.n_layers = {L}")


def _stage_length(s: StageConfig, key: str, available: int, tokens_per_step: int) -> float:
    """A stage's length in (fractional) steps from its length key; `stage_bounds` and
    `rescaled_schedule` share it, so a budget's --set line is read back as it was computed."""
    v = getattr(s, key)
    # a fraction is of the staged span (train.steps minus the full-model warm-up), so fractions sum to 1
    return {"steps": float(v), "fraction": v * available, "tokens": v / max(tokens_per_step, 1)}[key]


def stage_bounds(stages: list[StageConfig], total_steps: int, tokens_per_step: int,
                  available: int, warmup_label: str = "") -> tuple[list[int], list[str], list[str]]:
    """Cumulative end steps (relative to the first stage's start), errors, warnings.
    `warmup_label` names the warm-up in messages (default: full_warmup_steps = train.steps - available).

    Lengths are summed as floats (units may mix) and boundaries rounded cumulatively, so equal
    fractions of an odd step count still tile the run exactly."""
    errors, warnings, lengths, parts = [], [], [], []
    for i, s in enumerate(stages):
        key = f"schedule.stages[{i}]"
        if (k := _one_key(s, _LENGTH_KEYS, key, "length", errors.append)) is None:
            continue
        v = getattr(s, k)
        n = _stage_length(s, k, available, tokens_per_step)
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
        whole = f"train.steps = {total_steps}" + (f" minus {warm}, i.e. {available}" if available != total_steps else "")
        errors.append(f"schedule.stages add up to {total:g} steps ({' + '.join(parts)}) but {whole}")
        return [], errors, warnings
    ends, cum = [], 0.0
    for i, n in enumerate(lengths):
        cum += n
        ends.append(available if i == len(lengths) - 1 else int(round(cum)))
        if ends[-1] <= (ends[-2] if i else 0):
            errors.append(f"schedule.stages[{i}] rounds to 0 steps")
    return ends, errors, warnings


def rescaled_schedule(cfg: ScheduleConfig, total_steps: int, tokens_per_step: int, new_steps: int) -> dict:
    """The [schedule] keys that give a `new_steps` run the stage proportions of this `total_steps` one.

    The warm-up keeps its share of the run and each stage its share of the staged span; keys given as
    fractions rescale by themselves and are left out. A stage in steps or tokens makes every stage a
    `steps` entry (the cumulative boundaries scaled, so they still tile the span). Call it on a
    schedule that validated for `total_steps`."""
    out: dict = {}
    w = cfg.full_warmup_for(total_steps) if cfg.method in ("raptr", "pld", "stochastic_depth") else 0
    new_w = w
    if w and cfg.full_warmup_fraction is None:
        new_w = int(round(w * new_steps / total_steps))
        out["full_warmup_steps"] = new_w
    elif w:
        new_w = cfg.full_warmup_for(new_steps)
    stages = cfg.stages if cfg.method in ("raptr", "stacking") else []
    keys = [next(k for k in _LENGTH_KEYS if getattr(s, k) is not None) for s in stages]
    if all(k == "fraction" for k in keys):
        return out
    available, new_available = total_steps - w, new_steps - new_w
    rows, cum, done = [], 0.0, 0
    for i, (s, k) in enumerate(zip(stages, keys)):
        cum += _stage_length(s, k, available, tokens_per_step)
        end = new_available if i == len(stages) - 1 else int(round(cum * new_available / available))
        rows.append({"steps": end - done, **{sk: getattr(s, sk) for sk in _SIZE_KEYS if getattr(s, sk) is not None}})
        done = end
    out["stages"] = rows
    return out
