"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms"),
laid out for a decoder-only prefix LM.

Denoisers (paper Sec. 3.1.2; mu = mean span, r = corruption rate):
- R (regular, paradigm token [NLU]): span corruption, mu = 3 and 8, r = 0.15 (T5's objective);
- X (extreme, [NLG]): mu = 3 and 8 at r = 0.5, mu = 64 at r = 0.15 and 0.5;
- S (sequential, [S2S]): prefix LM, continue the text from a random split; r = 0.25 is the mean
  fraction of the text that becomes the target (the paper's S-denoiser has r = 0.25, mu = L/4).

Span corruption follows T5's `random_spans_noise_mask`: round(L*r) noise tokens (at least 1,
at most L-1) cut into max(1, round(noise/mu)) spans; noise and non-noise lengths are uniformly
random compositions, non-noise first. So the density is r up to rounding, and the mean span is
mu up to rounding *when L*r >= mu*: a shorter text still gets one span, of round(L*r) tokens
(T5 and UL2's code do the same; e.g. mu=64, r=0.15 on 200 tokens gives one 30-token span).
Spans are also capped at the number of sentinels (each span needs its own).

Every draw comes from a generator the caller passes (`corrupt`) or one seeded by (seed, step)
(`make_batch`): never the global RNG, so a batch is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raptr_cli.errors import UserError
from raptr_cli.objectives.config import DenoiserConfig, default_denoisers, mixture_head_fraction

_SALT = 0x554C32  # "UL2": keeps this stream apart from other (seed, step)-seeded samplers


@dataclass
class UL2Config:
    """The mixture: which denoisers, with which sampling weights."""

    denoisers: list[DenoiserConfig] = field(default_factory=default_denoisers)
    """Denoisers to sample from, one per row (a TOML array of tables: [[ul2.denoisers]])."""

    def __post_init__(self) -> None:
        # Accept plain dicts (as a TOML loader produces) so recipes need no custom hook.
        self.denoisers = [DenoiserConfig(**d) if isinstance(d, Mapping) else d for d in self.denoisers]
        problems = [p for i, d in enumerate(self.denoisers) for p in d.problems(f"denoisers[{i}]")]
        if not self.denoisers or sum(d.weight for d in self.denoisers) <= 0:
            problems.append("denoisers needs at least one entry with weight > 0")
        if problems:
            raise UserError(
                "invalid UL2 objective config",
                hint="Fix the listed denoiser keys (see DenoiserConfig).",
                problems=problems,
            )

    def probabilities(self) -> np.ndarray:
        """Sampling probability of each denoiser, (n_denoisers,)."""
        w = np.array([d.weight for d in self.denoisers], dtype=np.float64)
        return w / w.sum()


# ------------------------------------------------------------------------------ corruption
def _numpy_rng(rng: np.random.Generator | torch.Generator) -> np.random.Generator:
    """A numpy Generator; a torch.Generator seeds one with a single draw (advancing it)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
    raise TypeError(f"rng must be a numpy Generator or torch.Generator, got {type(rng).__name__}")


def span_plan(length: int, rate: float, mean_span: float, max_spans: int) -> tuple[int, int]:
    """(noise tokens, spans) for a text of `length` >= 2 tokens: T5's rounding, plus caps so
    every span and every gap between spans is at least one token and has a sentinel."""
    n_noise = min(max(int(round(length * rate)), 1), length - 1)
    n_spans = max(int(round(n_noise / mean_span)), 1)
    return n_noise, max(1, min(n_spans, max_spans, n_noise, length - n_noise))


def _random_segmentation(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random composition of n into k positive parts, (k,) (T5's segmentation)."""
    cuts = np.sort(rng.choice(n - 1, size=k - 1, replace=False)) + 1 if k > 1 else np.empty(0, int)
    return np.diff(np.concatenate(([0], cuts, [n])))


def _prefix_split(length: int, rate: float, rng: np.random.Generator) -> int:
    """Target length for the prefix LM: fraction ~ U(max(0, 2r-1), min(1, 2r)) (mean r),
    rounded into 1..length-1 so both parts are non-empty."""
    frac = rng.uniform(max(0.0, 2 * rate - 1), min(1.0, 2 * rate))
    return min(max(int(round(frac * length)), 1), length - 1)


def corrupt(
    tokens: Sequence[int],
    d: DenoiserConfig,
    rng: np.random.Generator | torch.Generator,
    sentinel_ids: Sequence[int],
    *,
    paradigm_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """Corrupt one example into T5-format (inputs, targets).

    Span: inputs = [paradigm] + text with span i replaced by sentinel i; targets = for each span,
    sentinel i then its tokens. Prefix: inputs = [paradigm] + head, targets = tail.
    Example (span), text a b c d e f g with spans "c d" and "g":
        inputs  = [NLU] a b <extra_id_0> e f <extra_id_1>
        targets = <extra_id_0> c d <extra_id_1> g
    `paradigm_id=None` omits the mode token. A text shorter than 2 tokens cannot be split:
    it all goes to the inputs and the targets are empty.
    """
    gen = _numpy_rng(rng)
    toks = list(tokens)
    head = [] if paradigm_id is None else [int(paradigm_id)]
    L = len(toks)
    if L < 2:
        return head + toks, []
    if d.kind == "prefix":
        n_t = _prefix_split(L, d.rate, gen)
        return head + toks[: L - n_t], toks[L - n_t :]
    if not sentinel_ids:
        raise UserError(
            "span corruption needs sentinel tokens, got none",
            hint="Use a tokenizer from train_bpe (it adds <extra_id_N> sentinels).",
        )
    n_noise, n_spans = span_plan(L, d.rate, d.mean_span, len(sentinel_ids))
    noise = _random_segmentation(n_noise, n_spans, gen).tolist()  # python ints: faster slicing
    keep = _random_segmentation(L - n_noise, n_spans, gen).tolist()
    inputs, targets, pos = head, [], 0
    for i in range(n_spans):  # non-noise run, then noise span i
        s = int(sentinel_ids[i])
        inputs += toks[pos : pos + keep[i]]
        inputs.append(s)
        pos += keep[i]
        targets.append(s)
        targets += toks[pos : pos + noise[i]]
        pos += noise[i]
    return inputs, targets


def restore(
    inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int], has_paradigm: bool = True
) -> list[int]:
    """Inverse of span `corrupt`: the original text from (inputs, targets). For debugging and
    data previews; a prefix-LM pair is simply inputs[1:] + targets."""
    where = {int(s): i for i, s in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for t in targets:
        if int(t) in where:
            current = spans.setdefault(where[int(t)], [])
        elif current is not None:
            current.append(int(t))
    out: list[int] = []
    for t in list(inputs)[1 if has_paradigm else 0 :]:
        out += spans.get(where[int(t)], []) if int(t) in where else [int(t)]
    return out


def _fit_length(L: int, d: DenoiserConfig, seq_len: int, max_spans: int) -> int:
    """Longest text length <= L whose layout fits seq_len: 1 (paradigm) + L + 2 * spans
    (each span adds a sentinel to both inputs and targets); 1 + L for the prefix LM."""

    def need(n: int) -> int:
        if d.kind == "prefix" or n < 2:
            return 1 + n
        return 1 + n + 2 * span_plan(n, d.rate, d.mean_span, max_spans)[1]

    n = min(L, seq_len - 1)
    # spans(n) is non-decreasing in n, so need(n - e) <= need(n) - e: one step always suffices.
    if (excess := need(n) - seq_len) > 0:
        n -= excess
    return max(n, 0)


def make_batch(
    examples: Sequence[Sequence[int]],
    seq_len: int,
    seed: int,
    step: int,
    cfg: UL2Config,
    specials: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """One UL2 batch for the decoder-only prefix LM, a pure function of its arguments.

    Per row: draw a denoiser (weights of `cfg`), crop the example to a random window that fits,
    corrupt it, and lay out inputs I then targets T as one sequence x = I ++ T, padded:
        prefix_len = len(I)   (attention is bidirectional over x[:prefix_len], causal after)
        labels[t]  = (I ++ T ++ [EOS])[t + 1] for prefix_len-1 <= t < len(I)+len(T), else -100
    i.e. position prefix_len-1+j predicts T[j], and the last target position predicts EOS.
    Example: I = [NLU] a <s0> d, T = <s0> b c, seq_len 9:
        input_ids = [NLU]  a     <s0>  d     <s0>  b     c     PAD   PAD
        labels    = -100   -100  -100  <s0>  b     c     EOS   -100  -100
        prefix_len = 4
    An example that yields no targets (fewer than 2 tokens) has no labels at all.

    specials: from `ul2_special_ids`: "pad", "eos", each denoiser's paradigm token (e.g.
    "[NLU]") and "sentinels" (list of ids). Returns input_ids, labels (B, seq_len) long,
    prefix_len (B,) long and denoiser (B,) long (index into cfg.denoisers).
    The generator is seeded by (seed, step, a fixed salt), so a resumed run replays it.
    """
    missing = [k for k in {"pad", "eos", "sentinels", *(d.paradigm for d in cfg.denoisers)} if k not in specials]
    if missing:
        raise UserError(
            "the tokenizer lacks tokens the UL2 objective needs",
            hint="Train the tokenizer with train_bpe, or add these special tokens.",
            problems=[f"missing {k}" for k in sorted(missing)],
        )
    if seq_len < 3:
        raise UserError(
            f"train.seq_len = {seq_len} is too short for UL2", hint="Use at least a few dozen tokens per sequence."
        )
    sentinels = list(specials["sentinels"])
    pad, eos = int(specials["pad"]), int(specials["eos"])
    rng = np.random.default_rng([_SALT, int(seed) % 2**63, int(step)])
    B = len(examples)
    choice = rng.choice(len(cfg.denoisers), size=B, p=cfg.probabilities())
    input_ids = np.full((B, seq_len), pad, dtype=np.int64)
    labels = np.full((B, seq_len), -100, dtype=np.int64)
    prefix_len = np.zeros(B, dtype=np.int64)
    for b, (ex, k) in enumerate(zip(examples, choice)):
        d = cfg.denoisers[k]
        n = _fit_length(len(ex), d, seq_len, len(sentinels))
        start = int(rng.integers(0, len(ex) - n + 1))
        inputs, targets = corrupt(ex[start : start + n], d, rng, sentinels, paradigm_id=int(specials[d.paradigm]))
        seq = inputs + targets
        input_ids[b, : len(seq)] = seq
        prefix_len[b] = len(inputs)
        if targets:
            labels[b, len(inputs) - 1 : len(seq)] = targets + [eos]
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "prefix_len": torch.from_numpy(prefix_len),
        "denoiser": torch.from_numpy(choice.astype(np.int64)),
    }


class UL2Objective:
    """`objectives.base.Objective` for the decoder: per-document example rows (-1 padded) -> one
    `make_batch` each step; a row's group is its denoiser."""

    def __init__(self, section: Any, specials: dict, vocab_size: int, seq_len: int):
        """section: the recipe's [objective] (its denoisers); specials: `ul2_special_ids`."""
        self.cfg = UL2Config(list(section.denoisers))
        self.specials = specials
        self.seq_len = seq_len
        self.group_names = [d.name for d in self.cfg.denoisers]
        self.head_fraction = mixture_head_fraction(self.cfg.denoisers)

    def batch(self, rows: torch.Tensor, seed: int, step: int) -> tuple[dict, torch.Tensor]:
        examples = [r[r >= 0].tolist() for r in rows]
        out = make_batch(examples, self.seq_len, seed, step, self.cfg, self.specials)
        groups = out.pop("denoiser")
        return out, groups
