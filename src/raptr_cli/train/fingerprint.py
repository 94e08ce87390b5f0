"""The data a run trains on, fingerprinted, so `--resume` refuses a corpus that changed under it.

The fingerprint hashes the packed train and eval blocks (shape, order, token ids), not the files: a
resume replays the data order as a pure function of (seed, step) over these blocks, so they are
what must be the same. That also covers a reordered or edited file whose block count is unchanged,
another tokenizer and another split. Stored in trainer_state.json as "data_fingerprint".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import UserError
from ..recipe import Recipe
from .state import TrainState

KEY = "data_fingerprint"


def data_fingerprint(train: torch.Tensor, eval_: torch.Tensor) -> str:
    """sha256 (24 hex digits) of the packed blocks; about 1 s per GB of tokens."""
    h = hashlib.sha256()
    for t in (train, eval_):
        h.update(f"{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())  # no two splits collide
        # a token store's view (data/store.py) is read a chunk of rows at a time: RSS stays flat
        for chunk in t.chunks() if hasattr(t, "chunks") else (t,):
            h.update(chunk.contiguous().numpy())
    return h.hexdigest()[:24]


def check_same_data(ckpt: Path, saved: dict, now: TrainState, recipe: Recipe) -> str | None:
    """Refuse to resume from `ckpt` (trainer state `saved`) on data other than this run's (`now`).

    Checkpoints written before fingerprints existed carry only the block counts: those are compared
    and a note saying so is returned (the resumed run's own checkpoints carry the fingerprint).
    """
    d = recipe.data
    named = f"data.train = {d.train}" + (f", data.eval = {d.eval}" if d.eval else "")
    blocks_then, blocks_now = saved.get("data_blocks"), now.data_blocks
    if saved.get(KEY) is None:
        if blocks_then is not None and blocks_then != blocks_now:
            raise UserError(
                f"{ckpt}: the data changed since the run started ({blocks_then[0]} train / {blocks_then[1]} eval "
                f"blocks then, {blocks_now[0]} / {blocks_now[1]} now, from {named}), so the resumed run would "
                "see a different data order",
                hint="Resume with the data the run was started with (the files named in OUT/recipe.toml).",
            )
        return (
            f"{ckpt} predates data fingerprints: only the block counts of {named} were checked "
            "(a reordered or edited file with as many blocks would go unnoticed); this run's new "
            "checkpoints record the fingerprint"
        )
    if saved[KEY] != now.data_fingerprint:
        raise UserError(
            f"--resume: the training data changed since {ckpt} was written: {named} now packs into other "
            f"token blocks (data fingerprint {saved[KEY]} then, {now.data_fingerprint} now; "
            f"{blocks_then[0] if blocks_then else '?'} / {blocks_now[0]} train blocks), so the resumed run "
            "would see different batches than the run it continues",
            hint="Put back the files the run was started with (named in OUT/recipe.toml, same content and "
            "line order), or start a new run (another --out, or --overwrite).",
        )
    return None
