"""The context-free floor (floor.py): the train-split unigram's cross-entropy at the positions the
model is scored on, in every place a loss is reported.

The expected floors are recomputed here by hand (a Counter over the train blocks, add-0.5 smoothing
over the vocabulary minus the specials, -log p at the eval batches' labels), not with floor.py."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest

from conftest import eval_rows, read_rows, run_ok

pytestmark = pytest.mark.usefixtures("torch_one_thread")

RAPTR_3 = {
    "model": {"n_layers": 3},
    "schedule": {
        "method": "raptr",
        "stages": [{"fraction": 0.5, "path_length": 2}, {"fraction": 0.5, "path_length": 3}],
    },
}
UL2 = {
    "model": {
        "arch": "ul2",
        "n_layers": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    },
    "tokenizer": {"vocab_size": 600},
    "train": {"steps": 4, "seq_len": 64, "eval_every": 4},
}


def _specials(tok, arch: str) -> set[int]:
    if arch == "bert":
        names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        names = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[NLU]", "[NLG]", "[S2S]"]
        i = 0
        while tok.token_to_id(f"<extra_id_{i}>") is not None:
            names.append(f"<extra_id_{i}>")
            i += 1
    return {tok.token_to_id(n) for n in names}


def hand_floor(run, eval_files: list[str] | None = None) -> tuple[float, int]:
    """(floor, positions): unigram of the run's train split, scored at the eval batches' labels
    (the run's eval split, or `eval_files` as `raptr eval --data` reads them)."""
    from raptr_cli.models.registry import objective_for
    from raptr_cli.recipe import load_recipe
    from raptr_cli.train.data_setup import prepare_data

    recipe = load_recipe(run / "recipe.toml")
    rd = prepare_data(recipe, None, run / "tokenizer.json")
    tok, V = rd.tokenizer, rd.tokenizer.get_vocab_size()
    specials = _specials(tok, recipe.model.arch)
    counts = Counter(int(t) for t in rd.train.reshape(-1).tolist() if t >= 0 and int(t) not in specials)
    N = sum(counts.values())
    Z = N + 0.5 * (V - len(specials))
    evals = rd.eval
    if eval_files:
        evals = prepare_data(
            load_recipe(run / "recipe.toml", [f"data.eval={json.dumps(eval_files)}"]),
            None,
            run / "tokenizer.json",
            eval_only=True,
        ).eval
    obj = objective_for(recipe, rd.specials, V)
    B, total, n = recipe.train.batch_size, 0.0, 0
    for b in range(min(recipe.train.eval_batches, max(1, len(evals) // B))):
        batch, _ = obj.batch(evals[b * B : (b + 1) * B], recipe.run.seed ^ 0x5EED, b)
        for y in batch["labels"].reshape(-1).tolist():
            if y != -100 and y not in specials:
                total -= math.log((counts[y] + 0.5) / Z)
                n += 1
    return total / n, n


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, corpus_dir):
    """A 2-stage RaPTr run, its eval split held out from the train file (random blocks)."""
    from typer.testing import CliRunner

    from conftest import TINY, merged, to_toml
    from raptr_cli.cli.main import app

    d = tmp_path_factory.mktemp("floor")
    shutil.copytree(corpus_dir, d / "data")
    recipe = d / "r.toml"
    recipe.write_text(to_toml(merged(TINY, {**RAPTR_3, "data": {"eval": [], "eval_fraction": 0.15}})))
    res = CliRunner().invoke(app, ["pretrain", str(recipe), "--out", str(d / "run")])
    assert res.exit_code == 0, res.output
    return d / "run"


def test_the_floor_equals_a_direct_unigram_computation_in_every_row(bert_run):
    floor, n = hand_floor(bert_run)
    rows = read_rows(bert_run)
    evals = eval_rows(rows)
    assert len(evals) >= 2
    for r in evals:  # the same masked positions every eval, so the same floor
        assert r["unigram_loss"] == pytest.approx(floor, rel=1e-9)
        assert r["unigram_tokens"] == n == r["eval_tokens"]  # MLM: every masked position is scored
        assert r["loss_below_unigram"] == pytest.approx(r["unigram_loss"] - r["eval_loss"], abs=1e-9)
    stage_ends = [r for r in rows if r.get("event") == "stage_end"]
    assert len(stage_ends) == 2
    for r in stage_ends:
        assert r["unigram_loss"] == pytest.approx(floor) and r["loss_below_unigram"] == pytest.approx(
            floor - r["eval_loss"]
        )
    end = next(r for r in rows if r.get("event") == "run_end")
    assert end["unigram_loss"] == pytest.approx(floor)
    assert end["loss_below_unigram"] == pytest.approx(floor - end["eval_loss"])
    cache = json.loads((bert_run / "unigram.json").read_text())
    assert cache["smoothing"] == 0.5 and len(cache["counts"]) == cache["vocab_size"]


def test_eval_json_reports_the_floor_and_eval_data_counts_the_runs_train_split(bert_run, cli, tmp_path):
    res = json.loads(run_ok(cli, "eval", bert_run, "--json").stdout)
    floor, n = hand_floor(bert_run)
    assert res["unigram_loss"] == pytest.approx(floor, rel=1e-9) and res["unigram_tokens"] == n
    assert res["loss_below_unigram"] == pytest.approx(floor - res["eval_loss"], abs=1e-9)
    text = run_ok(cli, "eval", bert_run).stdout
    below = res["loss_below_unigram"]
    assert (
        f"floor (train-split unigram) {floor:.4f} at the same {n} positions: {abs(below):.4f} nats "
        f"{'below' if below >= 0 else 'above'} it" in text
    )

    # --data: the floor at those files' positions, the counts still from the run's train split; the
    # counts come from OUT/unigram.json, so this works with the train file gone
    data_dir = bert_run.parent / "data"
    other = tmp_path / "other.txt"
    shutil.copyfile(data_dir / "eval.txt", other)
    floor_d, n_d = hand_floor(bert_run, [str(other)])
    assert floor_d != pytest.approx(floor)
    (data_dir / "train.txt").rename(tmp_path / "train.txt")
    try:
        res_d = json.loads(run_ok(cli, "eval", bert_run, "--data", other, "--json").stdout)
    finally:
        (tmp_path / "train.txt").rename(data_dir / "train.txt")
    assert res_d["unigram_loss"] == pytest.approx(floor_d, rel=1e-9) and res_d["unigram_tokens"] == n_d
    assert res_d["loss_below_unigram"] == pytest.approx(floor_d - res_d["eval_loss"], abs=1e-9)

    # without the cache (a run from before the floor) --data recounts the run's train split, not the files
    cache = bert_run / "unigram.json"
    saved = cache.read_bytes()
    cache.unlink()
    try:
        res_n = json.loads(run_ok(cli, "eval", bert_run, "--data", other, "--json").stdout)
    finally:
        cache.write_bytes(saved)
    assert res_n["unigram_loss"] == pytest.approx(floor_d, rel=1e-9)


def test_a_stale_cache_is_recounted_not_trusted(bert_run, cli):
    cache = bert_run / "unigram.json"
    saved = cache.read_bytes()
    d = json.loads(saved)
    d["counts"] = [1] * len(d["counts"])  # wrong counts, and a fingerprint of other train data
    d["train_sha256"] = "0" * 24
    cache.write_text(json.dumps(d))
    try:
        res = json.loads(run_ok(cli, "eval", bert_run, "--json").stdout)
    finally:
        cache.write_bytes(saved)
    assert res["unigram_loss"] == pytest.approx(hand_floor(bert_run)[0], rel=1e-9)


def test_ul2_floor_is_scored_at_the_target_text_tokens(make_recipe, cli, tmp_path):
    out = tmp_path / "ul2"
    printed = run_ok(cli, "pretrain", make_recipe(UL2), "--out", out, "--set", "log.console=plain").stdout
    floor, n = hand_floor(out)
    last = eval_rows(read_rows(out))[-1]
    assert last["unigram_loss"] == pytest.approx(floor, rel=1e-9) and last["unigram_tokens"] == n
    assert 0 < n < last["eval_tokens"]  # the sentinel and [EOS] targets are left out
    # the model's loss at those same positions is what the floor is compared with
    assert last["loss_below_unigram"] == pytest.approx(floor - last["eval_loss_at_unigram_positions"], abs=1e-9)
    # ... and the run's summary rows and console carry it, so "below" can be checked by eye
    end = [r for r in read_rows(out) if r.get("event") == "run_end"][0]
    assert end["eval_loss_at_unigram_positions"] == last["eval_loss_at_unigram_positions"]
    assert f"model {last['eval_loss_at_unigram_positions']:.4f} at its positions" in printed
    res = json.loads(run_ok(cli, "eval", out, "--json").stdout)
    assert res["unigram_loss"] == pytest.approx(floor, rel=1e-9)
    assert res["loss_below_unigram"] == pytest.approx(last["loss_below_unigram"], rel=1e-6)


def test_compare_reports_the_floor_in_json_markdown_table_and_plot(bert_run, cli, tmp_path, monkeypatch):
    import matplotlib.axes

    lines = []
    real = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "axhline",
        lambda self, y=0, *a, **k: lines.append((y, k.get("ls"))) or real(self, y, *a, **k),
    )
    other = tmp_path / "seed1"  # a second "seed" of the run: the same files, seed 1
    shutil.copytree(bert_run, other)
    (other / "recipe.toml").write_text((other / "recipe.toml").read_text().replace("seed = 0", "seed = 1", 1))
    doc = json.loads(
        run_ok(cli, "compare", "--runs", bert_run, "--runs", other, "--out", tmp_path / "cmp", "--json").stdout
    )
    floor = hand_floor(bert_run)[0]
    final = eval_rows(read_rows(bert_run))[-1]
    for r in doc["runs"]:
        assert r["unigram_loss"] == pytest.approx(floor)
        assert r["loss_below_unigram"] == pytest.approx(floor - final["eval_loss"])
    assert doc["by_name"][0]["loss_below_unigram"]["mean"] == pytest.approx(floor - final["eval_loss"])
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| unigram floor | below floor |" in md and f"| {floor:.4f} | {floor - final['eval_loss']:.4f} |" in md
    assert lines == [(pytest.approx(round(floor, 4)), "--")]  # one floor, one dashed line
    table = run_ok(cli, "compare", "--runs", bert_run, "--out", tmp_path / "t").stdout
    assert "below floor" in table and f"{floor:.4f}" in table


def test_console_prints_the_floor_and_warns_when_the_final_model_is_not_clearly_below(capsys):
    from raptr_cli.cli.console import Console
    from raptr_cli.floor import FLOOR_MARGIN

    c = Console("plain")
    c.log({"step": 4, "eval_loss": 6.5, "eval_accuracy": 0.1, "unigram_loss": 6.6, "loss_below_unigram": 0.1})
    assert "floor 6.6000 (0.1000 below)" in capsys.readouterr().out
    end = {
        "event": "run_end",
        "step": 8,
        "tokens": 100,
        "flops": 1e9,
        "elapsed_s": 1.0,
        "eval_loss": 6.7,
        "unigram_loss": 6.6,
        "loss_below_unigram": -0.1,
    }
    c.log(end)
    cap = capsys.readouterr()
    assert "final eval loss 6.7000  floor 6.6000 (0.1000 above)" in cap.out
    assert "0.100 nats above the context-free floor" in cap.err and f"margin {FLOOR_MARGIN}" in cap.err
    c.log({**end, "eval_loss": 6.6 - FLOOR_MARGIN - 0.01, "loss_below_unigram": FLOOR_MARGIN + 0.01})
    assert "context-free floor" not in capsys.readouterr().err


def test_ranks_split_the_floor_like_the_loss(bert_run):
    """Under a launch each rank scores its share of the eval batches and the sums are all-reduced:
    the two shares' floor sums add up to the one-process floor."""
    from raptr_cli import floor as fl
    from raptr_cli.evaluation import load_model_dir
    from raptr_cli.models.registry import objective_for
    from raptr_cli.recipe import load_recipe
    from raptr_cli.train.data_setup import prepare_data
    from raptr_cli.train.step import evaluate

    recipe = load_recipe(bert_run / "recipe.toml")
    rd = prepare_data(recipe, None, bert_run / "tokenizer.json")
    model = load_model_dir(bert_run / "final", recipe, rd.vocab_size)
    obj = objective_for(recipe, rd.specials, rd.vocab_size)
    logp = fl.for_run(bert_run, rd.train, rd.tokenizer, rd.specials).log_probs()
    t = recipe.train
    args = (model, rd.eval, t.batch_size, t.eval_batches, obj, recipe.run.seed, "fp32")
    whole = evaluate(*args, unigram=logp)
    parts = [evaluate(*args, rank, 2, unigram=logp) for rank in (0, 1)]
    assert sum(p["unigram_tokens"] for p in parts) == whole["unigram_tokens"]
    assert sum(p["unigram_loss"] * p["unigram_tokens"] for p in parts) == pytest.approx(
        whole["unigram_loss"] * whole["unigram_tokens"], rel=1e-12
    )
    assert whole["unigram_loss"] == pytest.approx(hand_floor(bert_run)[0], rel=1e-9)
