"""A corpus as the store sees it: its files, their fingerprints, which of its documents a part
keeps (all, or the train / held-out side of `data.eval_split = "documents"`), and the bounded
sample a tokenizer is trained on. `ensure_store` maps a part's token store, building it first
when it is missing (store_build.py).

Tokenizer sample (`tokenizer.train_sample_bytes`, S): a corpus whose files total T <= S bytes
(or S = 0) is used whole, in order, exactly as before the store existed. A larger one contributes
document i when seed_for("tokenizer-sample", i) / 2^63 < S / T: about S bytes drawn evenly from
the whole corpus, the same documents on every machine, streamed into the trainer (the WordPiece
trainer counts words as they come, so the sample is never held as strings either).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raptr_cli.data.packing import held_out_documents, seed_for
from raptr_cli.data.store import TokenStore, open_store, store_key, tokenizer_sha
from raptr_cli.data.store_build import Progress, build_store
from raptr_cli.data.stream import count_documents, iter_documents, source_fingerprints

ALL = {"part": "all"}


def documents_part(fraction: float, seed: int, side: str) -> dict:
    """The train ("train") or held-out ("held") side of a whole-document split."""
    return {"part": side, "eval_split": "documents", "eval_fraction": fraction, "split_seed": seed}


@dataclass
class Source:
    """The documents of `files` (resolve_data_files' result: paths or an hf spec)."""

    files: list[Path] | str
    text_field: str = "text"
    _fps: list[dict] | None = field(default=None, repr=False)
    _n: int | None = field(default=None, repr=False)

    @property
    def fingerprints(self) -> list[dict]:
        if self._fps is None:
            self._fps = source_fingerprints(self.files, self.text_field)
        return self._fps

    @property
    def total_bytes(self) -> int:
        return sum(f["bytes"] for f in self.fingerprints)

    def documents(self) -> Iterator[tuple[int, str]]:
        return iter_documents(self.files, self.text_field)

    def count(self) -> int:
        if self._n is None:
            self._n = count_documents(self.files, self.text_field)
        return self._n

    def keep(self, part: dict) -> Callable[[int], bool] | None:
        """Which document indices `part` holds (None: all). The held-out set needs the count."""
        if part["part"] == "all":
            return None
        held = held_out_documents(self.count(), part["eval_fraction"], part["split_seed"])
        return (lambda i: i in held) if part["part"] == "held" else (lambda i: i not in held)

    def sample(self, part: dict, sample_bytes: int) -> tuple[Iterator[str], str]:
        """The documents of `part` a tokenizer is trained on, and a label of the choice (for keys)."""
        keep = self.keep(part)
        total = self.total_bytes
        whole = sample_bytes == 0 or total <= sample_bytes
        cut = 0 if whole else int(sample_bytes / total * 2**63)

        def docs() -> Iterator[str]:
            for i, d in self.documents():
                if (keep is None or keep(i)) and (whole or seed_for("tokenizer-sample", i) < cut):
                    yield d

        return docs(), "all" if whole else f"sample-{sample_bytes}"


def ensure_store(
    source: Source,
    part: dict,
    tok,
    seq_len: int,
    layout: str,
    cache_dir: Path,
    specials: tuple[int, int],
    what: str,
    num_proc: int = 1,
    progress: Progress | None = None,
    shard_blocks: int | None = None,
    stop_after_shards: int | None = None,
) -> TokenStore | None:
    """The token store of `part` of `source`, built first if missing (or finished, if a build was
    interrupted). `what` names the documents in the "too small" error."""
    meta = {"sources": source.fingerprints, "text_field": source.text_field, "part": part}
    key = store_key(source.fingerprints, source.text_field, part, tok, seq_len, layout)
    folder = Path(cache_dir) / f"store-{key}"
    store = open_store(folder)
    if store is not None:
        return store
    meta["tokenizer_sha256"] = tokenizer_sha(tok)
    if progress is not None:
        progress({"start": what, "total_bytes": source.total_bytes})
    return build_store(
        folder,
        source.documents,
        tok,
        meta,
        seq_len,
        layout,
        specials,
        keep=source.keep(part),
        num_proc=num_proc,
        shard_blocks=shard_blocks,
        progress=progress,
        what=what,
        stop_after_shards=stop_after_shards,
    )
