"""Reproducible tokenizers and seed-independent eval splits (issue 15, items 2 and 3).

Tokenizers are trained in fresh processes (each with its own hash seeds) and under different
thread counts, and must come out byte-identical. Splits are checked through `prepare_data`, the
function the trainer and `raptr eval` build their data with.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

import raptr_cli
from conftest import generate_corpus, run_ok
from raptr_cli.data import pack_documents, split_blocks, split_documents
from raptr_cli.data.packing import _cache_key
from raptr_cli.data.tokenizer import SPECIAL_TOKENS, canonical_vocab, train_wordpiece
from raptr_cli.errors import UserError
from raptr_cli.objectives.ul2_tokenizer import canonical_bpe, train_bpe
from raptr_cli.recipe import load_recipe
from raptr_cli.train.data_setup import prepare_data

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SRC = str(Path(raptr_cli.__file__).resolve().parents[1])
PROBE = "Ex kalo mirenshi, the queen finds a sword by the sea! Quovor pétus zuba."


def _docs() -> list[str]:
    """Made-up words over 13 syllables (one accented) plus templated sentences: many pairs of
    equal frequency, so the tie-breaks between merges decide ids and the set at the cut."""
    rng = random.Random(0)
    syl = ["ka", "lo", "mi", "ren", "tus", "ba", "quo", "dem", "shi", "vor", "Ex", "zu", "pé"]
    lex = ["".join(rng.choices(syl, k=rng.randint(1, 4))) for _ in range(300)]
    return [" ".join(rng.choices(lex, k=200)) for _ in range(40)] + generate_corpus(10, 20, 0)


TRAIN_SCRIPT = """
import json, sys
from raptr_cli.data.tokenizer import train_wordpiece
from raptr_cli.objectives.ul2_tokenizer import train_bpe
docs_file, probe = sys.argv[1], sys.argv[2]
docs = json.loads(open(docs_file).read())
toks = {"wordpiece": train_wordpiece(docs, 300), "bpe": train_bpe(docs, 600, n_sentinels=8)}
sys.stdout.write(json.dumps({k: {"json": t.to_str(), "ids": t.encode(probe).ids} for k, t in toks.items()}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> list[dict]:
    """Both tokenizers trained on the same corpus three times: in two fresh interpreters (new
    Rust and Python hash seeds) with rayon's pool at 1 and at 2 threads (tokenizers' trainers
    honour RAYON_NUM_THREADS), and in this process."""
    docs_file = tmp_path_factory.mktemp("tok") / "docs.json"
    docs_file.write_text(json.dumps(_docs()))
    out = []
    for env in ({"PYTHONHASHSEED": "1", "RAYON_NUM_THREADS": "1"}, {"PYTHONHASHSEED": "2", "RAYON_NUM_THREADS": "2"}):
        full = {**os.environ, "PYTHONPATH": SRC, **env}
        res = subprocess.run(
            [sys.executable, "-c", TRAIN_SCRIPT, str(docs_file), PROBE],
            capture_output=True,
            text=True,
            env=full,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr
        out.append(json.loads(res.stdout))
    here = {"wordpiece": train_wordpiece(_docs(), 300), "bpe": train_bpe(_docs(), 600, n_sentinels=8)}
    out.append({k: {"json": t.to_str(), "ids": t.encode(PROBE).ids} for k, t in here.items()})
    return out


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_tokenizer_byte_identical_across_processes_and_thread_counts(kind, trained):
    first = trained[0][kind]
    for other in trained[1:]:
        assert other[kind]["json"] == first["json"]  # byte-identical tokenizer.json
        assert other[kind]["ids"] == first["ids"]
    vocab = json.loads(first["json"])["model"]["vocab"]
    assert len(vocab) == (300 if kind == "wordpiece" else 600)  # the cut fell inside the merges


def test_wordpiece_ids_are_laid_out_canonically():
    tok = train_wordpiece(_docs(), 300)
    by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    assert tokens[:5] == list(SPECIAL_TOKENS.values())
    chars = [t for t in tokens if len(t) == 1]
    cont = [t for t in tokens if len(t) == 3 and t.startswith("##")]
    n = 5 + len(chars) + len(cont)
    assert tokens[5:n] == sorted(chars) + sorted(cont)  # characters, then ## characters, by code point
    assert all(len(t.removeprefix("##")) > 1 for t in tokens[n:])  # then the learned merges
    assert "é" in chars and "##é" in cont  # a non-ASCII letter, word-initial and inside words
    # WordPiece as BERT uses it: continuation pieces, [UNK] for an unseen character
    enc = tok.encode("kalo ✓", add_special_tokens=False)
    assert enc.tokens[-1] == "[UNK]" and tok.decode(enc.ids[:-1]) == "kalo"


def test_canonical_bpe_rederives_ids_from_the_merges():
    tok = train_bpe(_docs(), 600, n_sentinels=8)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    # scramble the numbering of every non-special token (as a trainer numbering in another order would)
    names = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= 15]
    shuffled = names[:]
    random.Random(1).shuffle(shuffled)
    data["model"]["vocab"] = {
        **{t: i for t, i in vocab.items() if i < 15},
        **{t: 15 + k for k, t in enumerate(shuffled)},
    }
    scrambled = Tokenizer.from_str(json.dumps(data))
    assert scrambled.to_str() != tok.to_str()
    specials = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][:15]
    fixed = canonical_bpe(scrambled, specials)
    assert fixed.to_str() == tok.to_str()
    assert fixed.encode(PROBE).ids == tok.encode(PROBE).ids
    assert canonical_bpe(tok, specials) is tok  # the trainer's own layout is already canonical


def test_canonical_vocab_refuses_tokens_the_merges_do_not_explain():
    assert canonical_vocab(["[P]"], ["[P]", "b", "a", "ab"], ["ab"]) == {"[P]": 0, "a": 1, "b": 2, "ab": 3}
    with pytest.raises(ValueError):
        canonical_vocab(["[P]"], ["[P]", "a", "ab"], ["ab", "abc"])


def test_packed_block_cache_follows_the_tokenizer_ids():
    """Cached blocks are keyed on the tokenizer's JSON: the same tokens under other ids (what
    an old, hash-ordered tokenizer has) never reuse blocks packed with the canonical one."""
    docs = _docs()
    tok = train_bpe(docs, 600, n_sentinels=8)
    data = json.loads(tok.to_str())
    v = data["model"]["vocab"]
    a, b = [t for t, i in v.items() if i in (300, 301)]
    v[a], v[b] = v[b], v[a]
    other = Tokenizer.from_str(json.dumps(data))
    assert _cache_key(docs, tok, 32, "examples") != _cache_key(docs, other, 32, "examples")


# --- splits ------------------------------------------------------------------------------------

NAMES = ["one", "two", "three", "four", "five", "seven", "eight", "nine", "ten", "twelve"]


def _write_docs(folder: Path, n: int = 10) -> list[str]:
    """n documents, one file each (sorted by name), opening with their own marker sentence."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(n):
        text = f"this is play {NAMES[i]} .\n" + "\n".join(generate_corpus(1, 25, seed=100 + i))
        (folder / f"play{i:02d}.txt").write_text(text)
        docs.append(text)
    return docs


def _docs_recipe(make_recipe, tmp_path, n: int = 10, **changes):
    path = make_recipe(
        {"data": {"train": ["docs/*.txt"], "eval": None, "eval_fraction": 0.2, **changes.pop("data", {})}, **changes}
    )
    return path, _write_docs(tmp_path / "exp" / "docs", n)


@pytest.mark.parametrize("arch", ["bert", "ul2"])
@pytest.mark.parametrize("mode", ["blocks", "documents"])
def test_run_seed_leaves_the_eval_split_unchanged(make_recipe, tmp_path, arch, mode):
    path, _ = _docs_recipe(
        make_recipe,
        tmp_path,
        data={"eval_split": mode},
        model={"arch": arch},
        tokenizer={"vocab_size": 600 if arch == "ul2" else 200},
    )

    def split(*sets: str) -> tuple[torch.Tensor, torch.Tensor]:
        rd = prepare_data(load_recipe(path, list(sets)))
        return rd.train, rd.eval

    train0, eval0 = split("run.seed=0")
    train1, eval1 = split("run.seed=7")
    assert torch.equal(eval0, eval1) and torch.equal(train0, train1)  # byte-identical blocks
    _, other = split("run.seed=0", "data.split_seed=3")
    assert other.shape != eval0.shape or not torch.equal(other, eval0)


def test_documents_mode_holds_out_whole_documents(make_recipe, tmp_path):
    path, docs = _docs_recipe(
        make_recipe, tmp_path, data={"eval_split": "documents", "eval_fraction": 0.3, "split_seed": 5}
    )
    rd = prepare_data(load_recipe(path))
    train_docs, held = split_documents(docs, 0.3, seed=5)
    assert len(held) == 3 and len(train_docs) == 7 and not set(held) & set(train_docs)
    assert rd.documents == 7
    # the tokenizer saw the training documents only, and each part is packed from its own documents
    tok = train_wordpiece(train_docs, vocab_size=200)
    assert rd.tokenizer.to_str() == tok.to_str()
    assert torch.equal(rd.train, pack_documents(train_docs, tok, 32, None))
    assert torch.equal(rd.eval, pack_documents(held, tok, 32, None))

    def text(blocks: torch.Tensor) -> str:  # a part's rows, in order, hold its stream (specials skipped)
        return rd.tokenizer.decode(blocks.flatten().tolist())

    ev, tr = text(rd.eval), text(rd.train)
    for i, d in enumerate(docs):
        marker = f"this is play {NAMES[i]}"
        assert (marker in ev, marker in tr) == ((True, False) if d in held else (False, True)), marker


def test_split_documents_deterministic_and_refuses_empty_training():
    docs = [f"doc {i}" for i in range(42)]
    train, held = split_documents(docs, 0.05, seed=0)
    assert len(held) == 2 and (train, held) == split_documents(docs, 0.05, seed=0)
    assert [d for d in docs if d in held] == held and [d for d in docs if d in train] == train
    assert split_documents(docs, 0.05, seed=1)[1] != held
    assert split_documents(docs, 0.0, seed=0) == (docs, [])
    assert len(split_documents(docs[:3], 0.01, seed=0)[1]) == 1  # at least one
    with pytest.raises(UserError) as err:
        split_documents(docs[:1], 0.5, seed=0)
    assert "data.eval_fraction" in err.value.hint


def test_blocks_split_of_seed_zero_is_unchanged():
    """split_seed takes run.seed's place under the same stream tag: seed-0 runs keep their eval set."""
    from raptr_cli.data.packing import seed_for

    blocks = torch.arange(400).reshape(100, 4)
    gen = torch.Generator().manual_seed(seed_for("holdout", 0))
    expect, _ = torch.randperm(100, generator=gen)[:5].sort()
    assert torch.equal(split_blocks(blocks, 0.05, seed=0)[1], blocks[expect])


def test_eval_split_key_is_validated(cli, make_recipe):
    res = cli("pretrain", make_recipe(), "--set", "data.eval_split=plays", "--dry-run")
    assert res.exit_code == 2 and "data.eval_split" in res.output and "Traceback" not in res.output


def test_held_out_documents_too_short_name_themselves(make_recipe, tmp_path):
    path, _ = _docs_recipe(make_recipe, tmp_path, data={"eval_split": "documents", "eval_fraction": 0.1})
    (i,) = [k for k in range(10) if split_documents(list(range(10)), 0.1, seed=0)[1] == [k]]
    (tmp_path / "exp" / "docs" / f"play{i:02d}.txt").write_text("a short one .")
    with pytest.raises(UserError) as err:
        prepare_data(load_recipe(path))
    assert err.value.message.startswith("the held-out documents is too small for one block")


def test_documents_mode_trains_and_evaluates_end_to_end(cli, make_recipe, tmp_path):
    path, _ = _docs_recipe(make_recipe, tmp_path, data={"eval_split": "documents"})
    out = tmp_path / "run"
    run_ok(cli, "pretrain", path, "--out", out)
    saved = (out / "recipe.toml").read_text()
    assert 'eval_split = "documents"' in saved and "split_seed = 0" in saved
    res = json.loads(run_ok(cli, "eval", out, "--json").stdout)
    assert res["eval_loss"] > 0


def test_resume_of_a_run_from_before_split_seed(make_recipe, tmp_path):
    """An old run's recipe.toml has no data.split_seed: its blocks were held out by run.seed. A
    seed-0 run resumes as before; another seed is told which --set keeps its split."""
    from raptr_cli.train.run import _check_resume_recipe
    from raptr_cli.train.rundir import resolved_toml

    def old_run(seed: int):
        recipe = load_recipe(make_recipe({"run": {"seed": seed}}))
        out = tmp_path / f"old{seed}"
        out.mkdir()
        lines = [ln for ln in resolved_toml(recipe).splitlines() if not ln.startswith(("split_seed", "eval_split"))]
        (out / "recipe.toml").write_text("\n".join(lines) + "\n")
        return recipe, out

    _check_resume_recipe(*old_run(0))
    recipe, out = old_run(1)
    with pytest.raises(UserError) as err:
        _check_resume_recipe(recipe, out)
    assert "data.split_seed" in err.value.message and "--set data.split_seed=1" in err.value.hint
    _check_resume_recipe(load_recipe(make_recipe({"run": {"seed": 1}, "data": {"split_seed": 1}})), out)


def test_bundled_recipes_load_with_both_split_modes():
    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
    assert recipes
    for path in recipes:
        r = load_recipe(path)
        assert r.data.split_seed == 0 and r.data.eval_split in ("blocks", "documents")
        # the reproduction base (bert/ul2-tiny-ctx-*) holds out whole works; the others random blocks
        assert (r.data.eval_split == "documents") == ("-ctx-" in path.name), path.name
        for mode in ("blocks", "documents"):
            assert load_recipe(path, [f"data.eval_split={mode}"]).data.eval_split == mode
