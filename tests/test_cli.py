"""The command line through typer's CliRunner (and twice as a real process): help, the error
boundary (exit 2, no traceback; RAPTR_DEBUG=1 shows one), --dry-run, recipe show, data path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import run_ok
from raptr_cli.errors import UserError
from raptr_cli.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("torch_one_thread")

RAPTR_4 = {
    "model": {"n_layers": 4},
    "schedule": {"method": "raptr", "stages": [{"steps": 4, "path_length": 3}, {"steps": 4, "path_length": 4}]},
}
BAD_SETS = ["--set", "train.stepz=3", "--set", "optim.lr=fast", "--set", "optim.decay=cosin"]


# --- help ------------------------------------------------------------------------------------------


def test_top_level_help_lists_commands_and_examples(cli) -> None:
    res = run_ok(cli, "--help")
    assert "Examples:" in res.stdout and "raptr pretrain recipes/" in res.stdout
    for command in ("pretrain", "recipe", "data"):
        assert command in res.stdout


def test_pretrain_help_shows_examples_and_every_flag(cli) -> None:
    res = run_ok(cli, "pretrain", "--help")
    assert "Examples:" in res.stdout and res.stdout.count("raptr pretrain recipes/") >= 3
    for flag in ("--out", "--set", "--resume", "--overwrite", "--dry-run", "--json"):
        assert flag in res.stdout
    assert "metrics.jsonl" in res.stdout  # says where the outputs land


def test_recipe_and_data_help(cli) -> None:
    assert "raptr recipe show" in run_ok(cli, "recipe", "show", "--help").stdout
    assert "raptr data fetch shakespeare" in run_ok(cli, "data", "fetch", "--help").stdout


# --- the error boundary --------------------------------------------------------------------------


def test_recipe_errors_exit_2_listing_every_problem_without_traceback(cli, make_recipe) -> None:
    res = cli("pretrain", make_recipe(), *BAD_SETS, "--dry-run")
    assert res.exit_code == 2
    assert isinstance(res.exception, SystemExit)  # typer.Exit(2), not an escaped UserError
    err = res.stderr
    assert "error: the recipe has 3 problems:" in err
    assert "train.stepz: unknown key (did you mean 'steps'?)" in err
    assert "optim.lr = 'fast': expected number" in err
    assert "(did you mean 'cosine'?)" in err
    assert "hint:" in err and "raptr recipe show" in err
    assert "Traceback" not in res.output and res.stdout == ""


def test_missing_recipe_file_exits_2_naming_it(cli, tmp_path: Path) -> None:
    res = cli("pretrain", tmp_path / "nope.toml", "--dry-run")
    assert res.exit_code == 2
    assert "recipe file not found" in res.stderr and "nope.toml" in res.stderr


def test_raptr_debug_lets_the_traceback_through(cli, make_recipe, monkeypatch) -> None:
    monkeypatch.setenv("RAPTR_DEBUG", "1")
    res = cli("pretrain", make_recipe(), *BAD_SETS, "--dry-run")
    assert isinstance(res.exception, UserError)
    assert len(res.exception.problems) == 3


def _raptr(*args: object, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAPTR_DEBUG"}
    if debug:
        env["RAPTR_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "raptr_cli.cli.main", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_real_process_exit_codes(make_recipe) -> None:
    recipe = make_recipe()
    res = _raptr("pretrain", recipe, "--set", "train.stepz=3", "--dry-run")
    assert res.returncode == 2
    assert "train.stepz: unknown key" in res.stderr and "Traceback" not in res.stderr
    res = _raptr("pretrain", recipe, "--set", "train.stepz=3", "--dry-run", debug=True)
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr and "raptr_cli.errors.UserError" in res.stderr


def test_resume_and_overwrite_contradict(cli, make_recipe, tmp_path: Path) -> None:
    res = cli("pretrain", make_recipe(), "--out", tmp_path / "run", "--resume", "--overwrite")
    assert res.exit_code == 2 and "--resume and --overwrite contradict" in res.stderr


def test_resume_without_a_run_exits_2(cli, make_recipe, tmp_path: Path) -> None:
    res = cli("pretrain", make_recipe(), "--out", tmp_path / "empty", "--resume")
    assert res.exit_code == 2
    assert "--resume" in res.stderr and "recipe.toml is missing" in res.stderr


def test_missing_data_file_exits_2_and_does_not_block_the_retry(cli, make_recipe, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = cli("pretrain", make_recipe(), "--out", out, "--set", 'data.train=["data/missing.txt"]')
    assert res.exit_code == 2
    assert "data.train" in res.stderr and "missing.txt" in res.stderr and "recipe's folder" in res.stderr
    run_ok(cli, "pretrain", make_recipe(), "--out", out, "--set", "train.steps=2", "--set", "optim.warmup_steps=1")
    assert (out / "final" / "model.safetensors").is_file()


# --- --dry-run --------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(cli, make_recipe, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = make_recipe({**RAPTR_4, "log": {"console": "plain"}})
    res = run_ok(cli, "pretrain", recipe, "--dry-run", "--out", tmp_path / "planned")
    out = res.stdout
    assert "tiny: raptr on bert 4x32 (dry run)" in out
    assert "path_length" in out and "0-4" in out and "4-8" in out
    assert "params" in out and "FLOPs" in out and "baseline" in out and "memory" in out
    assert not (tmp_path / "planned").exists() and not (tmp_path / "runs").exists()


LAUNCH_ENV = (
    "RANK",
    "WORLD_SIZE",
    "ACCELERATE_USE_FSDP",
    "FSDP_SHARDING_STRATEGY",
    "FSDP_RESHARD_AFTER_FORWARD",
    "FSDP_OFFLOAD_PARAMS",
    "FSDP_ACTIVATION_CHECKPOINTING",
)


def test_dry_run_memory_is_per_process_under_a_launch(cli, monkeypatch) -> None:
    """Under `accelerate launch` the memory figure is one process's: its share of the batch, and with
    FSDP its share of the weights and AdamW state plus the units it gathers to compute."""
    from raptr_cli.models import resolve_model_config
    from raptr_cli.planning import param_count, recipe_vocab_size
    from raptr_cli.recipe import load_recipe as load

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "bert-base-raptr.toml"

    def launch(**env: str) -> None:
        for k in LAUNCH_ENV:
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)

    def memory(*sets: str, **env: str) -> dict:
        launch(**env)
        args = ["pretrain", recipe, "--dry-run", "--json", *[a for kv in sets for a in ("--set", kv)]]
        return json.loads(run_ok(cli, *args).stdout)["memory"]

    fp32, whole = "train.precision=fp32", "train.micro_batch_size=0"  # the recipe's micro-batch is 32
    one = memory(fp32, whole)
    dp = memory(fp32, whole, RANK="0", WORLD_SIZE="8")
    fsdp = memory(fp32, whole, RANK="0", WORLD_SIZE="8", ACCELERATE_USE_FSDP="true")
    assert (one["processes"], dp["processes"], fsdp["processes"]) == (1, 8, 8)
    assert memory(fp32, whole, WORLD_SIZE="8")["processes"] == 1  # WORLD_SIZE alone is not a launch
    assert memory()["precision"] == "fp32"  # "auto" on a machine without CUDA
    assert (one["micro_batch"], dp["micro_batch"]) == (256, 32)
    assert dp["activations_gib"] == pytest.approx(one["activations_gib"] / 8)  # 256 / 8 sequences each
    assert fsdp["activations_gib"] == dp["activations_gib"] and not dp["sharded"] and fsdp["sharded"]
    gib = 2**30
    params = one["weights_optimizer_gib"] * gib / 16
    # replicated: all the state everywhere; the all-reduce's flat buffer comes after activations are freed
    assert dp["weights_optimizer_gib"] == one["weights_optimizer_gib"]
    assert dp["total_gib"] == pytest.approx(dp["weights_optimizer_gib"] + max(dp["activations_gib"], 4 * params / gib))
    r = load(recipe)
    per_layer = param_count(resolve_model_config(r, vocab_size=recipe_vocab_size(r)))["per_layer"]
    root = params - 12 * per_layer
    # sharded: 1/8 of 16 B/param, the root unit gathered with its full gradient, two blocks gathered with theirs
    expect = (16 * params / 8 + 8 * root + 8 * 2 * per_layer) / gib
    assert fsdp["weights_optimizer_gib"] == pytest.approx(expect)
    # parameters kept gathered between forward and backward: every block, however the config says it
    for kept_env in (
        {"FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"},
        {"FSDP_RESHARD_AFTER_FORWARD": "false"},
        {"FSDP_RESHARD_AFTER_FORWARD": "shard_grad_op"},
    ):  # the last: an FSDP1-style config
        kept = memory(fp32, whole, RANK="0", WORLD_SIZE="8", ACCELERATE_USE_FSDP="true", **kept_env)
        assert kept["weights_optimizer_gib"] == pytest.approx(expect + 4 * 10 * per_layer / gib), kept_env
    assert memory(
        fp32, whole, RANK="0", WORLD_SIZE="8", ACCELERATE_USE_FSDP="true", FSDP_RESHARD_AFTER_FORWARD="full_shard"
    )["weights_optimizer_gib"] == pytest.approx(expect)
    # a micro-batch above this rank's share is capped by it, as the trainer chunks
    assert memory(RANK="0", WORLD_SIZE="16")["micro_batch"] == 16
    # the other ranks of a launch print nothing: one plan, one JSON document
    launch(RANK="3", WORLD_SIZE="8")
    assert run_ok(cli, "pretrain", recipe, "--dry-run", "--json").stdout == ""
    # unsupported FSDP options are refused as training would refuse them, an FSDP1-style NO_SHARD too
    for bad, says in (
        ({"FSDP_OFFLOAD_PARAMS": "true"}, "parameter offloading"),
        ({"FSDP_RESHARD_AFTER_FORWARD": "no_shard"}, "NO_SHARD"),
    ):
        launch(RANK="0", WORLD_SIZE="8", ACCELERATE_USE_FSDP="true", **bad)
        res = cli("pretrain", recipe, "--dry-run")
        assert res.exit_code == 2 and says in res.output, res.output


def test_dry_run_json_is_one_valid_document(cli, make_recipe) -> None:
    res = run_ok(cli, "pretrain", make_recipe(RAPTR_4), "--dry-run", "--json", "--set", "train.steps=8")
    plan = json.loads(res.stdout)  # nothing but the JSON on stdout
    assert plan["method"] == "raptr" and plan["steps"] == 8 and plan["tokens"] == 8 * 8 * 32
    assert plan["model"] == {
        "n_layers": 4,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "vocab_size": 200,
        "norm": "post",
    }
    assert [(s["index"], s["start"], s["end"], s["path_length"]) for s in plan["stages"]] == [
        (0, 0, 4, 3),
        (1, 4, 8, 4),
    ]
    assert plan["fixed_layers"] == [0, 3]
    # stage 0 runs 3 of 4 layers, so it costs less than stage 1; the whole run less than the baseline
    f0, f1 = (s["flops"] for s in plan["stages"])
    assert 0 < f0 < f1
    assert plan["total_flops"] == pytest.approx(f0 + f1)
    assert plan["total_flops"] < plan["baseline_flops"] and plan["ratio"] == pytest.approx(
        plan["total_flops"] / plan["baseline_flops"]
    )
    assert sum(s["share"] for s in plan["stages"]) == pytest.approx(1.0)


def test_dry_run_params_match_the_model(cli, make_recipe) -> None:
    import torch

    from raptr_cli.models import build_model, resolve_model_config
    from raptr_cli.models.bert.model import num_parameters

    recipe = make_recipe()
    plan = json.loads(run_ok(cli, "pretrain", recipe, "--dry-run", "--json").stdout)
    with torch.device("meta"):
        model = build_model(resolve_model_config(load_recipe(recipe), vocab_size=200))
    assert plan["params"] == num_parameters(model)


def test_dry_run_prints_the_plan_even_when_training_is_quiet(cli, make_recipe) -> None:
    res = run_ok(cli, "pretrain", make_recipe(), "--dry-run")  # TINY has log.console = "none"
    assert "dry run" in res.stdout


# --- recipe show, data path ------------------------------------------------------------------------


def test_recipe_show_prints_the_resolved_recipe(cli, make_recipe) -> None:
    recipe = make_recipe()
    res = run_ok(cli, "recipe", "show", recipe, "--set", "train.steps=5", "-s", "optim.lr=1e-4")
    shown = tomllib.loads(res.stdout)
    assert shown["train"]["steps"] == 5 and shown["optim"]["lr"] == 1e-4
    assert shown["optim"]["weight_decay"] == 0.01  # defaults are filled in
    assert shown["data"]["train"] == ["data/train.txt"]
    again = load_recipe(recipe, ["train.steps=5", "optim.lr=1e-4"])
    assert shown["schedule"]["method"] == again.schedule.method == "baseline"
    res = cli("recipe", "show", recipe, "--set", "train.steps=-1")
    assert res.exit_code == 2 and "train.steps = -1: must be > 0" in res.stderr


def test_data_path_uses_raptr_cache(cli, raptr_cache: Path) -> None:
    assert run_ok(cli, "data", "path", "shakespeare").stdout.strip() == str(raptr_cache / "shakespeare")


def test_data_fetch_of_an_unknown_corpus_exits_2(cli) -> None:
    res = cli("data", "fetch", "nosuch")  # rejected before any download
    assert res.exit_code == 2 and "Unknown built-in corpus 'nosuch'" in res.stderr


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_plans(cli, path: Path) -> None:
    plan = json.loads(run_ok(cli, "pretrain", path, "--dry-run", "--json").stdout)
    assert plan["params"] > 0 and plan["stages"] and plan["total_flops"] > 0
    assert plan["total_flops"] <= plan["baseline_flops"] * (1 + 1e-9)  # no method costs more than baseline
