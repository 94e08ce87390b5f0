"""Tokenise once, pack into fixed-length blocks, and define the data order as a pure function.

Packing (BERT pretraining without next-sentence prediction, as in RoBERTa's FULL-SENTENCES)::

    stream = doc_0 [SEP] doc_1 [SEP] ... doc_{n-1}          (no specials inside documents)
    row r  = [CLS] stream[r*c : (r+1)*c] [SEP],  c = seq_len - 2

The ragged tail (< c tokens) is dropped. Every row is full, so no [PAD] and no attention mask
are needed. The blocks are cached on disk keyed by (documents, tokenizer, seq_len).

Data order: `batch_indices(step, ...)` depends only on (seed, step); resuming at step s needs
no replay of steps 0..s-1.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from raptr_cli.data.tokenizer import special_ids
from raptr_cli.errors import UserError

PACK_FORMAT = "raptr-pack-v1"  # bump when the layout changes, to invalidate old caches
ENCODE_BATCH = 256  # documents per encode_batch call: bounds the memory of Encoding objects


def seed_for(*parts: object) -> int:
    """A 63-bit generator seed from a tuple like ("data", seed, epoch).

    Hashing (rather than seed + epoch) keeps the streams of neighbouring seeds unrelated and
    gives each use (data order, masking, holdout) its own stream via the leading tag.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _cache_key(documents: Sequence[str], tokenizer: Tokenizer, seq_len: int, layout: str = "bert") -> str:
    h = hashlib.sha256(f"{PACK_FORMAT}|{seq_len}|{'' if layout == 'bert' else layout}".encode())
    h.update(hashlib.sha256(tokenizer.to_str().encode()).digest())
    for doc in documents:
        data = doc.encode("utf-8", errors="surrogatepass")
        # Length prefix: ["ab", "c"] and ["a", "bc"] must not collide.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _tokenize(documents: Sequence[str], tokenizer: Tokenizer) -> list[np.ndarray]:
    """Token ids of each document, without specials. Module-level so tests can spy on it."""
    # A copy with truncation/padding off: a tokenizer.json copied from elsewhere may carry
    # e.g. truncation to 512, which would silently cut every document.
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    out: list[np.ndarray] = []
    for i in range(0, len(documents), ENCODE_BATCH):
        encs = tok.encode_batch(list(documents[i : i + ENCODE_BATCH]), add_special_tokens=False)
        out += [np.asarray(e.ids, dtype=np.int32) for e in encs]
    return out


def _pack(token_lists: list[np.ndarray], seq_len: int, cls_id: int, sep_id: int) -> torch.Tensor:
    pieces: list[np.ndarray] = []
    sep = np.array([sep_id], dtype=np.int32)
    for ids in token_lists:
        if len(ids) == 0:
            continue  # an empty document would put [SEP] [SEP] in the stream
        if pieces:
            pieces.append(sep)
        pieces.append(ids)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    c = seq_len - 2
    n = len(stream) // c
    body = stream[: n * c].reshape(n, c)  # (N, seq_len-2)
    rows = np.empty((n, seq_len), dtype=np.int32)  # (N, seq_len)
    rows[:, 0] = cls_id
    rows[:, 1:-1] = body
    rows[:, -1] = sep_id
    return torch.from_numpy(rows)


EXAMPLE_PAD = -1  # marks the unused tail of an example row (layout "examples")
MIN_EXAMPLE = 8  # a document tail shorter than this is dropped (too short to denoise)


def _chunk(token_lists: list[np.ndarray], length: int) -> torch.Tensor:
    """Layout "examples": each document cut into consecutive chunks of `length` tokens, one per
    row, never crossing a document boundary (UL2 examples); short tails padded with -1."""
    rows: list[np.ndarray] = []
    for ids in token_lists:
        for lo in range(0, len(ids), length):
            piece = ids[lo : lo + length]
            if len(piece) >= MIN_EXAMPLE:
                row = np.full(length, EXAMPLE_PAD, dtype=np.int32)
                row[: len(piece)] = piece
                rows.append(row)
    return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, length), dtype=np.int32))


