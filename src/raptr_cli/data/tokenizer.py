"""A BERT-style WordPiece tokenizer: trained on the corpus, or loaded from a tokenizer.json.

Training mirrors `BertWordPieceTokenizer` from the `tokenizers` library, built from its public
components: BERT normaliser and pre-tokeniser, WordPiece with ``##`` continuation pieces, the
five BERT specials with [PAD] = 0, and the ``[CLS] A [SEP] (B [SEP])`` post-processor, so the
saved tokenizer.json also works with `transformers.PreTrainedTokenizerFast`.

Training is deterministic: the same documents and settings give a byte-identical tokenizer.json
in any process, with any thread count. `tokenizers`' own WordPieceTrainer is not: it numbers the
``##x`` continuation symbols in hash-map order (a per-process random seed), and those numbers
break ties between equally frequent merges, so both the id order and, at the vocab_size cut,
the token set can change between runs. Here the continuation symbols are private-use characters
that the (same, Rust) BPE trainer sorts with the rest of the alphabet, so every tie is broken
the same way; the ids are then laid out canonically (`canonical_vocab`). (One order the Rust
trainer still leaves to its heap: two queue entries for the same pair at the same count, which
needs one token formed by two different merges plus a count coincidence; Shakespeare at 8192
has no token formed twice, for WordPiece or for UL2's BPE.)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from raptr_cli.errors import UserError

# Short name -> token. Order fixes the ids of a trained tokenizer: [PAD]=0 ... [MASK]=4.
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
}
# Where continuation symbols are drawn from: the Supplementary Private Use Areas (131,070 code
# points; BertNormalizer's clean_text removes private-use characters from the text, and any
# left would be skipped).
_PRIVATE = range(0xF0000, 0x10FFFE)


def canonical_vocab(
    specials: Sequence[str],
    tokens: Iterable[str],
    merged: Iterable[str],
    symbol_key: Callable[[str], object] | None = None,
) -> dict[str, int]:
    """Token -> id in canonical order: `specials` as declared, then the alphabet (every token no
    merge produces) sorted by `symbol_key` (default: code point), then the tokens `merged` yields,
    in merge order (a token produced twice keeps its first place).

    The order depends only on the token set and the merge order, never on hash or thread order.
    The merge order is the trainer's: it breaks ties between equally frequent pairs by the ids
    it gave the pair's parts, so it is deterministic when those are (train_wordpiece and
    train_bpe see to it). ValueError if `tokens` and the merges disagree.
    """
    tokens = set(tokens)
    order = list(dict.fromkeys(specials))
    merged = [t for t in dict.fromkeys(merged) if t not in order]
    outputs = set(merged)
    order += sorted((t for t in tokens if t not in outputs and t not in order), key=symbol_key)
    order += merged
    if set(order) != tokens or len(order) != len(tokens):
        raise ValueError(f"canonical_vocab: {len(set(order) ^ tokens)} tokens not accounted for")
    return {t: i for i, t in enumerate(order)}


def _wordpiece_vocab(tok: Tokenizer, documents: Iterable[str], vocab_size: int, min_frequency: int) -> dict[str, int]:
    """WordPiece training as `trainers.WordPieceTrainer` does it (BPE merges over the words of
    the normaliser and pre-tokeniser, ``##`` on non-initial pieces), made deterministic.

    Each character c at a non-initial position of a word is replaced by its own private-use
    symbol standing for ``##c`` before the words reach the trainer. The trainer then needs no
    continuation prefix, and sorts these symbols into its alphabet by code point, so the ids it
    breaks ties with no longer depend on hash order; the results are mapped back to ``##`` form.
    """
    chunks: Counter[str] = Counter()
    for doc in documents:
        # clean_text has turned every whitespace character into " ", so splitting on " " first
        # and pre-tokenising each distinct chunk once gives the pre-tokeniser's words, ~10x faster
        chunks.update(tok.normalizer.normalize_str(doc).split(" "))
    counts: Counter[str] = Counter()
    for chunk, n in chunks.items():
        for w, _ in tok.pre_tokenizer.pre_tokenize_str(chunk):
            counts[w] += n
    chars = sorted({c for w in counts for c in w})
    inner = sorted({c for w in counts for c in w[1:]})
    used = set(chars)
    free = (chr(cp) for cp in _PRIVATE if chr(cp) not in used)
    cont = dict(zip(inner, free))
    if len(cont) < len(inner):  # > 131k distinct characters: not a text corpus
        raise UserError(
            f"The corpus uses {len(inner)} distinct characters inside words; "
            f"WordPiece training supports at most {len(_PRIVATE) - len(used)}.",
            hint="Check the data files: this looks like binary data.",
        )
    table = str.maketrans(cont)
    plain = {v: k for k, v in cont.items()}

    def wordpiece(t: str) -> str:
        return ("##" if t[0] in plain else "") + "".join(plain.get(c, c) for c in t)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words hold no whitespace
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        # every character as a word-initial symbol, as WordPieceTrainer's alphabet has them
        initial_alphabet=chars,
        show_progress=False,  # progress bars would garble --json output and CI logs
    )
    feed = (" ".join([w[0] + w[1:].translate(table)] * n) for w, n in counts.items())
    bpe.train_from_iterator(feed, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    tokens = [wordpiece(t) for t in model["vocab"]]  # the specials hold no private-use symbol
    merges = (m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"])
    # alphabet: single characters by code point, then the ##x symbols by code point
    return canonical_vocab(
        list(SPECIAL_TOKENS.values()),
        tokens,
        (wordpiece(a + b) for a, b in merges),
        symbol_key=lambda t: (len(t) > 1, t),
    )


def train_wordpiece(
    documents: Iterable[str],
    vocab_size: int,
    lowercase: bool = False,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a WordPiece tokenizer of at most `vocab_size` tokens (specials included).

    The vocabulary can end up smaller than `vocab_size` on a small corpus (the trainer stops
    when no pair reaches `min_frequency`); size the model by `tok.get_vocab_size()`. Ids: the
    specials in SPECIAL_TOKENS order, the characters, the ``##`` characters, then the merged
    pieces in the order they were learned (roughly by frequency); deterministic (module doc).
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(
            f"The tokenizer vocab_size {vocab_size} is too small.",
            hint=f"It must exceed the {len(SPECIAL_TOKENS)} special tokens; a few thousand is typical.",
        )
    tok = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##"))
    # strip_accents=None follows `lowercase`, as in BERT's cased/uncased vocabularies.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(tok, documents, vocab_size, min_frequency)
    tok.model = models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##")
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS.values()))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the BERT specials, keyed "pad", "unk", "cls", "sep", "mask".

    Raises UserError listing every missing special.
    """
    ids = {name: tok.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[name] for name, i in ids.items() if i is None]
    if missing:
        raise UserError(
            f"The tokenizer lacks the BERT special token(s) {', '.join(missing)}.",
            hint="Masked-LM pretraining needs [PAD] [UNK] [CLS] [SEP] [MASK]; "
            "train one with the recipe's tokenizer settings or use a BERT tokenizer.json.",
            problems=[f"missing {t}" for t in missing],
        )
    return ids  # type: ignore[return-value]


def load_tokenizer(path: str | Path, specials: Callable[[Tokenizer], dict] | None = special_ids) -> Tokenizer:
    """Load a tokenizer.json; UserError if it is unreadable or lacks the specials that `specials`
    (an architecture's lookup, BERT's by default; None: no check) requires. The one loader of the
    house: training, resume, eval, fine-tuning and export all read tokenizers through it."""
    path = Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for parse errors
        raise UserError(
            f"Cannot read the tokenizer file {path}: {exc}",
            hint="Give a `tokenizers` tokenizer.json (as saved in a run folder), "
            "or leave the tokenizer path unset to train one.",
        ) from exc
    if specials is not None:
        named_specials(tok, path, specials)
    return tok


def named_specials(tok: Tokenizer, path: str | Path, specials: Callable[[Tokenizer], dict]) -> dict:
    """`specials(tok)`, its UserError naming the tokenizer file."""
    try:
        return specials(tok)
    except UserError as exc:
        exc.message = f"{path}: {exc.message}"
        raise
