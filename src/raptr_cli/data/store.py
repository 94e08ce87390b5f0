"""The prepared token store: packed blocks in fixed-size numpy shards on disk, memory-mapped.

Why raw numpy shards and not Arrow (`datasets.save_to_disk`): a block is a fixed-length row of
token ids, so a shard is just a C-order (blocks, seq_len) array, and block i lives in shard
i // S at row i % S. `np.memmap` gives zero-copy random access with no per-row offsets and no
dependency at training time, the page cache is shared by every rank of a machine, and a shard
written once by `store_build` is final, which makes an interrupted build resumable shard by
shard. Arrow would add a list column (offsets) and its own cache layout for no gain here;
nanoGPT, torchtitan and Composer's Streaming use the same flat-shard idea. Tokens are uint16
when the vocabulary allows (half of int32's disk and page cache), else uint32.

Layout of a store folder ``<blocks cache>/store-<key>/``::

    manifest.json        format, key, layout, seq_len, dtype, shard_blocks, blocks, documents,
                         characters, tokenizer sha256, sources (file name, bytes, sha256), part,
                         shards [{file, blocks, sha256}]
    shard-00000.bin ...  (blocks, seq_len) tokens; every shard but the last holds shard_blocks

The key hashes everything the blocks depend on (format, layout, seq_len, tokenizer, the files'
fingerprints, text field, which documents: stream.py), so a changed corpus or tokenizer names a
different store. A folder with a manifest is complete: it appears by renaming the finished
build folder (store_build.py).

Reading: `TokenStore.view()` is a `Blocks`, which the trainer indexes like the (N, seq_len) int32
tensor it replaces (`len`, `blocks[tensor_of_indices]`, `blocks[a:b]`), gathering only the rows
asked for. Sequential scans (`chunks`, used by the unigram floor) read the files with plain
reads rather than through the map, so they leave the process's RSS alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

STORE_FORMAT = "raptr-store-v1"  # bump when the layout changes
MANIFEST = "manifest.json"
SHARD_BYTES = 64 << 20  # target shard size: large enough for few files, small enough to resume cheaply


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id and the padding sentinel (the dtype's max) fit, else uint32."""
    return np.dtype(np.uint16) if vocab_size < np.iinfo(np.uint16).max else np.dtype(np.uint32)