def pack_documents(
    documents: Sequence[str],
    tokenizer: Tokenizer,
    seq_len: int,
    cache_dir: Path | None,
    layout: str = "bert",
    key: str = "data.train",
) -> torch.Tensor:
    """Tokenise and pack `documents` into int32 blocks of shape (N, seq_len); `key` (the recipe
    key the documents came from) names them when they are too small.

    layout "bert": a [CLS] chunk [SEP] stream packing (below); "examples": per-document chunks
    padded with -1 (`_chunk`), for objectives that build their own sequences (UL2).

    With `cache_dir`, the blocks are stored as ``packed-<key>.safetensors`` and a rerun with the
    same documents, tokenizer and seq_len loads them instead of tokenising. `key` names the
    documents in the error raised when they fill no block.
    """
    if seq_len < 3:
        raise UserError(
            f"`train.seq_len` = {seq_len} is too short.",
            hint="A block is [CLS] tokens [SEP]: seq_len must be at least 3 (128-512 is typical).",
        )
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"packed-{_cache_key(documents, tokenizer, seq_len, layout)}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["blocks"]
            except Exception:  # a damaged cache file is rebuilt, not fatal
                pass
    if layout == "examples":
        blocks = _chunk(_tokenize(documents, tokenizer), seq_len)
    else:
        ids = special_ids(tokenizer)
        blocks = _pack(_tokenize(documents, tokenizer), seq_len, ids["cls"], ids["sep"])
    if blocks.shape[0] == 0:
        total = sum(len(d) for d in documents)
        raise UserError(
            f"{key} is too small for one block of train.seq_len = {seq_len} tokens "
            f"({len(documents)} documents, {total} characters).",
            hint="Add data or lower train.seq_len.",
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash mid-write must not leave a truncated cache behind.
        fd, tmp = tempfile.mkstemp(prefix=".packed-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            meta = {"format": PACK_FORMAT, "seq_len": str(seq_len)}
            save_file({"blocks": blocks}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return blocks


def _held_out_count(n: int, eval_fraction: float, unit: str, how: str, hint: str) -> int:
    """round(n * eval_fraction) held-out units, at least 1 when the fraction is > 0, at most n - 1."""
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(
            f"The eval fraction {eval_fraction} is not in [0, 1).",
            hint=f"Use e.g. 0.05 to hold out 5% of the {unit}, or 0 for no holdout.",
        )
    n_eval = 0 if eval_fraction == 0 else max(1, round(n * eval_fraction))
    if n_eval >= n:
        raise UserError(f"Holding out {n_eval} of {n} {unit}{how} would leave nothing to train on.", hint=hint)
    return n_eval


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) block numbers of `split_blocks`, each sorted (int64): the split without the
    blocks, for a token store that gathers rows on demand."""
    n_eval = _held_out_count(
        n, eval_fraction, "blocks", "", "Add data, lower the eval fraction, or give a separate `data.eval`."
    )
    gen = torch.Generator().manual_seed(seed_for("holdout", seed))
    perm = torch.randperm(n, generator=gen)
    eval_idx, _ = perm[:n_eval].sort()
    train_idx, _ = perm[n_eval:].sort()
    return train_idx, eval_idx


def split_blocks(blocks: torch.Tensor, eval_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out round(N * eval_fraction) random blocks (at least 1 when the fraction is > 0).

    Deterministic in (seed, N); both parts keep the original block order.
    """
    train_idx, eval_idx = split_indices(blocks.shape[0], eval_fraction, seed)
    return blocks[train_idx], blocks[eval_idx]


def held_out_documents(n: int, eval_fraction: float, seed: int) -> set[int]:
    """The indices of the documents `split_documents` holds out of n (validated the same way)."""
    n_eval = _held_out_count(
        n,
        eval_fraction,
        "documents",
        ' (data.eval_split = "documents")',
        'Add documents, lower data.eval_fraction, use data.eval_split = "blocks", or give a separate `data.eval`.',
    )
    gen = torch.Generator().manual_seed(seed_for("holdout-documents", seed))
    return set(torch.randperm(n, generator=gen)[:n_eval].tolist())


def split_documents(documents: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out round(n * eval_fraction) random whole documents (at least 1 when the fraction
    is > 0), as split_blocks does for blocks: deterministic in (seed, n), both parts in the
    original order, so no text of a held-out document reaches training."""
    held = held_out_documents(len(documents), eval_fraction, seed)
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


@lru_cache(maxsize=8)
def _epoch_perm(seed: int, epoch: int, n_blocks: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed_for("data", seed, epoch))
    return torch.randperm(n_blocks, generator=gen)


def batch_indices(step: int, batch_size: int, n_blocks: int, seed: int) -> torch.Tensor:
    """Block indices (batch_size,) int64 of optimizer step `step` (0-based).

    The sample stream is perm_0 ++ perm_1 ++ ..., perm_e a permutation of range(n_blocks)
    seeded by (seed, e); step s takes stream[s*B : (s+1)*B], which may span an epoch
    boundary. Only the (at most B/n_blocks + 2) epochs touched are generated.
    """
    if step < 0 or batch_size < 1 or n_blocks < 1:
        raise ValueError(f"batch_indices: bad step={step}, batch_size={batch_size}, n_blocks={n_blocks}")
    start, end = step * batch_size, (step + 1) * batch_size
    first, last = start // n_blocks, (end - 1) // n_blocks
    stream = torch.cat([_epoch_perm(seed, e, n_blocks) for e in range(first, last + 1)])
    offset = start - first * n_blocks
    return stream[offset : offset + batch_size].clone()
