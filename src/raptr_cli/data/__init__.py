"""The data pipeline: corpus cache, file specs, WordPiece tokenizer, packing, data order.

Typical use (the trainer's view)::

    files = resolve_data_files(recipe.data.train, recipe_dir, "data.train")
    docs = load_documents(files)
    tok = train_wordpiece(docs, vocab_size=8192)            # or load_tokenizer(path)
    blocks = pack_documents(docs, tok, seq_len, cache_root() / "packed")   # (N, seq_len) int32
    train, held = split_blocks(blocks, eval_fraction=0.05, seed=split_seed)   # or split_documents(docs, ...)
    idx = batch_indices(step, batch_size, len(train), seed)   # pure in (seed, step)
    rows = train[idx]                   # the objective (objectives/) turns them into a batch

At scale the trainer does not hold `blocks` in memory: `sources.ensure_store` builds (streaming,
in N processes, resumably) and memory-maps a token store of the same blocks (store.py,
store_build.py, stream.py); `store.view(index)` is indexed like the tensor above.

`datasets` is imported lazily (only for .jsonl/.json/.parquet and hub data): it is slow to
import and must see the offline flags first.
"""

from raptr_cli.data.corpus import (
    BUILTIN_CORPORA,
    cache_root,
    corpus_dir,
    corpus_files,
    fetch_corpus,
)
from raptr_cli.data.files import DATA_SUFFIXES, load_documents, parse_hf_spec, resolve_data_files
from raptr_cli.data.packing import (
    batch_indices,
    pack_documents,
    seed_for,
    split_blocks,
    split_documents,
)
from raptr_cli.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, special_ids, train_wordpiece

__all__ = [
    "BUILTIN_CORPORA",
    "DATA_SUFFIXES",
    "SPECIAL_TOKENS",
    "batch_indices",
    "cache_root",
    "corpus_dir",
    "corpus_files",
    "fetch_corpus",
    "load_documents",
    "load_tokenizer",
    "pack_documents",
    "parse_hf_spec",
    "resolve_data_files",
    "seed_for",
    "special_ids",
    "split_blocks",
    "split_documents",
    "train_wordpiece",
]
