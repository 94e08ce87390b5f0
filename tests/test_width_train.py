"""Width subnetworks through the real trainer and CLI: a tiny run with head and MLP-unit stages
trains, logs the FLOPs that ran, evaluates the full model (what `raptr eval` of its final weights
gives), plans and prices its stages in `--dry-run` and `raptr flops`, and two processes train the
model one process trains."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import generate_corpus, read_rows, run_ok
from raptr_cli.flops import Dims, step_flops
from test_launch import ACCELERATE, RAPTR, ROOT, SETS

WIDTH = {
    "schedule": {
        "method": "raptr",
        "width_scale": "inverse_fraction",
        "stages": [
            {"fraction": 0.5, "path_length": 3, "heads_fraction": 0.5, "mlp_fraction": 0.5},
            {"fraction": 0.5, "mlp_fraction": 0.75},
        ],
    },
    "model": {"n_layers": 4, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
}


def test_a_width_run_trains_counts_active_flops_and_evaluates_the_full_model(cli, make_recipe, tmp_path) -> None:
    out = tmp_path / "run"
    run_ok(cli, "pretrain", make_recipe(WIDTH), "--out", out)
    rows = read_rows(out)
    train = [r for r in rows if "loss" in r and "event" not in r]
    assert len(train) == 8 and all(r["loss"] == r["loss"] for r in train)
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])  # as trained, <= 200
    d = Dims(hidden=32, ffn=64, vocab=vocab, n_layers=4, seq_len=32)
    flops = [train[0]["flops"]] + [b["flops"] - a["flops"] for a, b in zip(train, train[1:])]
    # a step's FLOPs: its blocks at the stage's widths, plus the head on however many positions were masked
    head = step_flops(d, 0, 0, 1)
    for i, f in enumerate(flops):
        blocks = step_flops(d, 3, 8 * 32, 0, 0.5, 0.5) if i < 4 else step_flops(d, 4, 8 * 32, 0, 1.0, 0.75)
        masked = (f - blocks) / head
        assert masked == pytest.approx(round(masked), abs=1e-6) and round(masked) > 0, (i, masked)
    assert [r["path_length"] for r in train] == [3] * 4 + [4] * 4
    evals = [r for r in rows if "eval_loss" in r and "event" not in r]
    res = json.loads(run_ok(cli, "eval", out, "--json").stdout)  # the full model, from final/
    assert res["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-6)


def test_dry_run_and_flops_show_width_per_stage(cli, make_recipe) -> None:
    recipe = make_recipe(WIDTH)
    plan = json.loads(run_ok(cli, "pretrain", recipe, "--dry-run", "--json").stdout)
    assert [(s["path_length"], s["heads_fraction"], s["mlp_fraction"]) for s in plan["stages"]] == [
        (3, 0.5, 0.5),
        (4, 1.0, 0.75),
    ]
    doc = json.loads(run_ok(cli, "flops", recipe, "--json").stdout)
    assert [(s["heads_fraction"], s["mlp_fraction"]) for s in doc["stages"]] == [(0.5, 0.5), (1.0, 0.75)]
    table = run_ok(cli, "flops", recipe).stdout
    assert "heads" in table and "1/2 (0.50)" in table and "48/64 (0.75)" in table


def test_bundled_width_recipes_match_ctx_raptr_flops(cli) -> None:
    total = {}
    for name in ("bert-tiny-ctx-raptr", "bert-tiny-ctx-raptr-width", "bert-tiny-ctx-raptr-depth-width"):
        total[name] = json.loads(run_ok(cli, "flops", ROOT / "recipes" / f"{name}.toml", "--json").stdout)[
            "total_flops"
        ]
    assert len({round(v) for v in total.values()}) == 1, total


def test_two_processes_train_a_width_run_like_one_process(tmp_path) -> None:
    if not Path(ACCELERATE).exists():
        pytest.skip("accelerate's launcher is not installed next to this python")
    (tmp_path / "a.txt").write_text("\n".join(generate_corpus(30, 20, seed=3)))
    env = {**os.environ, "RAPTR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    sets = [a for a in SETS if not a.startswith("schedule.stages=")][:-1] + [
        "--set",
        f'data.train=["{tmp_path / "a.txt"}"]',
        "--set",
        "train.checkpoint_every=0",
        "--set",
        "schedule.stages=[{fraction=0.5,path_length=3,heads_fraction=0.5,mlp_fraction=0.5},"
        "{fraction=0.5,mlp_fraction=0.75}]",
    ]
    recipe = str(ROOT / "recipes/bert-tiny-raptr.toml")
    run = [RAPTR, "pretrain", recipe, *sets]
    one = subprocess.run(
        [*run, "--out", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            ACCELERATE,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            *run,
            "--out",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # same heads and units on both ranks; only the gradient sum's order differs


def test_a_width_run_resumes_bitwise_across_the_stage_boundary(cli, make_recipe, tmp_path) -> None:
    """The draws are a function of (seed, step, block) and the masked moments live in the optimizer
    state, so a run cut back to step 2 and resumed replays every loss and ends in the same weights."""
    import shutil

    recipe = make_recipe({**WIDTH, "train": {"checkpoint_every": 2, "keep_checkpoints": 0}})
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_ok(cli, "pretrain", recipe, "--out", full)
    shutil.copytree(full, cut)
    for s in (4, 6, 8):
        shutil.rmtree(cut / "checkpoints" / f"step-{s:07d}")
    shutil.rmtree(cut / "final")
    run_ok(cli, "pretrain", recipe, "--out", cut, "--resume")

    def losses(out: Path) -> list:
        return [(r["step"], r["loss"]) for r in read_rows(out) if "loss" in r and "event" not in r]

    assert losses(cut) == losses(full)
    a, b = load_file(str(full / "final" / "model.safetensors")), load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_a_ul2_width_run_trains_and_exports_the_full_model(cli, make_recipe, tmp_path) -> None:
    recipe = make_recipe(
        {
            "model": {
                "arch": "ul2",
                "n_layers": 3,
                "hidden_size": 32,
                "num_heads": 4,
                "intermediate_size": 64,
                "dropout": 0.0,
                "attention_dropout": 0.0,
            },
            "tokenizer": {"vocab_size": 600},
            "train": {"steps": 6, "seq_len": 64, "eval_every": 3},
            "schedule": {
                "method": "raptr",
                "stages": [
                    {"fraction": 0.5, "path_length": 2, "heads_fraction": 0.25, "mlp_fraction": 0.5},
                    {"fraction": 0.5, "heads_fraction": 0.75},
                ],
            },
        }
    )
    out = tmp_path / "ul2"
    run_ok(cli, "pretrain", recipe, "--out", out)
    rows = read_rows(out)
    assert [r["path_length"] for r in rows if "loss" in r and "event" not in r] == [2] * 3 + [3] * 3
    run_ok(cli, "export", out, tmp_path / "hf", "--to", "hf")
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    trained = load_file(str(out / "final" / "model.safetensors"))
    assert {k: v.shape for k, v in exported.items()} == {
        k: trained[k].shape for k in exported
    }  # every head, every unit
