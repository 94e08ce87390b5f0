"""The context-free floor: what a model that learned only word frequencies scores.

Definition (docs: README "The context-free floor"). Let S be the special-token ids of the run
(the tokenizer's specials the objective knows: BERT's [PAD] [UNK] [CLS] [SEP] [MASK]; UL2's
[PAD] [BOS] [EOS] [UNK], paradigm tokens and sentinels), V the vocabulary size, c(w) the count of
token w in the run's *train split* (the packed train blocks / UL2 train examples, padding and
specials not counted) and N = sum of c(w) over w not in S. The unigram model is

    p(w) = (c(w) + 0.5) / (N + 0.5 * (V - |S|))   for w not in S,     p(s) = 0 for s in S

(add-0.5 smoothing over the vocabulary minus the specials). The floor `unigram_loss` is its mean
cross-entropy -log p(y) over the eval's scored positions y whose label is not special, with the
eval's own masks: for MLM that is every masked position (specials are never masked); for UL2 the
target text tokens (the sentinel and [EOS] targets are left out: a unigram over text cannot
predict markers, and giving them smoothed mass would inflate the floor). `loss_below_unigram` is
unigram_loss minus the model's loss at those same positions, so for MLM it is exactly
unigram_loss - eval_loss; for UL2 the model's loss there is reported too
(`eval_loss_at_unigram_positions`).

The counts are taken once per run and cached in OUT/unigram.json, keyed by a fingerprint of the
train split and the tokenizer, so `raptr eval` (also with --data, which does not read the train
data) does not recount; each eval only looks up -log p at its labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

SMOOTHING = 0.5
"""Add-k pseudo-count of every non-special token."""

FLOOR_MARGIN = 0.5
"""A final model less than this many nats below the floor gets a warning in the run summary.
Why 0.5: runs 0.07-0.15 below the floor were indistinguishable from word-frequency models (seed
and tokenizer noise alone moved losses by up to 0.12), while a model that uses context sits a nat
or more below; 0.5 is clear of the noise and below the demo recipes' target."""

CACHE_FILE = "unigram.json"
FORMAT = "raptr-unigram-v1"


def special_id_list(specials: dict) -> list[int]:
    """Every special id in a specials dict (ints, and lists such as UL2's sentinels), sorted."""
    out: set[int] = set()
    for v in specials.values():
        if isinstance(v, int) and not isinstance(v, bool):
            out.add(v)
        elif isinstance(v, (list, tuple)):
            out.update(int(x) for x in v)
    return sorted(out)


def count_tokens(rows: torch.Tensor, vocab_size: int, special_ids: list[int]) -> torch.Tensor:
    """Counts (vocab_size,) int64 of the non-special tokens in `rows` (-1 padding ignored)."""
    if hasattr(rows, "chunks"):  # a token store's blocks: counted a chunk at a time, never whole
        return sum(
            (count_tokens(c, vocab_size, special_ids) for c in rows.chunks()), torch.zeros(vocab_size, dtype=torch.long)
        )
    ids = rows.reshape(-1).long()
    ids = ids[(ids >= 0) & (ids < vocab_size)]
    counts = torch.bincount(ids, minlength=vocab_size)
    counts[torch.tensor(special_ids, dtype=torch.long)] = 0
    return counts


def tokenizer_fingerprint(tok) -> str:
    """sha256 of the id -> token map (not the file bytes: the same vocabulary serialised twice may
    differ in formatting)."""
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:24]


def train_fingerprint(train: torch.Tensor) -> str:
    h = hashlib.sha256(repr(tuple(train.shape)).encode())
    # a token store's blocks chunk by chunk: the same digest as hashing the whole tensor
    for t in train.chunks() if hasattr(train, "chunks") else [train]:
        h.update(t.contiguous().to(torch.int32).numpy().tobytes())
    return h.hexdigest()[:24]


