"""The tokenising worker of data/store_build.py, outside the `raptr_cli.data` package on purpose:
a spawned worker imports only this module (numpy, tokenizers), not the package's torch, which
would cost each worker ~300 MB and seconds of start-up."""

from __future__ import annotations

import os

import numpy as np

_TOK = None  # the worker's tokenizer (set by init)


def plain(tok_json: str):
    """The tokenizer with truncation and padding off: a tokenizer.json from elsewhere may cut every
    document to 512 tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok_json)
    tok.no_truncation()
    tok.no_padding()
    return tok


def init(tok_json: str) -> None:
    global _TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process: --num-proc is the knob
    _TOK = plain(tok_json)


def encode(texts: list[str], tok=None) -> tuple[np.ndarray, np.ndarray]:
    """(lengths (n,), concatenated uint32 ids) of each document, without specials."""
    encs = (tok or _TOK).encode_batch(texts, add_special_tokens=False)
    lens = np.array([len(e.ids) for e in encs], dtype=np.int64)
    ids = np.concatenate([np.asarray(e.ids, dtype=np.uint32) for e in encs]) if encs else np.zeros(0, np.uint32)
    return lens, ids
