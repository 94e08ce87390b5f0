"""`raptr finetune`: a tiny pretrained BERT fine-tunes on a learnable TSV and beats chance; the
fine-tuned model loads into transformers' BertForSequenceClassification with equal logits; bad
task files exit 2 naming the file and column; the --json contract; the built-in genre task is
deterministic and keeps its dev plays out of train (on a generated stand-in corpus: tests never
read ~/.cache); the metrics against hand-computed values.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, merged, run_ok, to_toml

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ANIMALS = ["the cat", "a dog", "a bird", "our horse"]
PEOPLE = ["the king", "my friend", "the queen", "the baker"]
VERBS = ["sees", "likes", "finds", "calls", "loves", "follows"]
OBJECTS = ["the ball", "a fish", "the crown", "an apple", "the river", "a song"]
FAST = ["--set", "finetune.lr=2e-3", "--set", "finetune.epochs=4", "--set", "finetune.batch_size=16"]


def _tsv(path: Path, n: int, seed: int, pair: bool = False) -> Path:
    """A task whose label is the subject's kind (a word in the sentence): learnable in seconds."""
    rng = random.Random(seed)
    rows = ["sentence1\tsentence2\tlabel" if pair else "sentence\tlabel"]
    for i in range(n):
        animal = i % 2 == 0
        s = f"{rng.choice(ANIMALS if animal else PEOPLE)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ."
        label = "animal" if animal else "person"
        rows.append(f"{s}\t{rng.choice(OBJECTS)} is here .\t{label}" if pair else f"{s}\t{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_dir) -> Path:
    """A 2-layer, 32-wide BERT pretrained for 8 steps on the generated corpus."""
    from typer.testing import CliRunner

    from raptr_cli.cli.main import app

    d = tmp_path_factory.mktemp("ft")
    shutil.copytree(corpus_dir, d / "data")
    (d / "r.toml").write_text(to_toml(merged(TINY, {"run": {"name": "ft"}, "train": {"checkpoint_every": 4}})))
    res = CliRunner().invoke(app, ["pretrain", str(d / "r.toml"), "--out", str(d / "run")])
    assert res.exit_code == 0, res.output
    return d / "run"


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("task")
    return f"train={_tsv(d / 'train.tsv', 240, 0)},dev={_tsv(d / 'dev.tsv', 80, 1)}"


def test_finetune_beats_chance_and_json_contract(run, task, cli, tmp_path):
    out = tmp_path / "ft"
    res = run_ok(
        cli, "finetune", run, "--task", task, "--seeds", "0,1", "--from-scratch", "--out", out, "--json", *FAST
    )
    doc = json.loads(res.stdout)  # stdout holds the JSON document alone
    assert doc == json.loads((out / "finetune.json").read_text()) | {"seconds": doc["seconds"]}
    for key in (
        "checkpoint",
        "run",
        "arch",
        "task",
        "settings",
        "metric",
        "metrics",
        "seeds",
        "pretrained",
        "scratch",
        "gain",
        "steps_per_seed",
    ):
        assert key in doc, key
    assert doc["task"]["chance"]["accuracy"] == 0.5 and doc["task"]["labels"] == ["animal", "person"]
    assert doc["metrics"] == ["accuracy", "macro_f1", "mcc"] and doc["settings"]["lr"] == 2e-3
    for init in ("pretrained", "scratch"):
        runs = doc[init]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for m in doc["metrics"]:
            vals = [r[m] for r in runs]
            assert doc[init]["mean"][m] == pytest.approx(np.mean(vals))
            assert doc[init]["std"][m] == pytest.approx(np.std(vals, ddof=1))
    assert doc["gain"]["mcc"] == pytest.approx(doc["pretrained"]["mean"]["mcc"] - doc["scratch"]["mean"]["mcc"])
    # The label is one word of the sentence: both inits learn it, far above chance (0.5).
    assert all(r["accuracy"] >= 0.9 and r["mcc"] > 0.8 for r in doc["pretrained"]["runs"]), doc["pretrained"]
    # Seeds differ (head init, order, dropout); a rerun of a seed is identical.
    again = json.loads(
        run_ok(cli, "finetune", run, "--task", task, "--seeds", "1", "--out", tmp_path / "b", "--json", *FAST).stdout
    )
    assert again["pretrained"]["runs"][0]["train_loss"] == doc["pretrained"]["runs"][1]["train_loss"]

    # any checkpoint, with the rich table; the default OUT lives in the run directory
    table = run_ok(
        cli,
        "finetune",
        run / "checkpoints" / "step-0000004",
        "--task",
        task,
        "--seeds",
        "0",
        *FAST,
        "--set",
        "finetune.max_steps=3",
    )
    assert "pretrained │ mean" in table.stdout and "chance 0.500" in table.stdout
    (found,) = (run / "finetune").glob("*/step-0000004/finetune.json")  # RUN/finetune/<task dir name>/
    ck = json.loads(found.read_text())
    assert ck["step"] == 4 and ck["checkpoint"].endswith("step-0000004") and ck["pretrained"]["runs"][0]["steps"] == 3


def test_regression_and_pair_task(run, cli, tmp_path):
    rng = random.Random(0)
    for split, n in (("train", 64), ("dev", 32)):
        rows = ["sentence1,sentence2,label"]
        for _ in range(n):
            a, b = rng.choice(ANIMALS + PEOPLE), rng.choice(OBJECTS)
            rows.append(f"{a} sees {b} .,{b} .,{(1.5 if a in ANIMALS else 3.25) + rng.random() / 10:.3f}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows))
    doc = json.loads(
        run_ok(
            cli,
            "finetune",
            run,
            "--task",
            tmp_path,
            "--seeds",
            "0",
            "--json",
            "--out",
            tmp_path / "o",
            "--set",
            "finetune.max_steps=20",
        ).stdout
    )
    assert doc["task"]["kind"] == "regression" and doc["task"]["pair"] is True
    assert doc["metrics"] == ["pearson", "spearman", "mse"] and doc["metric"] == "pearson"
    assert -1 <= doc["pretrained"]["runs"][0]["pearson"] <= 1


def test_saved_model_loads_into_bert_for_sequence_classification(run, tmp_path):
    """The fine-tuned model (encoder + pooler + head) under HF's names: from_pretrained finds every
    key, and its logits equal raptr's on a padded batch of sentence pairs (token types 0/1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from raptr_cli.finetune.config import FinetuneConfig
    from raptr_cli.finetune.heads import collate, encode
    from raptr_cli.finetune.run import build_classifier, load_pretrained, save_classifier
    from raptr_cli.finetune.tasks import load_task

    d = tmp_path / "pair"
    d.mkdir()
    _tsv(d / "train.tsv", 8, 0, pair=True), _tsv(d / "dev.tsv", 4, 1, pair=True)
    cfg = FinetuneConfig()
    task = load_task(str(d), cfg)
    p = load_pretrained(run)
    ours = build_classifier(p, "pretrained", task.num_labels, seed=3)
    with torch.no_grad():  # move the new pooler/head off their near-zero init
        for prm in ours.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(prm.numel())))
    save_classifier(ours, p, task, tmp_path / "hf")
    hf, info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path / "hf", local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf.config.id2label == {0: "animal", 1: "person"}
    assert set(load_file(str(tmp_path / "hf" / "model.safetensors"))) == set(hf.state_dict())
    a = ["the cat .", "a dog sees the river and the crown and a song .", "my friend likes a fish .", "the king"]
    b = ["a song .", "the ball .", "the river is here and the tree is here .", "an apple"]
    enc = encode(p.tokenizer, "bert", p.specials, a, b, 64)
    batch = collate(enc, [0, 1, 2, 3], int(p.specials["pad"]))
    assert batch["token_type_ids"].max() == 1 and (batch["attention_mask"] == 0).any()  # pairs, padding
    ours.eval(), hf.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(**batch).logits, ours(**batch), atol=1e-5, rtol=1e-5)
    # and the exported tokenizer gives the same ids as raptr's pair encoding
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert [hf_tok(x, y)["input_ids"] for x, y in zip(a, b)] == enc.ids


def _bad(tmp_path: Path, train: str | bytes, dev: str | bytes, suffix: str = ".tsv") -> str:
    for name, body in (("train", train), ("dev", dev)):
        p = tmp_path / f"{name}{suffix}"
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return f"train={tmp_path / f'train{suffix}'},dev={tmp_path / f'dev{suffix}'}"


GOOD = "sentence\tlabel\na cat .\t0\na king .\t1\n"


@pytest.mark.parametrize(
    "case, train, dev, suffix, expect",
    [
        (
            "missing column",
            "text\tlabel\na cat .\t0\n",
            GOOD,
            ".tsv",
            ["train.tsv", "'sentence'", "columns: text, label"],
        ),
        ("missing label", GOOD, "sentence\ty\na cat .\t0\n", ".tsv", ["dev.tsv", "'label'"]),
        (
            "unseen dev label",
            GOOD,
            "sentence\tlabel\na cat .\t2\n",
            ".tsv",
            ["dev.tsv", "'label'", "'2'", "never occurs"],
        ),
        ("empty file", "", GOOD, ".tsv", ["train.tsv is empty"]),
        ("header only", "sentence\tlabel\n", GOOD, ".tsv", ["train.tsv", "no examples"]),
        (
            "not utf-8",
            b"sentence\tlabel\ncaf\xe9 .\t0\nking .\t1\n",
            GOOD,
            ".tsv",
            ["train.tsv is not UTF-8", "line 2"],
        ),
        (
            "one class",
            "sentence\tlabel\na cat .\t0\na dog .\t0\n",
            GOOD,
            ".tsv",
            ["train.tsv", "'label'", "two classes"],
        ),
        ("bad jsonl", '{"sentence": "a", "label": 0}\nnot json\n', GOOD, ".jsonl", ["train.jsonl line 2"]),
        (
            "csv missing column",
            "sentence1,label\na,0\nb,1\n",
            "sentence1,label\na,0\n",
            ".csv",
            ["train.csv", "'sentence2'"],
        ),
    ],
)
def test_bad_task_files_exit_2(run, cli, tmp_path, case, train, dev, suffix, expect):
    res = cli("finetune", run, "--task", _bad(tmp_path, train, dev, suffix), "--out", tmp_path / "o")
    assert res.exit_code == 2, (case, res.output)
    msg = " ".join(res.stderr.split())
    assert "Traceback" not in res.output and all(e in msg for e in expect), (case, msg)
    assert not (tmp_path / "o").exists()  # refused before any work


def test_bad_specs_and_settings_exit_2(run, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for args, expect in (
        (["--task", "glue/rte"], "HF_DATASETS_OFFLINE is set"),
        (["--task", "builtin:nope"], "unknown built-in task 'nope'"),
        (["--task", "train=a.tsv"], "expected train=PATH,dev=PATH"),
        (["--task", f"train={tmp_path}/x.tsv,dev={tmp_path}/y.tsv"], "task file not found"),
        (["--task", str(tmp_path)], "holds no train file"),
        (["--task", "builtin:shakespeare-genre", "--set", "finetune.lrr=1"], "did you mean 'lr'"),
        (["--task", "builtin:shakespeare-genre", "--seeds", "0,x"], "--seeds"),
    ):
        res = cli("finetune", run, *args)
        assert res.exit_code == 2 and expect in " ".join(res.stderr.split()), (args, res.output)


# --- the built-in task, on a generated stand-in for the cached corpus ----------------------------


def _fake_corpus(root: Path) -> None:
    """Every play of the genre table in the corpus's layout: front matter, ACT/SCENE headings,
    speaker headings, stage directions, and dialogue lines carrying the play's own marker word."""
    from raptr_cli.finetune.builtin import GENRES

    folder = root / "shakespeare"
    folder.mkdir(parents=True)
    files = {}
    for plays in GENRES.values():
        for play in plays:
            rng = random.Random(play)
            parts = [f"{play.upper()}\n\nPERSONS REPRESENTED.\n\nSomeone, a lord.\nAnother.\n\nACT I.\n"]
            for i in range(260):
                if i % 40 == 0:
                    parts.append(f"SCENE {i // 40}. A place.\n\n[Enter SPEAKER{i % 3}.]\n")
                words = " ".join(rng.choice(VERBS + OBJECTS) for _ in range(7))
                parts.append(f"SPEAKER{i % 3}.\nmark{play} {words},\nand {words} [Aside] too.\n")
            (folder / f"{play}_gut.txt").write_text("\n".join(parts))
            files[f"{play}_gut.txt"] = {"bytes": (folder / f"{play}_gut.txt").stat().st_size, "sha256": "-"}
    (folder / "MANIFEST.json").write_text(json.dumps({"corpus": "shakespeare", "files": files}))


def test_builtin_genre_task_is_deterministic_and_holds_out_whole_plays(tmp_path, monkeypatch):
    from raptr_cli.finetune.builtin import DEV_PLAYS, GENRES, PER_PLAY
    from raptr_cli.finetune.config import FinetuneConfig
    from raptr_cli.finetune.tasks import load_task

    monkeypatch.setenv("RAPTR_CACHE", str(tmp_path))
    _fake_corpus(tmp_path)
    a, b = (load_task("builtin:shakespeare-genre", FinetuneConfig()) for _ in range(2))
    assert (a.train.a, a.y_train, a.dev.a, a.y_dev) == (b.train.a, b.y_train, b.dev.a, b.y_dev)
    n_dev = len(DEV_PLAYS)
    assert len(a.dev.a) == n_dev * PER_PLAY and len(a.train.a) == (37 - n_dev) * PER_PLAY
    genre_of = {p: g for g, plays in GENRES.items() for p in plays}
    for split, ys, from_dev in ((a.train, a.y_train, False), (a.dev, a.y_dev, True)):
        for text, y in zip(split.a, ys):
            plays = {w[4:] for w in text.split() if w.startswith("mark")}
            assert len(plays) == 1, text  # a passage never spans two plays
            (play,) = plays
            assert (play in DEV_PLAYS) == from_dev and a.label_names[y] == genre_of[play]
            assert "SPEAKER" not in text and "[" not in text and "SCENE" not in text and "lord" not in text
    s = a.summary()
    assert s["dev_class_counts"] == {"comedy": 3 * PER_PLAY, "history": 3 * PER_PLAY, "tragedy": 3 * PER_PLAY}
    assert s["chance"] == {"majority_class": "comedy", "accuracy": 1 / 3, "best_constant_accuracy": 1 / 3}


def test_metrics_against_hand_computed_values():
    from raptr_cli.finetune.metrics import classification_scores, regression_scores

    # binary: TP=2 TN=2 FP=0 FN=1 -> MCC = (2*2 - 0*1) / sqrt(2*3*2*3) = 2/3; F1 = 0.8 for both classes
    s = classification_scores(np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1]), 2)
    assert s == pytest.approx({"accuracy": 0.8, "macro_f1": 0.8, "mcc": 2 / 3})
    assert classification_scores(np.array([0, 1, 2]), np.array([1, 1, 1]), 3)["mcc"] == 0.0  # constant
    r = regression_scores(np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 6, 9]))
    assert r["spearman"] == pytest.approx(1.0) and r["mse"] == pytest.approx((1 + 4 + 9 + 25) / 4)


