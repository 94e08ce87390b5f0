"""Objective settings importable without torch (recipe validation and `raptr flops` stay fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DenoiserConfig:
    """One denoiser of the mixture."""

    name: str
    """Label used in logs and metrics (e.g. "R-3")."""
    kind: str = "span"
    """"span" (T5 span corruption with sentinels) or "prefix" (prefix LM: continue the text)."""
    mean_span: float = 3.0
    """Mean noise-span length in tokens (span only; ignored by "prefix")."""
    rate: float = 0.15
    """Span: fraction of tokens corrupted. Prefix: mean fraction of the text used as target."""
    paradigm: str = "[NLU]"
    """Mode token prepended to the inputs: "[NLU]" (R), "[NLG]" (X) or "[S2S]" (S)."""
    weight: float = 1.0
    """Relative sampling weight within the mixture (normalised over all denoisers)."""

    def problems(self, key: str = "denoiser") -> list[str]:
        """Every invalid field, each message naming `key`.field."""
        out: list[str] = []
        if self.kind not in ("span", "prefix"):
            out.append(f'{key}.kind must be "span" or "prefix" (got {self.kind!r})')
        if not 0.0 < self.rate < 1.0:
            out.append(f"{key}.rate must be in (0, 1) (got {self.rate})")
        if self.kind == "span" and not self.mean_span >= 1.0:
            out.append(f"{key}.mean_span must be >= 1 (got {self.mean_span})")
        if not self.weight >= 0.0:
            out.append(f"{key}.weight must be >= 0 (got {self.weight})")
        return out


def default_denoisers() -> list[DenoiserConfig]:
    """UL2's seven denoisers with equal weights."""
    return [
        DenoiserConfig("R-3", "span", 3.0, 0.15, "[NLU]"),
        DenoiserConfig("R-8", "span", 8.0, 0.15, "[NLU]"),
        DenoiserConfig("S", "prefix", 0.0, 0.25, "[S2S]"),
        DenoiserConfig("X-3", "span", 3.0, 0.5, "[NLG]"),
        DenoiserConfig("X-8", "span", 8.0, 0.5, "[NLG]"),
        DenoiserConfig("X-64-r15", "span", 64.0, 0.15, "[NLG]"),
        DenoiserConfig("X-64-r50", "span", 64.0, 0.5, "[NLG]"),
    ]


def mixture_problems(denoisers: list[DenoiserConfig | None], key: str) -> list[str]:
    """Problems with a mixture (each denoiser's, then an empty or all-zero-weight mixture), named
    by `key` (the recipe's "objective.denoisers")."""
    den = [d for d in denoisers if d is not None]
    out = [p for i, d in enumerate(den) for p in d.problems(f"{key}[{i}]")]
    if not den or sum(d.weight for d in den) <= 0:
        out.append(f"{key} needs at least one denoiser with weight > 0")
    return out


def mixture_head_fraction(denoisers: list[DenoiserConfig]) -> float:
    """Expected share of positions that are targets under the mixture (the LM head runs only
    there): a span denoiser with rate r and mean span mu turns L tokens into 1 + L + 2rL/mu
    positions of which rL + rL/mu are targets, and the prefix denoiser predicts a share r (an
    estimate: metrics.jsonl counts the positions that really ran)."""
    total_w = sum(d.weight for d in denoisers)
    frac = 0.0
    for d in denoisers:
        if d.kind == "prefix":
            share = d.rate
        else:
            spans = d.rate / d.mean_span
            share = (d.rate + spans) / (1 + 2 * spans)
        frac += d.weight / total_w * share
    return frac
