"""Byte-level BPE tokenizer for UL2: lossless on any text, with UL2's special tokens.

Specials in id order: [PAD]=0, [BOS], [EOS], [UNK], the paradigm (mode) tokens [NLU] [NLG]
[S2S], then the sentinels <extra_id_0>.. <extra_id_{n-1}> (T5's names). [UNK] never occurs in
byte-level encoding (every byte is in the alphabet); it is kept so generic code that asks for
an unknown token finds one.

Training is deterministic (the same documents and settings give a byte-identical tokenizer.json
in any process and with any thread count): the byte alphabet is sorted, ties between equally
frequent merges are broken by the ids of the pair, and word counts are exact integer sums, so
the trainer's merge order is a pure function of the corpus. `canonical_bpe` then lays the ids
out from that merge order, so they never depend on how the trainer numbered them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from raptr_cli.data.tokenizer import canonical_vocab
from raptr_cli.errors import UserError

BASE_SPECIALS: dict[str, str] = {
    "pad": "[PAD]",
    "bos": "[BOS]",
    "eos": "[EOS]",
    "unk": "[UNK]",
    "[NLU]": "[NLU]",
    "[NLG]": "[NLG]",
    "[S2S]": "[S2S]",
}


def sentinel_token(i: int) -> str:
    return f"<extra_id_{i}>"


def train_bpe(documents: Iterable[str], vocab_size: int, n_sentinels: int = 100, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (specials and the 256-byte
    alphabet included). decode(encode(text).ids) == text for any text free of special-token
    strings: no normaliser, no added prefix space, and the ByteLevel decoder inverts the
    byte-to-unicode map. On a small corpus the vocabulary can end up smaller than asked; size
    the model by `tok.get_vocab_size()`."""
    specials = list(BASE_SPECIALS.values()) + [sentinel_token(i) for i in range(n_sentinels)]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet) + 1:
        raise UserError(
            f"The tokenizer vocab_size {vocab_size} is too small for byte-level BPE.",
            hint=f"It must exceed {len(specials)} special tokens + {len(alphabet)} byte symbols; UL2 uses 32128.",
        )
    tok = Tokenizer(models.BPE())  # no unk_token: byte-level never needs one
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,  # progress bars would garble --json output and CI logs
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return canonical_bpe(tok, specials)


def canonical_bpe(tok: Tokenizer, specials: list[str]) -> Tokenizer:
    """`tok` with ids re-derived from its merges: `specials` in order, the alphabet by code
    point, then each merge's result in merge (rank) order. The merges themselves are kept: their
    order is what BPE applies, so only the numbering is canonical, and the merges stay consistent
    with the vocabulary because the JSON names merges by token, not id. Returns `tok` itself
    when it is already canonical (the trainer's own layout is this one)."""
    data = json.loads(tok.to_str())
    model = data["model"]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    vocab = canonical_vocab(specials, model["vocab"], (a + b for a, b in merges))
    if vocab == model["vocab"] and list(vocab) == list(model["vocab"]):
        return tok
    model["vocab"] = vocab
    for added in data["added_tokens"]:
        added["id"] = vocab[added["content"]]
    return Tokenizer.from_str(json.dumps(data))


def ul2_special_ids(tok: Tokenizer) -> dict:
    """{"pad", "bos", "eos", "unk", "[NLU]", "[NLG]", "[S2S]": id, "sentinels": [ids]}, the
    `specials` that `make_batch` takes. Sentinels are every <extra_id_N> from 0 up to the
    first missing N. Raises UserError listing every missing base special."""
    ids = {name: tok.token_to_id(t) for name, t in BASE_SPECIALS.items()}
    missing = [BASE_SPECIALS[n] for n, i in ids.items() if i is None]
    sentinels: list[int] = []
    while (i := tok.token_to_id(sentinel_token(len(sentinels)))) is not None:
        sentinels.append(i)
    if not sentinels:
        missing.append(sentinel_token(0))
    if missing:
        raise UserError(
            f"The tokenizer lacks the UL2 special token(s) {', '.join(missing)}.",
            hint="UL2 needs [PAD] [BOS] [EOS] [UNK] [NLU] [NLG] [S2S] and <extra_id_N> "
            "sentinels; train one with train_bpe.",
            problems=[f"missing {t}" for t in missing],
        )
    return {**ids, "sentinels": sentinels}
