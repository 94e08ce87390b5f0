"""Recipe [data]/[tokenizer] -> a tokenizer and packed train/eval blocks, cached between runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.corpus import cache_root
from ..data.files import load_documents, resolve_data_files
from ..data.packing import pack_documents, split_blocks, split_documents
from ..data.tokenizer import load_tokenizer, special_ids, train_wordpiece
from ..errors import UserError
from ..recipe import Recipe


@dataclass
class RunData:
    tokenizer: object            # tokenizers.Tokenizer
    specials: dict               # bert: pad/unk/cls/sep/mask -> id; ul2: see ul2_special_ids
    train: torch.Tensor          # (N, seq_len) int32 packed blocks
    eval: torch.Tensor           # (M, seq_len) int32
    documents: int               # training documents read
    warnings: list[str] = field(default_factory=list)  # for the console (an eval set too small to trust)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def _blocks_cache(recipe: Recipe) -> Path:
    path = Path(recipe.data.cache_dir) if recipe.data.cache_dir else cache_root() / "blocks"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        key = "data.cache_dir" if recipe.data.cache_dir else "the raptr cache (RAPTR_CACHE)"
        raise UserError(f"{key}: cannot use {path} as a directory ({e.strerror})",
                        hint="Point it at a writable directory.") from None
    return path


def _load(recipe: Recipe, path: Path):
    """Load a tokenizer.json and check it has the specials this architecture needs."""
    if recipe.model.arch == "bert":
        return load_tokenizer(path)
    from tokenizers import Tokenizer

    from ..objectives.ul2_tokenizer import ul2_special_ids

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"cannot read tokenizer {path}: {e}", hint="Point tokenizer.path at a tokenizers tokenizer.json.") from None
    ul2_special_ids(tok)  # raises a UserError naming what is missing
    return tok


def specials_of(recipe: Recipe, tok) -> dict:
    if recipe.model.arch == "bert":
        return special_ids(tok)
    from ..objectives.ul2_tokenizer import ul2_special_ids

    return ul2_special_ids(tok)


def _tokenizer_for(recipe: Recipe, docs: list[str], out_dir: Path | None) -> object:
    """Load `tokenizer.path`, or train WordPiece (cached by corpus + settings, since it takes seconds)."""
    t = recipe.tokenizer
    if t.path:
        path = Path(t.path)
        if not path.is_absolute():
            path = recipe.base_dir / path
        if not path.is_file():
            raise UserError(f"tokenizer.path: file not found: {path}", hint="Point it at a tokenizer.json, or leave it empty to train one.")
        return _load(recipe, path)
    h = hashlib.sha256()
    for d in docs:
        h.update(hashlib.sha256(d.encode()).digest())
    kind = "bpe" if recipe.model.arch == "ul2" else "wordpiece"
    # v2: deterministic training (canonical ids); tokenizers cached before it are retrained
    h.update(f"{kind}-v2|{t.vocab_size}|{t.lowercase}|{t.min_frequency}".encode())
    cached = _blocks_cache(recipe) / "tokenizers" / f"{h.hexdigest()[:24]}.json"
    if cached.is_file():
        return _load(recipe, cached)
    if kind == "bpe":
        from ..objectives.ul2_tokenizer import train_bpe

        tok = train_bpe(docs, vocab_size=t.vocab_size, min_frequency=t.min_frequency)
    else:
        tok = train_wordpiece(docs, vocab_size=t.vocab_size, lowercase=t.lowercase, min_frequency=t.min_frequency)
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tok-", suffix=".tmp", dir=cached.parent)  # unique: processes may race
    os.close(fd)
    tok.save(tmp)
    os.replace(tmp, cached)
    return tok


def eval_size_warnings(recipe: Recipe, evals: torch.Tensor) -> list[str]:
    """A warning when the eval set holds fewer tokens than one eval batch (train.batch_size rows of
    train.seq_len): it then scores fewer predicted positions (tokens x the masking/target share)
    than a single full batch would, so its loss is too noisy to compare runs or stages by. The
    share is the same on both sides, so the threshold is in tokens; UL2's padded rows count only
    their real tokens."""
    t = recipe.train
    tokens = int((evals >= 0).sum()) if recipe.model.arch == "ul2" else evals.numel()
    batch = t.batch_size * t.seq_len
    if tokens >= batch:
        return []
    from ..planning import head_fraction

    key = "data.eval" if recipe.data.eval else f"the eval split held out by data.eval_fraction = {recipe.data.eval_fraction}"
    return [f"{key} holds only {tokens} tokens ({len(evals)} blocks), less than one eval batch (train.batch_size "
            f"x train.seq_len = {batch} tokens): each eval scores ~{tokens * head_fraction(recipe):.0f} predicted "
            "tokens, too few for a stable eval loss; give more eval text"]


def prepare_data(recipe: Recipe, out_dir: Path | None = None, tokenizer_file: Path | None = None,
                 eval_only: bool = False) -> RunData:
    """Resolve files, load/train the tokenizer, tokenise+pack (cached), split eval.

    Without `data.eval` the held-out part depends on `data.split_seed` only, never on run.seed;
    with `data.eval_split = "documents"` it is whole documents, split off before the tokenizer
    is trained, so nothing of them is seen in training.

    `tokenizer_file` (a resumed run's OUT/tokenizer.json) takes precedence so a resume can never
    silently retokenise with a different vocabulary. `eval_only` with `data.eval` set and a
    tokenizer file reads only the eval files (`raptr eval --data`).
    """
    d, seq_len = recipe.data, recipe.train.seq_len
    layout = "examples" if recipe.model.arch == "ul2" else "bert"
    if eval_only and d.eval and tokenizer_file:
        tok = _load(recipe, tokenizer_file)
        eval_docs = load_documents(resolve_data_files(d.eval, recipe.base_dir, "data.eval"), text_field=d.text_field)
        evals = pack_documents(eval_docs, tok, seq_len, _blocks_cache(recipe), layout=layout, key="data.eval")
        return RunData(tokenizer=tok, specials=specials_of(recipe, tok), train=evals[:0], eval=evals,
                       documents=len(eval_docs), warnings=eval_size_warnings(recipe, evals))
    train_files = resolve_data_files(d.train, recipe.base_dir, "data.train")
    docs = load_documents(train_files, text_field=d.text_field)
    held: list[str] | None = None
    if not d.eval and d.eval_split == "documents":
        docs, held = split_documents(docs, d.eval_fraction, d.split_seed)
    tok = _load(recipe, tokenizer_file) if tokenizer_file else _tokenizer_for(recipe, docs, out_dir)
    cache = _blocks_cache(recipe)
    blocks = pack_documents(docs, tok, seq_len, cache, layout=layout)
    if d.eval:
        eval_docs = load_documents(resolve_data_files(d.eval, recipe.base_dir, "data.eval"), text_field=d.text_field)
        train, evals = blocks, pack_documents(eval_docs, tok, seq_len, cache, layout=layout, key="data.eval")
    elif held is not None:
        train = blocks
        evals = pack_documents(held, tok, seq_len, cache, layout=layout,
                               key="the held-out documents") if held else blocks[:0]
    else:
        train, evals = split_blocks(blocks, d.eval_fraction, d.split_seed)
    if len(train) == 0:
        raise UserError(
            f"data.train yields no full block of train.seq_len = {seq_len} tokens",
            hint="Add more text or lower train.seq_len.",
        )
    if len(evals) == 0:
        raise UserError(
            "the eval split is empty",
            hint="Raise data.eval_fraction, or name held-out files in data.eval.",
        )
    if out_dir is not None and recipe.tokenizer.path and not tokenizer_file:
        shutil.copyfile(Path(recipe.base_dir, recipe.tokenizer.path), out_dir / "tokenizer.json")
    elif out_dir is not None and not tokenizer_file:
        tok.save(str(out_dir / "tokenizer.json"))
    return RunData(tokenizer=tok, specials=specials_of(recipe, tok), train=train, eval=evals, documents=len(docs),
                   warnings=eval_size_warnings(recipe, evals))
