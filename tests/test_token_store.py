"""The memory-mapped token store (data/store.py, store_build.py, sources.py, stream.py).

Golden reference: the in-memory path (`load_documents` + `pack_documents` + `split_blocks`),
which the store replaced in `prepare_data`; blocks must come out byte-identical, and so must the
training losses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import generate_corpus, read_rows, run_ok, train_rows
from raptr_cli.data import (
    load_documents,
    pack_documents,
    resolve_data_files,
    split_blocks,
    store_build,
    train_wordpiece,
)
from raptr_cli.data.packing import seed_for
from raptr_cli.data.sources import ALL, Source, ensure_store
from raptr_cli.data.store import open_store
from raptr_cli.data.stream import iter_documents
from raptr_cli.recipe import load_recipe
from raptr_cli.train.data_setup import prepare_data

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> Path:
    """12 documents of very different lengths in .txt and .jsonl files (one blank, one empty)."""
    d = tmp_path_factory.mktemp("store-docs")
    docs = generate_corpus(10, 12, seed=3)
    docs[2] = docs[2][:30]  # shorter than a block: its tokens straddle blocks of its neighbours
    for i in range(4):
        (d / f"a{i}.txt").write_text(docs[i])
    (d / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["", *docs[4:], "   "]) + "\n")
    return d


@pytest.fixture(scope="module")
def tok(docs_dir):
    files = resolve_data_files([str(docs_dir)], Path("."), "data.train")
    return train_wordpiece(load_documents(files), vocab_size=200)


def _build(docs_dir: Path, tok, cache: Path, layout: str = "bert", **kw):
    files = resolve_data_files([str(docs_dir)], Path("."), "data.train")
    cls_sep = (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"))
    return ensure_store(Source(files), ALL, tok, 16, layout, cache, cls_sep, "data.train", shard_blocks=5, **kw)


def _shard_bytes(store) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.folder.iterdir())}


def test_streamed_documents_equal_loaded_ones(docs_dir):
    files = resolve_data_files([str(docs_dir)], Path("."), "data.train")
    assert [d for _, d in iter_documents(files)] == load_documents(files)  # same order, blanks dropped


@pytest.mark.parametrize("layout", ["bert", "examples"])
def test_store_blocks_equal_the_in_memory_packing(docs_dir, tok, tmp_path, layout):
    store = _build(docs_dir, tok, tmp_path, layout)
    old = pack_documents(
        load_documents(resolve_data_files([str(docs_dir)], Path("."), "x")), tok, 16, None, layout=layout
    )
    assert len(store.manifest["shards"]) > 3 and store.n == len(old)
    assert torch.equal(store.view()[:], old)
    idx = torch.tensor([7, 0, 7, len(old) - 1, 3])  # any order, repeats: as tensor indexing
    assert torch.equal(store.view()[idx], old[idx])


def test_two_processes_build_the_same_store_as_one(docs_dir, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(store_build, "BATCH_DOCS", 2)  # several batches in flight, out of order
    one = _build(docs_dir, tok, tmp_path / "one", num_proc=1)
    two = _build(docs_dir, tok, tmp_path / "two", num_proc=2)
    assert one.folder.name == two.folder.name  # same key
    assert _shard_bytes(one) == _shard_bytes(two)  # every shard and the manifest, byte for byte


@pytest.mark.parametrize("layout", ["bert", "examples"])
def test_resumed_build_equals_an_uninterrupted_one(docs_dir, tok, tmp_path, monkeypatch, layout):
    monkeypatch.setattr(store_build, "BATCH_DOCS", 1)
    whole = _build(docs_dir, tok, tmp_path / "whole", layout)
    assert _build(docs_dir, tok, tmp_path / "cut", layout, stop_after_shards=2) is None  # "killed"
    (partial,) = (tmp_path / "cut").glob("store-*.partial")
    assert sorted(p.name for p in partial.glob("shard-*.bin")) == ["shard-00000.bin", "shard-00001.bin"]
    (partial / ".shard-00002.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
    first_kept = json.loads((partial / "shard-00001.json").read_text())["resume"][0]
    seen: list[int] = []
    real = store_build._batches

    def spy(*a, **k):
        for meta, texts in real(*a, **k):
            seen.extend(i for i, _ in meta)
            yield meta, texts

    monkeypatch.setattr(store_build, "_batches", spy)
    resumed = _build(docs_dir, tok, tmp_path / "cut", layout)
    assert min(seen) == first_kept > 0  # finished shards were kept, not re-tokenised
    assert _shard_bytes(resumed) == _shard_bytes(whole) and not partial.exists()


def _recipe(make_recipe, **data):
    return make_recipe({"data": {"eval": None, **data}})


@pytest.mark.parametrize("arch", ["bert", "ul2"])
def test_prepare_data_matches_the_old_path_and_so_do_the_losses(cli, make_recipe, tmp_path, monkeypatch, arch):
    changes = {"data": {"eval": None}, "model": {"arch": arch}, "train": {"steps": 4, "eval_every": 0}}
    if arch == "ul2":
        changes["tokenizer"] = {"vocab_size": 600}
    path = make_recipe(changes)
    recipe = load_recipe(path)
    rd = prepare_data(recipe)
    # the old path, as prepare_data did it before the store
    docs = load_documents(resolve_data_files(recipe.data.train, recipe.base_dir, "data.train"))
    layout = "examples" if arch == "ul2" else "bert"
    old_train, old_eval = split_blocks(pack_documents(docs, rd.tokenizer, 32, None, layout=layout), 0.05, 0)
    assert torch.equal(rd.train[:], old_train) and torch.equal(rd.eval[:], old_eval)

    run_ok(cli, "pretrain", path, "--out", tmp_path / "store")
    from raptr_cli.train import loop
    from raptr_cli.train.data_setup import RunData

    real = loop.prepare_data

    def in_memory(*a, **k):  # the same RunData with plain tensors: the old trainer's input
        got = real(*a, **k)
        return RunData(got.tokenizer, got.specials, old_train.clone(), old_eval.clone(), got.documents)

    monkeypatch.setattr(loop, "prepare_data", in_memory)
    run_ok(cli, "pretrain", path, "--out", tmp_path / "memory")
    losses = [[r["loss"] for r in train_rows(read_rows(tmp_path / d))] for d in ("store", "memory")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_a_changed_corpus_or_tokenizer_names_another_store(make_recipe, tmp_path):
    path = _recipe(make_recipe)
    first = prepare_data(load_recipe(path))
    again = prepare_data(load_recipe(path))
    assert again.train.store.folder == first.train.store.folder  # mapped, not rebuilt
    train_txt = path.parent / "data" / "train.txt"
    train_txt.write_text(train_txt.read_text() + "\nthe cat finds a new song at night .")
    changed = prepare_data(load_recipe(path))
    assert changed.train.store.folder != first.train.store.folder
    assert len(changed.train) + len(changed.eval) >= len(first.train) + len(first.eval)
    other_tok = prepare_data(load_recipe(path, ["tokenizer.vocab_size=150"]))
    assert other_tok.train.store.folder not in (first.train.store.folder, changed.train.store.folder)


def test_tokenizer_trains_on_a_deterministic_sample(make_recipe, tmp_path):
    path = make_recipe({"data": {"train": ["docs/*.txt"], "eval": None}})
    docs = generate_corpus(12, 10, seed=4)
    (path.parent / "docs").mkdir()
    for i, d in enumerate(docs):
        (path.parent / "docs" / f"d{i:02d}.txt").write_text(d)
    total = sum(len(d.encode()) for d in docs)
    whole = prepare_data(load_recipe(path)).tokenizer
    assert whole.to_str() == train_wordpiece(docs, vocab_size=200).to_str()  # S > T: the whole corpus
    budget = total // 3
    got = prepare_data(load_recipe(path, [f"tokenizer.train_sample_bytes={budget}"])).tokenizer
    cut = int(budget / total * 2**63)
    sample = [d for i, d in enumerate(docs) if seed_for("tokenizer-sample", i) < cut]
    assert 0 < len(sample) < len(docs)
    assert got.to_str() == train_wordpiece(sample, vocab_size=200).to_str()


def test_data_prepare_builds_what_pretrain_then_maps(cli, make_recipe, tmp_path):
    path = make_recipe()
    res = run_ok(cli, "data", "prepare", path, "--num-proc", "1")
    assert "train /" in res.stdout and "eval blocks" in res.stdout
    cache = Path(res.stdout.split("store ")[-1].strip())
    assert open_store(cache) is not None
    before = set(cache.parent.glob("store-*"))
    run_ok(cli, "pretrain", path, "--out", tmp_path / "run", "--set", "train.steps=2")
    assert set(cache.parent.glob("store-*")) == before  # nothing rebuilt


@pytest.mark.parametrize(
    "args, words",
    [
        (["--num-proc", "0"], ["--num-proc", "at least 1"]),
        (["--num-proc", "-3"], ["--num-proc", "at least 1"]),
    ],
)
def test_prepare_bad_input_exits_2(cli, make_recipe, args, words):
    res = cli("data", "prepare", make_recipe(), *args)
    assert res.exit_code == 2 and all(w in res.output for w in words) and "Traceback" not in res.output


def test_prepare_missing_recipe_exits_2(cli, tmp_path):
    res = cli("data", "prepare", tmp_path / "nope.toml")
    assert res.exit_code == 2 and "nope.toml" in res.output and "Traceback" not in res.output