def test_ul2_head_mean_pools_the_bidirectional_input_and_ignores_padding():
    """UL2: the score of an example does not depend on the padding of its batch, and every input
    token (the first included) sees the last one (the input is one bidirectional prefix)."""
    from raptr_cli.models.ul2.classifier import DecoderClassifier
    from raptr_cli.models.ul2.model import DecoderConfig, DecoderForPrefixLM

    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=64,
        num_layers=2,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        dropout=0.0,
        tie_embeddings=False,
    )
    clf = DecoderClassifier(DecoderForPrefixLM(cfg), num_labels=3).eval()
    assert "decoder.lm_head.weight" not in clf.state_dict()  # the unused LM head is dropped
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        both = clf(ids, mask)
        torch.testing.assert_close(both[1], clf(ids[1:, :3], mask[1:, :3])[0])
        h = clf.decoder.hidden_states(ids[:1], prefix_len=torch.tensor([5]))
        h2 = clf.decoder.hidden_states(torch.tensor([[5, 6, 7, 8, 10]]), prefix_len=torch.tensor([5]))
    assert not torch.allclose(h[0, 0], h2[0, 0])  # position 0 attends to the changed last token
    torch.testing.assert_close(both[0], clf.score(h.mean(1))[0])


def test_compare_downstream_adds_the_score_and_the_gain(run, task, cli, tmp_path):
    args = ("compare", "--runs", run, "--out", tmp_path / "cmp", "--downstream", task, "--downstream-seeds", "0,1")
    doc = json.loads(run_ok(cli, *args, "--json").stdout)
    d = doc["runs"][0]["downstream"]
    ft = json.loads(Path(d["finetune_json"]).read_text())
    assert d["metric"] == "accuracy" and d["seeds"] == [0, 1]
    assert (d["mean"], d["std"]) == (ft["pretrained"]["mean"]["accuracy"], ft["pretrained"]["std"]["accuracy"])
    assert d["gain"] == pytest.approx(d["mean"] - d["scratch_mean"])
    assert doc["downstream_task"]["chance"]["accuracy"] == 0.5
    assert "| pretrained | from scratch | pretraining gain |" in (tmp_path / "cmp" / "compare.md").read_text()
    # a second compare reuses the run's finetune.json instead of fine-tuning again
    before = Path(d["finetune_json"]).stat().st_mtime_ns
    table = run_ok(cli, *args)
    assert Path(d["finetune_json"]).stat().st_mtime_ns == before and "pretraining gain" in table.stdout


