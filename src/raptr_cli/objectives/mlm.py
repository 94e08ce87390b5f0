"""BERT's masked-LM objective: dynamic masking (Devlin et al. 2019, sec. 3.1), reproducible from
(seed, step), over packed [CLS] ... [SEP] blocks.

Of the non-special positions, each is chosen for prediction with probability
`mlm_probability`; a chosen position becomes [MASK] with prob. 0.8, a random token with 0.1,
and stays unchanged with 0.1. Labels hold the original id at chosen positions, -100 elsewhere
(the ignore_index of `F.cross_entropy`).

All draws come from a CPU `torch.Generator` seeded by (seed, step), never the global RNG, so
every data-parallel rank, a resumed run and a test get the same masks, on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from raptr_cli.data.packing import seed_for

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    seed: int,
    step: int,
    mlm_probability: float,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch `input_ids` (B, T) -> (inputs (B, T) int64, labels (B, T) int64).

    Special tokens are never chosen, and random replacements never insert a special token.
    At least one position per batch is chosen, so the loss is never an empty mean (NaN).
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    if mask_token_frac < 0 or random_token_frac < 0 or mask_token_frac + random_token_frac > 1:
        raise ValueError(
            f"mask_token_frac={mask_token_frac} and random_token_frac={random_token_frac} "
            "must be >= 0 and sum to at most 1"
        )
    device = input_ids.device
    ids = input_ids.detach().to("cpu", torch.long)  # (B, T)
    specials = torch.tensor(sorted(set(int(s) for s in special_ids)), dtype=torch.long)
    candidate = ~torch.isin(ids, specials)  # (B, T) bool
    if not candidate.any():
        raise ValueError("mask_tokens: the batch holds only special tokens; nothing to predict")

    gen = torch.Generator().manual_seed(seed_for("mask", seed, step))
    u_choose = torch.rand(ids.shape, generator=gen)  # (B, T) decides which positions
    u_action = torch.rand(ids.shape, generator=gen)  # (B, T) decides mask/random/keep
    chosen = (u_choose < mlm_probability) & candidate
    if not chosen.any():
        # Deterministic fallback: the candidate with the smallest draw.
        flat = torch.where(candidate, u_choose, torch.full_like(u_choose, 2.0)).flatten()
        chosen.view(-1)[flat.argmin()] = True

    to_mask = chosen & (u_action < mask_token_frac)
    keep_from = mask_token_frac + random_token_frac
    to_random = chosen & (u_action >= mask_token_frac) & (u_action < keep_from)

    # Random replacements are drawn from the non-special ids only.
    allowed = torch.arange(vocab_size, dtype=torch.long)
    allowed = allowed[~torch.isin(allowed, specials)]  # (V - n_special,)
    random_ids = allowed[torch.randint(len(allowed), ids.shape, generator=gen)]  # (B, T)

    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs.to(device), labels.to(device)


class MLMObjective:
    """`objectives.base.Objective` for BERT: a block of token ids -> (masked ids, labels); no groups."""

    def __init__(self, section: Any, specials: dict, vocab_size: int, seq_len: int):
        """section: the recipe's [objective]; specials: `data.tokenizer.special_ids` of the tokenizer
        (none of them is ever chosen or inserted); seq_len: unused, the blocks are already packed."""
        self.group_names: list[str] = []
        self.head_fraction = section.mlm_probability
        self.kw = dict(
            mlm_probability=section.mlm_probability,
            mask_id=specials["mask"],
            vocab_size=vocab_size,
            special_ids=sorted({v for v in specials.values() if isinstance(v, int)}),
            mask_token_frac=section.mask_token_frac,
            random_token_frac=section.random_token_frac,
        )

    def batch(self, rows: torch.Tensor, seed: int, step: int) -> tuple[dict, None]:
        inputs, labels = mask_tokens(rows.long(), seed=seed, step=step, **self.kw)
        return {"input_ids": inputs, "labels": labels}, None