@dataclass
class Unigram:
    counts: torch.Tensor  # (V,) int64, zero at the specials
    special_ids: list[int]
    train_sha: str
    tokenizer_sha: str

    @property
    def vocab_size(self) -> int:
        return int(self.counts.numel())

    def log_probs(self) -> torch.Tensor:
        """log p(w), (V,) float64; -inf at the special ids (outside the support). Memoised: every
        eval of a run looks its labels up in the same table."""
        if getattr(self, "_logp", None) is None:
            self._logp = self._log_probs()
        return self._logp

    def _log_probs(self) -> torch.Tensor:
        V, S = self.vocab_size, len(self.special_ids)
        c = self.counts.double() + SMOOTHING
        logp = c.log() - torch.log(torch.tensor(float(self.counts.sum()) + SMOOTHING * (V - S), dtype=torch.float64))
        logp[torch.tensor(self.special_ids, dtype=torch.long)] = float("-inf")
        return logp

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "smoothing": SMOOTHING,
            "vocab_size": self.vocab_size,
            "special_ids": self.special_ids,
            "train_sha256": self.train_sha,
            "tokenizer_sha256": self.tokenizer_sha,
            "train_tokens": int(self.counts.sum()),
            "counts": self.counts.tolist(),
        }

    def save(self, out_dir: Path) -> Path:
        path = Path(out_dir) / CACHE_FILE
        fd, tmp = tempfile.mkstemp(prefix=".unigram-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_json(), fh)
        os.replace(tmp, path)  # readers never see half a file
        return path


def fit(train: torch.Tensor, tok, specials: dict) -> Unigram:
    """Count the run's train split."""
    sp = special_id_list(specials)
    V = tok.get_vocab_size()
    return Unigram(count_tokens(train, V, sp), sp, train_fingerprint(train), tokenizer_fingerprint(tok))


def load_cached(run_dir: Path, tok, specials: dict, train: torch.Tensor | None = None) -> Unigram | None:
    """The run's cached counts if they belong to this tokenizer (and to `train`, when given);
    None when absent, unreadable or stale."""
    try:
        d = json.loads((Path(run_dir) / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    sp = special_id_list(specials)
    if (
        not isinstance(d, dict)
        or d.get("format") != FORMAT
        or d.get("smoothing") != SMOOTHING
        or d.get("vocab_size") != tok.get_vocab_size()
        or d.get("special_ids") != sp
        or d.get("tokenizer_sha256") != tokenizer_fingerprint(tok)
        or len(d.get("counts", ())) != tok.get_vocab_size()
    ):
        return None
    if train is not None and len(train) and d.get("train_sha256") != train_fingerprint(train):
        return None
    return Unigram(torch.tensor(d["counts"], dtype=torch.long), sp, d["train_sha256"], d["tokenizer_sha256"])


def for_run(run_dir: Path | None, train: torch.Tensor, tok, specials: dict) -> Unigram:
    """The cached counts of `run_dir` when they match this train split and tokenizer, else a fresh count."""
    cached = load_cached(run_dir, tok, specials, train) if run_dir is not None else None
    return cached if cached is not None else fit(train, tok, specials)


KEYS = ("unigram_loss", "loss_below_unigram")
"""The floor's keys, copied from an eval row into stage_end and run_end rows."""

AT_FLOOR_POSITIONS = "eval_loss_at_unigram_positions"
"""UL2's eval rows: the model's loss at the floor's positions (the text targets), which differs from
eval_loss (that also scores the sentinel and [EOS] targets)."""


def floor_keys(ev: dict) -> dict:
    """The floor's keys of an eval row, to copy into a stage_end or run_end row (UL2's also its
    loss at the floor's positions)."""
    return {k: ev.get(k) for k in KEYS} | (
        {AT_FLOOR_POSITIONS: ev[AT_FLOOR_POSITIONS]} if AT_FLOOR_POSITIONS in ev else {}
    )


def floor_fields(unigram_sum: float, model_sum: float, n: int) -> dict:
    """The eval row's floor keys from the sums over the floor's positions."""
    if n == 0:
        return {"unigram_loss": None, "loss_below_unigram": None, "unigram_tokens": 0}
    u = unigram_sum / n
    return {"unigram_loss": u, "loss_below_unigram": u - model_sum / n, "unigram_tokens": n}


def floor_warning(row: dict, margin: float = FLOOR_MARGIN) -> str | None:
    """A warning when a (final) eval row is not clearly below the floor, else None."""
    below, floor = row.get("loss_below_unigram"), row.get("unigram_loss")
    if below is None or floor is None or below >= margin:
        return None
    where = f"{below:.3f} nats below" if below >= 0 else f"{-below:.3f} nats above"
    return (
        f"the final model is {where} the context-free floor (train-split unigram loss {floor:.4f} "
        f"at the same positions; margin {margin} nats): it has learned little beyond word "
        "frequencies, so its loss says little about quality. Train longer or with a better recipe."
    )


__all__ = [
    "SMOOTHING",
    "FLOOR_MARGIN",
    "AT_FLOOR_POSITIONS",
    "floor_keys",
    "CACHE_FILE",
    "Unigram",
    "special_id_list",
    "count_tokens",
    "fit",
    "load_cached",
    "for_run",
    "floor_fields",
    "floor_warning",
]