def test_compare_downstream_shares_one_scratch_result(run, task, cli, tmp_path):
    """From-scratch fine-tunes do not depend on the pretrained weights: two runs of one architecture
    and tokenizer (another pretraining seed) share one scratch result, equal to computing it again."""
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("finetune"))
    recipe = (other / "recipe.toml").read_text()
    (tmp_path / "b.toml").write_text(recipe.replace("seed = 0", "seed = 5", 1))
    assert "seed = 5" in (tmp_path / "b.toml").read_text()
    run_ok(cli, "pretrain", tmp_path / "b.toml", "--out", other, "--overwrite")
    first = tmp_path / "first"
    shutil.copytree(run, first, ignore=shutil.ignore_patterns("finetune"))
    args = ("compare", "--runs", first, other, "--out", tmp_path / "cmp", "--downstream", task)
    doc = json.loads(run_ok(cli, *args, "--downstream-seeds", "0,1", "--json").stdout)
    a, b = (r["downstream"] for r in doc["runs"])
    assert a["scratch_from"] is None and b["scratch_from"] == str(Path(a["finetune_json"]).parent)
    # two pretraining seeds of one run.name: pooled over them, and the table says which row is which seed
    (g,) = doc["downstream_by_name"]
    assert g["seeds"] == [0, 5] and g["mean"] == pytest.approx((a["mean"] + b["mean"]) / 2)
    assert g["std"] == pytest.approx(abs(a["mean"] - b["mean"]) / 2**0.5)
    assert g["gain"] == pytest.approx((a["gain"] + b["gain"]) / 2)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| run | seed | pretrained |" in md and f"| ft | 5 | {b['mean']:.4f} +- {b['std']:.4f} |" in md
    assert f"| ft | 0, 5 | {g['mean']:.4f} +- {g['std']:.4f} (" in md
    mine = json.loads(Path(b["finetune_json"]).read_text())
    assert Path(mine["checkpoint"]).is_relative_to(other) and [r["seed"] for r in mine["pretrained"]["runs"]] == [0, 1]
    alone = tmp_path / "alone"
    run_ok(cli, "finetune", other, "--task", task, "--seeds", "0,1", "--from-scratch", "--out", alone)
    again = json.loads((alone / "finetune.json").read_text())["scratch"]
    shared = json.loads(Path(b["finetune_json"]).read_text())["scratch"]
    for x, y in zip(again["runs"], shared["runs"]):
        assert x["seed"] == y["seed"] and x["accuracy"] == y["accuracy"] and x["macro_f1"] == y["macro_f1"]
    # a run fine-tuned earlier serves its scratch result wherever it is listed, also after a new run
    third = tmp_path / "third"
    shutil.copytree(run, third, ignore=shutil.ignore_patterns("finetune"))
    args = ("compare", "--runs", third, other, "--out", tmp_path / "cmp2", "--downstream", task)
    c, b2 = (
        r["downstream"] for r in json.loads(run_ok(cli, *args, "--downstream-seeds", "0,1", "--json").stdout)["runs"]
    )
    assert c["scratch_from"] == str(Path(a["finetune_json"]).parent) and b2 == b
