"""Build a token store (store.py): stream documents in batches, tokenise them in N processes, pack
the token stream into blocks exactly as `packing.pack_documents` does, and write fixed-size shards.

Memory stays bounded whatever the corpus size: documents arrive in batches of at most BATCH_DOCS
documents / BATCH_CHARS characters, at most 2 * num_proc batches are in flight, and the packer
holds one batch's tokens plus the tail of the stream. The output does not depend on num_proc:
results are consumed in submission order and the packing runs in this process, so a store built
by 2 processes equals one built by 1, byte for byte.

Resuming: the build happens in ``store-<key>.partial/``. Each finished shard is renamed into place
and then gets a record ``shard-<k>.json`` (written atomically) holding where the stream continues
after it: (document index d, offset o), the first token of the stream not yet in a block, o = -1
meaning "the [SEP] before document d" (layout "examples": the start of the next row, o = -1 the
next document). A killed build restarts after the last recorded shard, re-tokenising from document
d (documents before it are only read, not tokenised). The manifest is written last and the folder
renamed to ``store-<key>``, so a folder without ``.partial`` is complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from raptr_cli.data.packing import EXAMPLE_PAD, MIN_EXAMPLE
from raptr_cli.data.store import MANIFEST, SHARD_BYTES, STORE_FORMAT, TokenStore, open_store, token_dtype
from raptr_cli.errors import UserError
from raptr_cli.tokenize_worker import encode, init, plain

BATCH_DOCS = 256
BATCH_CHARS = 1 << 20
Progress = Callable[[dict], None]


class _Packer:
    """The packing of packing.py (`_pack` for "bert", `_chunk` for "examples"), incremental, with
    the (document, offset) origin of every pending piece so a shard boundary can be resumed."""

    def __init__(self, layout: str, seq_len: int, cls_id: int, sep_id: int, started: bool, pad: int):
        self.examples = layout == "examples"
        self.seq_len, self.cls, self.sep, self.pad = seq_len, cls_id, sep_id, pad
        self.width = seq_len if self.examples else seq_len - 2
        self.q: deque[tuple[int, int, np.ndarray]] = deque()  # (doc, offset, tokens); offset -1 = [SEP]
        self.tokens = 0
        self.started = started  # a [SEP] goes before the next non-empty document

    def push(self, doc: int, ids: np.ndarray, off: int) -> None:
        if self.examples:
            for lo in range(max(off, 0), len(ids), self.width):
                if len(ids[lo : lo + self.width]) >= MIN_EXAMPLE:
                    self.q.append((doc, lo, ids[lo : lo + self.width]))
            return
        if off >= 0:  # resuming inside document `doc`: its [SEP] is already in a block
            self.q.append((doc, off, ids[off:]))
            self.tokens += len(ids) - off
        elif len(ids):  # an empty document would put [SEP] [SEP] in the stream
            if self.started:
                self.q.append((doc, -1, np.array([self.sep], dtype=np.uint32)))
                self.tokens += 1
            self.q.append((doc, 0, ids))
            self.tokens += len(ids)
        self.started = self.started or off >= 0 or len(ids) > 0

    def full(self) -> int:
        """Blocks ready to take."""
        return len(self.q) if self.examples else self.tokens // self.width

    def take(self, k: int) -> np.ndarray:
        """The next k blocks, (k, seq_len) uint32 (examples: padded with the pad value)."""
        rows = np.full((k, self.seq_len), self.pad, dtype=np.uint32)
        if self.examples:
            for r in range(k):
                piece = self.q.popleft()[2]
                rows[r, : len(piece)] = piece
            return rows
        need, parts = k * self.width, []
        while need:
            doc, off, arr = self.q[0]
            if len(arr) <= need:
                parts.append(self.q.popleft()[2])
                need -= len(arr)
            else:
                parts.append(arr[:need])
                self.q[0] = (doc, off + need, arr[need:])  # a [SEP] piece (1 token) is never split
                need = 0
        self.tokens -= k * self.width
        rows[:, 0] = self.cls  # (k, seq_len) = [CLS] body [SEP]
        rows[:, 1:-1] = np.concatenate(parts).reshape(k, self.width)
        rows[:, -1] = self.sep
        return rows

    def position(self, next_doc: int) -> list[int]:
        return list(self.q[0][:2]) if self.q else [next_doc, -1]


class _Shards:
    """Writes shard k as .shard-k.tmp, renamed to shard-k.bin when full, then its record."""

    def __init__(self, folder: Path, k: int, shard_blocks: int, dtype: np.dtype):
        self.folder, self.k, self.shard_blocks, self.dtype = folder, k, shard_blocks, dtype
        self.rows, self.fh, self.h = 0, None, None

    @property
    def room(self) -> int:
        return self.shard_blocks - self.rows

    def write(self, rows: np.ndarray) -> None:
        if self.fh is None:
            self.fh, self.h = open(self.folder / f".shard-{self.k:05d}.tmp", "wb"), hashlib.sha256()
        data = rows.astype(self.dtype).tobytes()
        self.fh.write(data)
        self.h.update(data)
        self.rows += len(rows)

    def close(self, resume: list[int]) -> None:
        name = f"shard-{self.k:05d}"
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.folder / f".{name}.tmp", self.folder / f"{name}.bin")
        rec = {"file": f"{name}.bin", "blocks": self.rows, "sha256": self.h.hexdigest(), "resume": resume}
        _write_json(self.folder / f"{name}.json", rec)
        self.k, self.rows, self.fh = self.k + 1, 0, None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _resume(work: Path, build: dict, seq_len: int, itemsize: int) -> list[dict]:
    """The records of the shards a previous, interrupted build of the same store finished; clears
    the rest of `work` (a half-written shard, or a build with other settings)."""
    try:
        same = json.loads((work / "build.json").read_text()) == build
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _write_json(work / "build.json", build)
        return []
    recs: list[dict] = []
    while True:
        try:
            rec = json.loads((work / f"shard-{len(recs):05d}.json").read_text())
            ok = (work / rec["file"]).stat().st_size == rec["blocks"] * seq_len * itemsize
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            break
        recs.append(rec)
    keep = {"build.json"} | {r["file"] for r in recs} | {f"shard-{k:05d}.json" for k in range(len(recs))}
    for p in work.iterdir():
        if p.name not in keep:
            p.unlink()
    return recs


def _batches(
    docs: Iterable[tuple[int, str]], keep: Callable[[int], bool] | None, start: list[int], counts: dict
) -> Iterator[tuple[list[tuple[int, int]], list[str]]]:
    """([(doc, offset)], texts) batches of the kept documents from `start` = (d, o) on; documents
    before d are counted, not returned."""
    meta: list[tuple[int, int]] = []
    texts: list[str] = []
    chars = 0
    for i, text in docs:
        if keep is not None and not keep(i):
            continue
        counts["documents"] += 1
        counts["characters"] += len(text)
        if i < start[0]:
            continue
        meta.append((i, start[1] if i == start[0] else -1))
        texts.append(text)
        chars += len(text)
        if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield meta, texts
            meta, texts, chars = [], [], 0
    if texts:
        yield meta, texts


def _encoded(batches: Iterator, tok_json: str, num_proc: int) -> Iterator:
    """(meta, (lengths, ids)) per batch, in order; at most 2 * num_proc batches in flight."""
    if num_proc == 1:
        tok = plain(tok_json)
        for meta, texts in batches:
            yield meta, encode(texts, tok)
        return
    # spawn, not fork: the parent may hold torch/CUDA state and tokenizers' thread pool
    with multiprocessing.get_context("spawn").Pool(num_proc, init, (tok_json,)) as pool:
        pending: deque = deque()
        for meta, texts in batches:
            pending.append((meta, pool.apply_async(encode, (texts,))))
            if len(pending) >= 2 * num_proc:
                m, res = pending.popleft()
                yield m, res.get()
        while pending:
            m, res = pending.popleft()
            yield m, res.get()


@contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def build_store(
    folder: Path,
    docs: Callable[[], Iterable[tuple[int, str]]],
    tok,
    meta: dict,
    seq_len: int,
    layout: str,
    specials: tuple[int, int],
    keep: Callable[[int], bool] | None = None,
    num_proc: int = 1,
    shard_blocks: int | None = None,
    progress: Progress | None = None,
    what: str = "data.train",
    stop_after_shards: int | None = None,
) -> TokenStore | None:
    """Build (or finish building) the store `folder` from `docs()` ((index, text) pairs, stream.py),
    keeping the documents `keep` accepts; `specials` = ([CLS], [SEP]) ids. Returns the store, or
    None when `stop_after_shards` (a test hook standing in for a kill) stopped it early.
    Raises UserError naming `what` when the documents fill no block."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.get_vocab_size())
    pad = EXAMPLE_PAD if layout == "examples" else 0
    pad = int(np.iinfo(dtype).max) if pad < 0 else pad
    if shard_blocks is None:
        shard_blocks = max(1, SHARD_BYTES // (seq_len * dtype.itemsize))
    work = folder.with_name(folder.name + ".partial")
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per store; a second one waits, then maps it
        done_store = open_store(folder)
        if done_store is not None:
            return done_store
        build = {"format": STORE_FORMAT, "shard_blocks": shard_blocks, "dtype": dtype.name, **meta}
        recs = _resume(work, build, seq_len, dtype.itemsize)
        start = recs[-1]["resume"] if recs else [0, -1]
        counts = {"documents": 0, "characters": 0}
        packer = _Packer(layout, seq_len, specials[0], specials[1], started=bool(recs), pad=pad)
        shards = _Shards(work, len(recs), shard_blocks, dtype)
        done = {"blocks": sum(r["blocks"] for r in recs), "tokens": 0}
        with _single_threaded_tokenizers():
            for batch_meta, (lens, ids) in _encoded(_batches(docs(), keep, start, counts), tok.to_str(), num_proc):
                pos = 0
                for (i, off), n in zip(batch_meta, lens.tolist()):
                    packer.push(i, ids[pos : pos + n], off)
                    pos += n
                next_doc = batch_meta[-1][0] + 1
                done["tokens"] += len(ids)
                while packer.full():
                    k = min(packer.full(), shards.room)
                    shards.write(packer.take(k))
                    done["blocks"] += k
                    if shards.room == 0:
                        shards.close(packer.position(next_doc))
                        if stop_after_shards is not None and shards.k - len(recs) >= stop_after_shards:
                            return None
                if progress is not None:
                    progress({**counts, **done})
        if shards.rows:
            shards.close(packer.position(-1))
        if done["blocks"] == 0:
            shutil.rmtree(work, ignore_errors=True)
            raise UserError(
                f"{what} is too small for one block of train.seq_len = {seq_len} tokens "
                f"({counts['documents']} documents, {counts['characters']} characters).",
                hint="Add data or lower train.seq_len.",
            )
        records = [json.loads((work / f"shard-{k:05d}.json").read_text()) for k in range(shards.k)]
        manifest = {
            **build,
            "layout": layout,
            "seq_len": seq_len,
            "blocks": done["blocks"],
            **counts,
            "shards": [{k: r[k] for k in ("file", "blocks", "sha256")} for r in records],
        }
        _write_json(work / MANIFEST, manifest)
        if folder.exists():  # a damaged store (no manifest, or a short shard): replaced
            shutil.rmtree(folder)
        os.replace(work, folder)  # the complete store appears at once
    return TokenStore(folder)
