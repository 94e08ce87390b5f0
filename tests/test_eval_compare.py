"""`raptr eval` and `raptr compare` on tiny trained runs, the UL2 path through the real trainer, and
the tracker option."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import eval_rows, read_rows, run_ok, train_rows

pytestmark = pytest.mark.usefixtures("torch_one_thread")

RAPTR_4 = {
    "model": {"n_layers": 4},
    "schedule": {
        "method": "raptr",
        "stages": [{"fraction": 0.5, "path_length": 3}, {"fraction": 0.5, "path_length": 4}],
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir):
    """A baseline and a RaPTr run of the same tiny model, data and seed."""
    from typer.testing import CliRunner

    from conftest import TINY, merged, to_toml
    from raptr_cli.cli.main import app

    d = tmp_path_factory.mktemp("evalcmp")
    shutil.copytree(corpus_dir, d / "data")
    out = {}
    for name, changes in (("base", {"model": {"n_layers": 4}}), ("raptr", RAPTR_4)):
        recipe = d / f"{name}.toml"
        recipe.write_text(to_toml(merged(TINY, {**changes, "run": {"name": name, "seed": 0}})))
        res = CliRunner().invoke(app, ["pretrain", str(recipe), "--out", str(d / name)])
        assert res.exit_code == 0, res.output
        out[name] = d / name
    out["root"] = d
    return out


def test_eval_equals_the_runs_final_eval_and_a_direct_recomputation(runs, cli):
    run = runs["raptr"]
    res = json.loads(run_ok(cli, "eval", run, "--json").stdout)
    assert res["eval_loss"] == pytest.approx(eval_rows(read_rows(run))[-1]["eval_loss"], rel=1e-6)
    assert res["perplexity"] == pytest.approx(math.exp(res["eval_loss"]))
    # direct recomputation: the saved model, the run's eval blocks and masks, plain cross-entropy
    from raptr_cli.evaluation import load_model_dir
    from raptr_cli.models.registry import objective_for
    from raptr_cli.recipe import load_recipe
    from raptr_cli.train.data_setup import prepare_data

    recipe = load_recipe(run / "recipe.toml")
    rd = prepare_data(recipe, None, run / "tokenizer.json")
    model = load_model_dir(run / "final", recipe, rd.vocab_size)
    obj = objective_for(recipe, rd.specials, rd.vocab_size)
    total = n = 0.0
    B = recipe.train.batch_size
    with torch.no_grad():
        for b in range(min(recipe.train.eval_batches, len(rd.eval) // B)):
            batch, _ = obj.batch(rd.eval[b * B : (b + 1) * B], recipe.run.seed ^ 0x5EED, b)
            logits = model(batch["input_ids"]).logits  # (B, T, V): the full head, no masking shortcut
            y = batch["labels"]
            total += float(torch.nn.functional.cross_entropy(logits[y != -100], y[y != -100], reduction="sum"))
            n += int((y != -100).sum())
    assert res["tokens"] == n
    assert res["eval_loss"] == pytest.approx(total / n, rel=1e-5)


def test_eval_by_path_length_and_on_a_checkpoint(runs, cli):
    run = runs["raptr"]
    res = json.loads(run_ok(cli, "eval", run, "--path-lengths", "2,3,4", "--paths", "3", "--json").stdout)
    by = res["by_path_length"]
    assert set(by) == {"2", "3", "4"}
    assert by["4"] == pytest.approx(res["eval_loss"])  # all layers = the full model
    assert by["2"] > res["eval_loss"]  # two of four layers is worse than all four
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    res2 = json.loads(run_ok(cli, "eval", ckpt, "--json").stdout)
    assert res2["checkpoint"] == str(ckpt) and res2["eval_loss"] == pytest.approx(res["eval_loss"])
    bad = cli("eval", run, "--path-lengths", "1")
    assert bad.exit_code == 2 and "--path-lengths 1" in bad.stderr


def test_compare_two_runs_writes_table_json_markdown_and_png(runs, cli, tmp_path):
    res = run_ok(cli, "compare", "--runs", runs["base"], "--runs", runs["raptr"], "--out", tmp_path, "--json")
    doc = json.loads(res.stdout)
    by = {r["name"]: r for r in doc["runs"]}
    assert set(by) == {"base", "raptr"}
    assert by["base"]["relative_flops"] == pytest.approx(1.0)
    assert by["raptr"]["relative_flops"] < 1.0  # fewer layers ran
    assert by["raptr"]["schedule"] == "3-4" and len(by["raptr"]["transition_jumps"]) == 1
    assert doc["equal_flops"] == pytest.approx(by["raptr"]["flops"])
    assert by["raptr"]["eval_loss_at_equal_flops"] == pytest.approx(by["raptr"]["final_eval_loss"])
    md = (tmp_path / "compare.md").read_text()
    assert "| raptr | raptr | 3-4 |" in md
    png = tmp_path / "loss_vs_flops.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    table = run_ok(cli, "compare", "--runs", runs["base"], "--runs", runs["raptr"], "--out", tmp_path / "t")
    assert "raptr" in table.stdout and "rel. FLOPs" in table.stdout


def test_compare_aggregates_the_seeds_of_a_run(runs, cli, tmp_path):
    # a stand-in for a second seed of the RaPTr run: its files with run.seed = 1 and every eval loss
    # raised by 0.1, so the expected mean and range are known exactly (the aggregation is under test)
    other = tmp_path / "raptr-seed1"
    shutil.copytree(runs["raptr"], other)
    recipe = (other / "recipe.toml").read_text()
    assert "seed = 0" in recipe
    (other / "recipe.toml").write_text(recipe.replace("seed = 0", "seed = 1", 1))
    rows = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if "eval_loss" in r:
            r["eval_loss"] += 0.1
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_ok(
        cli,
        "compare",
        "--runs",
        runs["base"],
        "--runs",
        runs["raptr"],
        "--runs",
        other,
        "--out",
        tmp_path / "cmp",
        "--json",
    )
    doc = json.loads(res.stdout)
    one = next(r for r in doc["runs"] if r["run"] == str(runs["raptr"]))
    groups = {g["name"]: g for g in doc["by_name"]}
    assert groups["base"]["seeds"] == [0] and groups["raptr"]["seeds"] == [0, 1]
    final = groups["raptr"]["final_eval_loss"]
    assert final["min"] == pytest.approx(one["final_eval_loss"])
    assert final["max"] == pytest.approx(one["final_eval_loss"] + 0.1)
    assert final["mean"] == pytest.approx(one["final_eval_loss"] + 0.05)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Mean over seeds" in md and "| raptr | raptr | 3-4 | 0, 1 |" in md
    table = run_ok(
        cli, "compare", "--runs", runs["base"], "--runs", runs["raptr"], "--runs", other, "--out", tmp_path / "cmp2"
    )
    assert "mean over seeds" in table.stdout


def _shifted_seed(src: Path, dst: Path, seed: int, shift: float) -> Path:
    """A stand-in for another seed of a run: its files with run.seed = `seed` and every eval loss
    moved by `shift`, so paired differences are known exactly."""
    shutil.copytree(src, dst)
    recipe = (dst / "recipe.toml").read_text()
    (dst / "recipe.toml").write_text(recipe.replace("seed = 0", f"seed = {seed}", 1))
    rows = [json.loads(line) for line in (dst / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if "eval_loss" in r:
            r["eval_loss"] += shift
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def test_compare_paired_against_one_run_name(runs, cli, tmp_path):
    base1 = _shifted_seed(runs["base"], tmp_path / "base-s1", 1, 0.3)
    rap1 = _shifted_seed(runs["raptr"], tmp_path / "raptr-s1", 1, 0.1)
    dirs = [runs["base"], base1, runs["raptr"], rap1]
    args = ("compare", "--runs", *dirs, "--out", tmp_path / "cmp", "--paired-against", "base")
    doc = json.loads(run_ok(cli, *args, "--json").stdout)
    final = {(r["name"], r["seed"]): r["final_eval_loss"] for r in doc["runs"]}
    (p,) = doc["paired"]
    assert p["name"] == "raptr" and p["against"] == "base" and p["seeds"] == [0, 1]
    d0 = final["raptr", 0] - final["base", 0]
    assert p["diffs"] == pytest.approx([d0, d0 - 0.2])
    assert p["mean"] == pytest.approx(d0 - 0.1) and p["std"] == pytest.approx(0.2 / 2**0.5)
    assert p["lower_in"] == (d0 < 0) + (d0 - 0.2 < 0)
    groups = {g["name"]: g for g in doc["by_name"]}
    assert groups["base"]["final_eval_loss"]["std"] == pytest.approx(0.3 / 2**0.5)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Paired difference in final eval loss against base" in md and f"0: {d0:+.4f}" in md
    assert "paired" not in json.loads(run_ok(cli, *args[:-2], "--json").stdout)
    res = cli("compare", "--runs", *dirs, "--out", tmp_path / "c2", "--paired-against", "nope")
    assert res.exit_code == 2 and "--paired-against nope" in res.output and "base, raptr" in res.output


def test_compare_runs_recipes_with_an_equal_flops_baseline(make_recipe, cli, tmp_path):
    base = make_recipe({"model": {"n_layers": 4}, "run": {"name": "b"}, "train": {"steps": 8}}, name="b.toml")
    rap = make_recipe({**RAPTR_4, "run": {"name": "r"}}, name="r.toml")
    doc = json.loads(run_ok(cli, "compare", base, rap, "--equal-flops", "--out", tmp_path, "--json").stdout)
    names = {r["name"]: r for r in doc["runs"]}
    assert set(names) == {"b", "r", "b-equiflop-r"}
    eq = names["b-equiflop-r"]
    assert eq["steps"] < 8 and abs(eq["flops"] - names["r"]["flops"]) / names["r"]["flops"] < 0.1
    # FLOPs are relative to the full baseline, whatever order the runs come in
    again = json.loads(
        run_ok(
            cli,
            "compare",
            "--runs",
            tmp_path / "b-equiflop-r",
            "--runs",
            tmp_path / "b",
            "--out",
            tmp_path / "again",
            "--json",
        ).stdout
    )
    rel = {r["name"]: r["relative_flops"] for r in again["runs"]}
    assert rel["b"] == pytest.approx(1.0) and rel["b-equiflop-r"] < 1.0


def test_ul2_raptr_trains_through_the_trainer(make_recipe, cli, tmp_path):
    recipe = make_recipe(
        {
            "model": {
                "arch": "ul2",
                "n_layers": 4,
                "hidden_size": 64,
                "num_heads": 4,
                "intermediate_size": 128,
                "dropout": 0.0,
                "attention_dropout": 0.0,
            },
            "tokenizer": {"vocab_size": 600},
            "optim": {"lr": 3e-3, "warmup_steps": 2},
            "train": {"steps": 16, "seq_len": 64, "eval_every": 8},
            "schedule": {
                "method": "raptr",
                "full_warmup_steps": 4,
                "stages": [{"fraction": 0.5, "path_length": 3}, {"fraction": 0.5, "path_length": 4}],
            },
        }
    )
    out = tmp_path / "ul2"
    run_ok(cli, "pretrain", recipe, "--out", out)
    rows = read_rows(out)
    paths = [r["path_length"] for r in train_rows(rows)]
    assert paths[:4] == [4] * 4 and set(paths[4:10]) == {3}
    evals = eval_rows(rows)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5
    assert set(evals[-1]["eval_loss_by_denoiser"]) <= {"R-3", "R-8", "S", "X-3", "X-8", "X-64-r15", "X-64-r50"}
    assert len([r for r in rows if r.get("event") == "stage_end"]) == 3
    res = json.loads(run_ok(cli, "eval", out, "--json").stdout)
    assert res["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-6) and res["eval_loss_by_denoiser"]


def test_tensorboard_tracker_logs_and_a_missing_tracker_is_refused(make_recipe, cli, tmp_path):
    pytest.importorskip("tensorboard")
    recipe = make_recipe({"log": {"console": "none", "trackers": ["tensorboard"]}})
    out = tmp_path / "tb"
    run_ok(cli, "pretrain", recipe, "--out", out)
    assert list(out.rglob("events.out.tfevents.*"))
    bad = cli("pretrain", recipe, "--out", tmp_path / "nope", "--set", 'log.trackers=["no_such_tracker"]')
    assert bad.exit_code == 2 and "log.trackers[0]" in bad.stderr
    assert not (tmp_path / "nope").exists()
