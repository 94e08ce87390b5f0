"""Recipe [data]/[tokenizer] -> a tokenizer and packed train/eval blocks, cached between runs.

The blocks live in token stores (data/store.py) in the blocks cache, built on first use by the
process that calls this first (the trainer lets rank 0 go first; the others then map them)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.corpus import cache_root
from ..data.files import resolve_data_files
from ..data.packing import split_indices
from ..data.sources import ALL, Source, documents_part, ensure_store
from ..data.store import Blocks, TokenStore
from ..data.tokenizer import load_tokenizer
from ..errors import UserError
from ..models.registry import arch_spec
from ..recipe import Recipe

SMALL_CORPUS = 8 << 20  # bytes of files below which a store is built in this process alone


@dataclass
class RunData:
    tokenizer: object  # tokenizers.Tokenizer
    specials: dict  # bert: pad/unk/cls/sep/mask -> id; ul2: see ul2_special_ids
    train: Blocks  # (N, seq_len) int32 packed blocks, memory-mapped (data/store.py)
    eval: Blocks  # (M, seq_len) int32
    documents: int  # training documents read
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
        raise UserError(
            f"{key}: cannot use {path} as a directory ({e.strerror})", hint="Point it at a writable directory."
        ) from None
    return path


def load_run_tokenizer(recipe: Recipe, path: Path):
    """Load a tokenizer.json and check it has the specials this architecture needs."""
    return load_tokenizer(path, arch_spec(recipe.model.arch).tokenizer.specials)


def specials_of(recipe: Recipe, tok) -> dict:
    return arch_spec(recipe.model.arch).tokenizer.specials(tok)


def _tokenizer_for(recipe: Recipe, source: Source, part: dict) -> object:
    """Load `tokenizer.path`, or train one on (a sample of) `part` of `source` (cached by the files'
    fingerprints + settings, since it takes seconds to minutes)."""
    t = recipe.tokenizer
    if t.path:
        path = Path(t.path)
        if not path.is_absolute():
            path = recipe.base_dir / path
        if not path.is_file():
            raise UserError(
                f"tokenizer.path: file not found: {path}",
                hint="Point it at a tokenizer.json, or leave it empty to train one.",
            )
        return load_run_tokenizer(recipe, path)
    docs, chosen = source.sample(part, t.train_sample_bytes)
    spec = arch_spec(recipe.model.arch).tokenizer
    # v3: keyed by file fingerprints and the sample instead of every document's hash
    ident = [
        f"{spec.kind}-v3",
        t.vocab_size,
        t.lowercase,
        t.min_frequency,
        source.fingerprints,
        source.text_field,
        part,
        chosen,
    ]
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
    cached = _blocks_cache(recipe) / "tokenizers" / f"{h.hexdigest()[:24]}.json"
    if cached.is_file():
        return load_run_tokenizer(recipe, cached)
    tok = spec.train(docs, t)
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tok-", suffix=".tmp", dir=cached.parent)  # unique: processes may race
    os.close(fd)
    tok.save(tmp)
    os.replace(tmp, cached)
    return tok


def eval_size_warnings(recipe: Recipe, evals) -> list[str]:
    """A warning when the eval set holds fewer tokens than one eval batch (train.batch_size rows of
    train.seq_len): it then scores fewer predicted positions (tokens x the masking/target share)
    than a single full batch would, so its loss is too noisy to compare runs or stages by. The
    share is the same on both sides, so the threshold is in tokens; padded rows (the "examples"
    layout) count only their real tokens."""
    t = recipe.train
    # "bert" blocks are full; padded rows are read (an eval split is small)
    padded = arch_spec(recipe.model.arch).layout == "examples"
    tokens = int((torch.as_tensor(evals[:]) >= 0).sum()) if padded else len(evals) * t.seq_len
    batch = t.batch_size * t.seq_len
    if tokens >= batch:
        return []
    from ..planning import head_fraction

    key = (
        "data.eval"
        if recipe.data.eval
        else f"the eval split held out by data.eval_fraction = {recipe.data.eval_fraction}"
    )
    return [
        f"{key} holds only {tokens} tokens ({len(evals)} blocks), less than one eval batch (train.batch_size "
        f"x train.seq_len = {batch} tokens): each eval scores ~{tokens * head_fraction(recipe):.0f} predicted "
        "tokens, too few for a stable eval loss; give more eval text"
    ]


def _store_specials(recipe: Recipe, tok) -> tuple[int, int]:
    """The ids that open and close each block of the "bert" packing ([CLS], [SEP]); (0, 0) for a
    layout without a frame."""
    spec = arch_spec(recipe.model.arch)
    if spec.frame is None:
        return 0, 0
    ids = spec.tokenizer.specials(tok)
    return ids[spec.frame[0]], ids[spec.frame[1]]


def prepare_data(
    recipe: Recipe,
    out_dir: Path | None = None,
    tokenizer_file: Path | None = None,
    eval_only: bool = False,
    num_proc: int | None = None,
    progress=None,
) -> RunData:
    """Resolve files, load/train the tokenizer, map (building on first use) the token stores, split eval.

    Without `data.eval` the held-out part depends on `data.split_seed` only, never on run.seed;
    with `data.eval_split = "documents"` it is whole documents, split off before the tokenizer
    is trained, so nothing of them is seen in training.

    `tokenizer_file` (a resumed run's OUT/tokenizer.json) takes precedence so a resume can never
    silently retokenise with a different vocabulary. `eval_only` with `data.eval` set and a
    tokenizer file reads only the eval files (`raptr eval --data`). `num_proc` processes tokenise a
    missing store (default: the CPU count, up to 8); `progress` receives the builder's dicts.
    """
    d, seq_len = recipe.data, recipe.train.seq_len
    layout = arch_spec(recipe.model.arch).layout
    if seq_len < 3:  # before any tokenising (pack_documents' check)
        raise UserError(
            f"`train.seq_len` = {seq_len} is too short.",
            hint="A block is [CLS] tokens [SEP]: seq_len must be at least 3 (128-512 is typical).",
        )
    cache = _blocks_cache(recipe)
    procs = num_proc or min(os.cpu_count() or 1, 8)

    def store(source: Source, part: dict, tok, what: str) -> TokenStore:
        # a small corpus is not worth starting worker processes for (same bytes either way)
        n = procs if source.total_bytes > SMALL_CORPUS else 1
        return ensure_store(
            source, part, tok, seq_len, layout, cache, _store_specials(recipe, tok), what, num_proc=n, progress=progress
        )

    if eval_only and d.eval and tokenizer_file:
        tok = load_run_tokenizer(recipe, tokenizer_file)
        ev = store(
            Source(resolve_data_files(d.eval, recipe.base_dir, "data.eval"), d.text_field), ALL, tok, "data.eval"
        )
        evals = ev.view()
        return RunData(
            tokenizer=tok,
            specials=specials_of(recipe, tok),
            train=evals[:0],
            eval=evals,
            documents=ev.documents,
            warnings=eval_size_warnings(recipe, evals),
        )
    source = Source(resolve_data_files(d.train, recipe.base_dir, "data.train"), d.text_field)
    part, held = ALL, None
    if not d.eval and d.eval_split == "documents":
        part = documents_part(d.eval_fraction, d.split_seed, "train")
        held = documents_part(d.eval_fraction, d.split_seed, "held")
    if next(source.documents(), None) is None:  # reads one document: the check load_documents made
        raise UserError(
            "The data holds no non-empty document.",
            hint="Check the recipe's data files and text field.",
            problems=[str(source.files)] if isinstance(source.files, str) else [str(f) for f in source.files[:5]],
        )
    tok = load_run_tokenizer(recipe, tokenizer_file) if tokenizer_file else _tokenizer_for(recipe, source, part)
    blocks = store(source, part, tok, "data.train")
    if d.eval:
        eval_source = Source(resolve_data_files(d.eval, recipe.base_dir, "data.eval"), d.text_field)
        train, evals = blocks.view(), store(eval_source, ALL, tok, "data.eval").view()
    elif held is not None and d.eval_fraction == 0:
        train, evals = blocks.view(), blocks.view()[:0]  # refused below, as before
    elif held is not None:
        train, evals = blocks.view(), store(source, held, tok, "the held-out documents").view()
    else:
        train_idx, eval_idx = split_indices(blocks.n, d.eval_fraction, d.split_seed)
        train, evals = blocks.view(train_idx), blocks.view(eval_idx)
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
    return RunData(
        tokenizer=tok,
        specials=specials_of(recipe, tok),
        train=train,
        eval=evals,
        documents=blocks.documents,
        warnings=eval_size_warnings(recipe, evals),
    )
