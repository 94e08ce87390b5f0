"""Training end to end on a tiny BERT (2-4 layers, width 32, generated text): loss falls, metrics rows,
run directory layout, checkpoints, exact resume, overwrite refusal, rerun from OUT/recipe.toml,
gradient accumulation, and the LR schedule as golden numbers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY, eval_rows, merged, read_rows, run_ok, to_toml, train_rows
from raptr_cli.errors import UserError
from raptr_cli.models.bert.model import BertConfig, BertForMaskedLM
from raptr_cli.recipe import OptimConfig
from raptr_cli.train import checkpoint as ckpt
from raptr_cli.train.optim import build_optimizer, lr_factor, warmup_steps_of

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TRAIN_KEYS = {"step", "stage", "path_length", "loss", "lr", "tokens", "flops", "elapsed_s", "tokens_per_s"}
TOKENS_PER_STEP = 8 * 32  # TINY: batch_size x seq_len
RAPTR_4 = {
    "model": {"n_layers": 4},
    "schedule": {"method": "raptr", "stages": [{"steps": 6, "path_length": 3}, {"steps": 2, "path_length": 4}]},
}


def losses(rows: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in train_rows(rows)]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: contents and mtime (ns), to prove a refused command touched nothing."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- one shared 40-step baseline run (read-only for the tests that use it) -----------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, torch_one_thread: None) -> Path:
    d = tmp_path_factory.mktemp("tiny-run")
    shutil.copytree(corpus_dir, d / "data")
    recipe = d / "recipe.toml"
    recipe.write_text(to_toml(merged(TINY, {"train": {"steps": 40, "eval_every": 10, "checkpoint_every": 20}})))
    from raptr_cli.cli.main import app

    res = CliRunner().invoke(app, ["pretrain", str(recipe), "--out", str(d / "out")])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return d / "out"


def test_loss_falls_on_a_tiny_model(tiny_run: Path) -> None:
    evals = eval_rows(read_rows(tiny_run))
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    first, last = evals[0]["eval_loss"], evals[-1]["eval_loss"]
    assert last < first - 0.5, (first, last)  # ~ln(vocab) at init; the templated text is easy
    train = [loss for _, loss in losses(read_rows(tiny_run))]
    assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 0.5


def test_metrics_rows_carry_the_contract_fields(tiny_run: Path) -> None:
    rows = read_rows(tiny_run)
    train = train_rows(rows)
    assert [r["step"] for r in train] == list(range(1, 41))  # log_every = 1
    for r in train:
        assert TRAIN_KEYS <= r.keys(), TRAIN_KEYS - r.keys()
        assert r["stage"] == 0 and r["path_length"] == 2  # baseline: the full 2-layer model
        assert r["tokens"] == r["step"] * TOKENS_PER_STEP
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["elapsed_s"] >= 0
        # the LR of the step that produced row `step` (0-based step - 1), on one global schedule
        assert r["lr"] == pytest.approx(3e-3 * lr_factor(r["step"] - 1, 40, 2, "linear", 0.0), rel=1e-12)
    flops = [r["flops"] for r in train]
    assert all(b > a for a, b in zip(flops, flops[1:]))
    assert [r["elapsed_s"] for r in train] == sorted(r["elapsed_s"] for r in train)
    evals = eval_rows(rows)
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 40]
    assert all(math.isfinite(r["eval_loss"]) and r["eval_full_model"] for r in evals)
    (stage_end,) = [r for r in rows if r.get("event") == "stage_end"]
    assert stage_end["stage"] == 0 and stage_end["steps"] == 40 and stage_end["eval_loss"] == evals[-1]["eval_loss"]
    (run_end,) = [r for r in rows if r.get("event") == "run_end"]
    assert run_end["step"] == 40 and run_end["tokens"] == 40 * TOKENS_PER_STEP and run_end["flops"] == flops[-1]
    assert [r["step"] for r in rows if r.get("event") == "checkpoint"] == [20, 40]


def test_run_directory_layout(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    assert {"recipe.toml", "metrics.jsonl", "tokenizer.json", "checkpoints", "final"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary directory left behind
    assert [p.name for p in ckpt.list_checkpoints(tiny_run)] == ["step-0000020", "step-0000040"]
    for c in ckpt.list_checkpoints(tiny_run):
        assert {p.name for p in c.iterdir()} >= {
            "model.safetensors",
            "config.json",
            "optimizer.pt",
            "trainer_state.json",
        }
    final = tiny_run / "final"
    assert {p.name for p in final.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}
    assert (final / "tokenizer.json").read_bytes() == (tiny_run / "tokenizer.json").read_bytes()
    state = ckpt.read_state(tiny_run / "checkpoints" / "step-0000040")["state"]
    assert state["step"] == 40 and state["tokens"] == 40 * TOKENS_PER_STEP


def test_final_model_reloads_from_its_own_files(tiny_run: Path) -> None:
    config = json.loads((tiny_run / "final" / "config.json").read_text())
    assert config.pop("arch") == "bert"
    assert (config["num_layers"], config["hidden_size"], config["num_heads"]) == (2, 32, 2)
    model = BertForMaskedLM(BertConfig(**config))  # freshly initialised: differs until loaded
    ckpt.load_weights(tiny_run / "final", model)
    saved = load_file(str(tiny_run / "checkpoints" / "step-0000040" / "model.safetensors"))
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name


# --- checkpoints (unit) ------------------------------------------------------------------------------


def _model_and_optimizer(seed: int) -> tuple[BertForMaskedLM, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=16
        )
    )
    opt = build_optimizer(model, OptimConfig())
    ids = torch.randint(5, 64, (2, 16))
    model(ids, labels=ids).loss.backward()
    opt.step()  # gives AdamW moments to save
    return model, opt


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer(0)
    path = ckpt.save_checkpoint(tmp_path, 3, model, opt.state_dict(), {"tokens": 7, "depth": 2}, "bert", keep=2)
    assert path == tmp_path / "checkpoints" / "step-0000003"
    info = ckpt.read_state(path)
    assert info["state"] == {"tokens": 7, "depth": 2, "step": 3} and info["config"]["arch"] == "bert"
    other, other_opt = _model_and_optimizer(1)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    ckpt.load_weights(path, other)
    ckpt.load_optimizer(path, other_opt)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), other.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], other_opt.state[q][key])


def test_a_failed_save_leaves_no_checkpoint_under_a_real_name(tmp_path: Path, monkeypatch) -> None:
    model, opt = _model_and_optimizer(0)
    first = ckpt.save_checkpoint(tmp_path, 1, model, opt.state_dict(), {}, "bert", keep=0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)  # dies after model.safetensors was written
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, model, opt.state_dict(), {}, "bert", keep=0)
    assert ckpt.list_checkpoints(tmp_path) == [first]  # the half-written one is invisible
    assert not (tmp_path / "checkpoints" / "step-0000002").exists()
    assert ckpt.read_state(first)["state"]["step"] == 1


def test_checkpoints_are_pruned_to_keep(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer(0)
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, model, opt.state_dict(), {}, "bert", keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000004", "step-0000006"]


def test_incomplete_or_mismatched_checkpoints_are_user_errors(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer(0)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt.state_dict(), {}, "bert", keep=0)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # a copy cut short (full disk, partial rsync)
    with pytest.raises(UserError, match="model.safetensors"):
        ckpt.read_state(path)
    (path / "optimizer.pt").unlink()
    with pytest.raises(UserError, match="has no optimizer.pt"):
        ckpt.read_state(path)
    (path / "trainer_state.json").write_text("{trunc")
    with pytest.raises(UserError, match="incomplete or corrupted"):
        ckpt.read_state(path)
    wider = BertForMaskedLM(
        BertConfig(
            vocab_size=64, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=16
        )
    )
    with pytest.raises(UserError, match="cannot load weights"):
        ckpt.load_weights(path, wider)


# --- whole runs through the CLI ----------------------------------------------------------------------


def test_resume_replays_the_run_bitwise(cli, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(merged(RAPTR_4, {"train": {"checkpoint_every": 4}}))
    out = tmp_path / "run"
    run_ok(cli, "pretrain", recipe, "--out", out)
    before = read_rows(out)
    final_before = load_file(str(out / "final" / "model.safetensors"))
    assert [r["path_length"] for r in train_rows(before)] == [3] * 6 + [4] * 2
    shutil.rmtree(out / "checkpoints" / "step-0000008")
    shutil.rmtree(out / "final")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000004"]

    res = cli("pretrain", recipe, "--out", out, "--resume", "--set", "optim.lr=0.01")
    assert res.exit_code == 2 and "optim.lr" in res.stderr  # a different recipe cannot resume
    run_ok(cli, "pretrain", recipe, "--out", out, "--resume")
    after = read_rows(out)
    assert [s for s, _ in losses(after)] == list(range(1, 9))  # no step logged twice
    assert losses(after) == losses(before)  # bitwise: same data, masks, paths, dropout, AdamW state
    assert [(r["step"], r["eval_loss"]) for r in eval_rows(after)] == [
        (r["step"], r["eval_loss"]) for r in eval_rows(before)
    ]
    final_after = load_file(str(out / "final" / "model.safetensors"))
    assert final_after.keys() == final_before.keys()
    assert all(torch.equal(final_after[k], final_before[k]) for k in final_before)


def test_refuses_to_overwrite_an_existing_run(cli, make_recipe, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = make_recipe()
    short = ("--set", "train.steps=2", "--set", "optim.warmup_steps=1")
    run_ok(cli, "pretrain", recipe, *short)
    out = tmp_path / "runs" / "tiny"  # --out defaults to runs/<run.name>
    assert (out / "final" / "model.safetensors").is_file()
    before = snapshot(out)
    res = cli("pretrain", recipe, *short)
    assert res.exit_code == 2
    assert "already holds a run" in res.stderr and "--overwrite" in res.stderr and "--resume" in res.stderr
    assert snapshot(out) == before  # nothing written, nothing deleted
    run_ok(cli, "pretrain", recipe, *short, "--overwrite")
    rows = read_rows(out)
    assert len([r for r in rows if r.get("event") == "run_end"]) == 1  # a fresh metrics.jsonl


def test_rerun_from_the_saved_recipe_reproduces_the_run(cli, make_recipe, tmp_path: Path, monkeypatch) -> None:
    first = tmp_path / "first"
    sets = ("--set", "train.steps=6", "--set", "run.seed=3", "--set", "optim.lr=2e-3")
    run_ok(cli, "pretrain", make_recipe(), "--out", first, *sets)
    saved = first / "recipe.toml"
    text = saved.read_text()
    assert "steps = 6" in text and "seed = 3" in text and "lr = 0.002" in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative data paths would break here; the saved ones are absolute
    run_ok(cli, "pretrain", saved, "--out", "second")
    second = elsewhere / "second"
    assert (second / "recipe.toml").read_text() == text
    a, b = read_rows(first), read_rows(second)
    assert len(losses(a)) == 6 and losses(a) == losses(b)
    assert [r["eval_loss"] for r in eval_rows(a)] == [r["eval_loss"] for r in eval_rows(b)]


def test_gradient_accumulation_matches_the_full_batch(cli, make_recipe, tmp_path: Path) -> None:
    # dropout off: micro-batches draw their dropout masks in a different order than one big batch
    recipe = make_recipe({"model": {"dropout": 0.0, "attention_dropout": 0.0}, "train": {"steps": 5}})
    runs = {}
    for micro in (4, 8):
        out = tmp_path / f"micro{micro}"
        run_ok(cli, "pretrain", recipe, "--out", out, "--set", f"train.micro_batch_size={micro}")
        runs[micro] = read_rows(out)
    a, b = losses(runs[4]), losses(runs[8])
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5]
    for (_, la), (_, lb) in zip(a, b):
        assert abs(la - lb) < 1e-5, (la, lb)
    for ra, rb in zip(eval_rows(runs[4]), eval_rows(runs[8])):
        assert abs(ra["eval_loss"] - rb["eval_loss"]) < 1e-5


# --- the LR schedule: golden numbers -------------------------------------------------------------


C1, C3 = (2 + math.sqrt(2)) / 4, (2 - math.sqrt(2)) / 4  # 0.5 * (1 + cos(pi/4)), 0.5 * (1 + cos(3pi/4))


@pytest.mark.parametrize(
    ("decay", "min_ratio", "expected"),
    [
        # warmup 2 of 6 steps: 1/2, 2/2; then progress (step - 2) / (6 - 2), so the floor is reached
        # at step 6, one past the last step: the last step still learns.
        ("linear", 0.0, [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", 0.0, [0.5, 1.0, 1.0, C1, 0.5, C3]),
        ("linear", 0.1, [0.5, 1.0, 1.0, 0.775, 0.55, 0.325]),
        ("cosine", 0.1, [0.5, 1.0, 1.0, 0.1 + 0.9 * C1, 0.55, 0.1 + 0.9 * C3]),
        ("constant", 0.0, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_lr_factor_golden(decay: str, min_ratio: float, expected: list[float]) -> None:
    got = [lr_factor(step, 6, 2, decay, min_ratio) for step in range(6)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_lr_factor_without_warmup_and_past_the_end() -> None:
    assert [lr_factor(s, 4, 0, "linear", 0.0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert lr_factor(10, 4, 0, "cosine", 0.2) == pytest.approx(0.2)  # clamped, never below the floor


def test_warmup_steps_of() -> None:
    assert warmup_steps_of(OptimConfig(), 600) == 36  # 6% of the run
    assert warmup_steps_of(OptimConfig(warmup_steps=5), 600) == 5
    assert warmup_steps_of(OptimConfig(warmup_steps=0), 600) == 0