def tokenizer_sha(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def store_key(sources: list[dict], text_field: str, part: dict, tok, seq_len: int, layout: str) -> str:
    """The name of the store holding `part` of the corpus `sources` tokenised by `tok`."""
    ident = {
        "format": STORE_FORMAT,
        "layout": layout,
        "seq_len": seq_len,
        "tokenizer": tokenizer_sha(tok),
        "sources": sources,
        "text_field": text_field,
        "part": part,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


class TokenStore:
    """A complete store folder, its shards memory-mapped read-only (lazily, on first access)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        m = self.manifest
        self.seq_len, self.shard_blocks, self.n = m["seq_len"], m["shard_blocks"], m["blocks"]
        self.dtype = np.dtype(m["dtype"])
        self.padded = m["layout"] == "examples"  # rows end in the dtype's max, read back as -1
        self._maps: dict[int, np.memmap] = {}

    @property
    def documents(self) -> int:
        return self.manifest["documents"]

    def _map(self, s: int) -> np.memmap:
        if s not in self._maps:
            sh = self.manifest["shards"][s]
            self._maps[s] = np.memmap(
                self.folder / sh["file"], dtype=self.dtype, mode="r", shape=(sh["blocks"], self.seq_len)
            )
        return self._maps[s]

    def _decode(self, rows: np.ndarray) -> torch.Tensor:
        out = rows.astype(np.int32)  # (n, seq_len): the int32 blocks of the in-memory path
        if self.padded:
            out[rows == np.iinfo(self.dtype).max] = -1
        return torch.from_numpy(out)

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """Blocks `index` (any order, repeats allowed) as an (len(index), seq_len) int32 tensor."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"block index out of range 0..{self.n - 1}")
        out = np.empty((index.size, self.seq_len), dtype=self.dtype)
        shard, row = np.divmod(index, self.shard_blocks)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._map(int(s))[row[sel]]
        return self._decode(out)

    def scan(self, index: np.ndarray | None, chunk: int) -> Iterator[torch.Tensor]:
        """The rows of `index` (sorted; None = all) in order, `chunk` at a time, by plain reads."""
        row_bytes = self.seq_len * self.dtype.itemsize
        for s, sh in enumerate(self.manifest["shards"]):
            lo = s * self.shard_blocks
            hi = lo + sh["blocks"]
            if index is None:
                want = None
            else:
                a, b = np.searchsorted(index, [lo, hi])
                if a == b:
                    continue
                want = index[a:b] - lo
            with open(self.folder / sh["file"], "rb") as fh:
                for c in range(0, sh["blocks"], chunk):
                    n = min(chunk, sh["blocks"] - c)
                    fh.seek(c * row_bytes)
                    rows = np.fromfile(fh, dtype=self.dtype, count=n * self.seq_len).reshape(n, self.seq_len)
                    if want is not None:
                        pick = want[(want >= c) & (want < c + n)] - c
                        if not pick.size:
                            continue
                        rows = rows[pick]
                    yield self._decode(rows)

    def view(self, index: np.ndarray | torch.Tensor | None = None) -> Blocks:
        return Blocks(self, None if index is None else np.asarray(index))


class Blocks:
    """Rows of a token store (all, or a sorted index of them), used like an (N, seq_len) int32 tensor.

    The trainer needs only `len`, `shape` and indexing by a tensor of row numbers or a slice, and
    those gather just the rows asked for. Anything else a tensor has (`.flatten()`, `torch.equal`)
    works by materialising every row: meant for small data and tests.
    """

    def __init__(self, store: TokenStore, index: np.ndarray | None):
        self.store = store
        # int32 row numbers halve the index's memory; a store of 2^31 blocks is out of reach
        self.index = None if index is None else index.astype(np.int64 if store.n >= 2**31 else np.int32)

    def __len__(self) -> int:
        return self.store.n if self.index is None else len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.store.seq_len))

    @property
    def dtype(self) -> torch.dtype:
        return torch.int32

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            r = range(len(self))[key]  # no arange over the whole store for one eval batch
            rows = np.arange(r.start, r.stop, r.step)
        elif isinstance(key, int):
            return self[np.array([key])][0]
        else:
            rows = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
            rows = np.where(rows < 0, rows + len(self), rows)
        if self.index is not None:
            rows = self.index[rows]
        return self.store.rows(rows)

    def chunks(self, rows: int = 8192) -> Iterator[torch.Tensor]:
        """Every row in order, `rows` at a time (without growing the process's RSS)."""
        yield from self.store.scan(self.index, rows)

    def tensor(self) -> torch.Tensor:
        """All rows as one tensor (small data only)."""
        return self[:]

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("store", "index"):
            raise AttributeError(name)
        return getattr(self.tensor(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def real(a):
            return a.tensor() if isinstance(a, Blocks) else a

        return func(*[real(a) for a in args], **{k: real(v) for k, v in (kwargs or {}).items()})

    def __repr__(self) -> str:
        return f"Blocks({len(self)} x {self.store.seq_len} of {self.store.folder.name})"


def open_store(folder: Path) -> TokenStore | None:
    """The store in `folder` if it is complete and readable, else None (it will be rebuilt)."""
    try:
        store = TokenStore(folder)
        if store.manifest.get("format") != STORE_FORMAT:
            return None
        for sh in store.manifest["shards"]:
            size = (folder / sh["file"]).stat().st_size
            if size != sh["blocks"] * store.seq_len * store.dtype.itemsize:
                return None
        return store
    except (OSError, ValueError, KeyError, TypeError):
        return None
