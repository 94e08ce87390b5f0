"""Progressive training in the real trainer (method.md): only the planned blocks execute, skipped
blocks get no optimizer update, stacking copies the top layers, resume across a stage boundary
replays the run bitwise, data-parallel ranks agree, and metrics.jsonl carries the stage story.

Every run goes through `raptr pretrain` (typer's CliRunner) or the Trainer exactly as the CLI builds
it, on a 6-layer, 32-wide BERT and a generated corpus; observation happens by wrapping the
trainer's own seams (forward_backward, build_optimizer, grow_by_stacking), never by changing it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import raptr_cli.train.loop as loop
import raptr_cli.train.rundir as rundir
from raptr_cli.cli.main import app
from raptr_cli.flops import layer_flops_per_token
from raptr_cli.models import resolve_model_config
from raptr_cli.planning import model_dims
from raptr_cli.recipe import load_recipe
from raptr_cli.schedule import build_plan, growth_sources

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
L, STEPS, TOKENS_PER_STEP = 6, 8, 8 * 32
RAPTR_STAGES = "schedule.stages=[{fraction=0.5,path_length=4},{fraction=0.5,path_length=6}]"
STACK_STAGES = "schedule.stages=[{fraction=0.5,depth=3},{fraction=0.5,depth=6}]"
TINY = [
    "model.n_layers=6",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "train.seq_len=32",
    "train.batch_size=8",
    "tokenizer.vocab_size=200",
    "log.console=none",
    f"train.steps={STEPS}",
    "train.log_every=1",
    "train.eval_every=0",
    "data.eval_fraction=0.1",
]
# Row keys that must replay exactly on resume (wall-clock ones, like elapsed_s, tokens_per_s,
# data_share or peak_rss_mb, differ between any two runs and are left out), plus every eval_* key.
REPLAYED = {
    "event",
    "step",
    "stage",
    "path_length",
    "depth",
    "loss",
    "lr",
    "tokens",
    "flops",
    "grad_norm",
    "path",
    "from_stage",
    "to_stage",
    "loss_before",
    "loss_after",
    "method",
    "keep_prob",
    "steps",
    "loss_start",
    "loss_end",
    "loss_before_transition",
    "loss_after_transition",
}


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A generated corpus (~1,000 short lines) and one RAPTR_CACHE for the module, so the WordPiece
    tokenizer and packed blocks are built once and later runs (and forked ranks) only read them.
    One intra-op thread: width-32 models gain nothing from more, and on a busy 2-core machine
    OpenMP's spinning workers made this file ~5x slower (measured: 2 min vs 23 s wall)."""
    root = tmp_path_factory.mktemp("progressive")
    rng = random.Random(0)
    words = (
        "the king queen lord lady speaks walks sleeps castle river night day sword crown love war "
        "peace and of to in with my thy good ill fair dark old young heart mind soul hand eye"
    ).split()
    (root / "data").mkdir()
    for f in range(2):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + "." for _ in range(500)]
        (root / "data" / f"part{f}.txt").write_text("\n\n".join(lines))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAPTR_CACHE", str(root / "cache"))
        yield root / "data"
    torch.set_num_threads(threads)


@pytest.fixture
def pretrain(corpus: Path) -> Callable[..., list[dict]]:
    """pretrain(method, out, *sets, resume=False) -> metrics.jsonl rows; fails with the CLI output."""

    def run(method: str, out: Path, *sets: str, resume: bool = False) -> list[dict]:
        overrides = [*TINY, f'data.train=["{corpus}/*.txt"]', *sets]
        args = ["pretrain", str(RECIPES / f"bert-tiny-{method}.toml"), "--out", str(out)]
        args += [a for s in overrides for a in ("--set", s)] + (["--resume"] if resume else [])
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, f"exit {res.exit_code}\n{res.output}\n{res.exception!r}"
        return read_rows(out)

    return run


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "loss" in r and "event" not in r]


def events(rows: list[dict], name: str) -> list[dict]:
    return [r for r in rows if r.get("event") == name]


def replayed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k in REPLAYED or k.startswith("eval_")} for r in rows]


def recording(inner: Callable, asked: list, ran: list) -> Callable:
    """Wrap forward_backward: per training step, append the `layers` the trainer asked for and the
    blocks that really executed (forward hooks, in call order). Eval passes do not go through
    forward_backward, so they are never counted."""
    sig = inspect.signature(inner)

    def wrapped(model, *args, **kwargs):
        now: list[int] = []
        hooks = [b.register_forward_hook(lambda *_, i=i: now.append(i)) for i, b in enumerate(model.blocks)]
        try:
            return inner(model, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
            asked.append(sig.bind(model, *args, **kwargs).arguments["layers"])
            ran.append(now)

    return wrapped


def record_steps(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Record every training step of the next run: .asked (layers arg) and .ran (executed blocks)."""
    rec = SimpleNamespace(asked=[], ran=[])
    monkeypatch.setattr(loop, "forward_backward", recording(loop.forward_backward, rec.asked, rec.ran))
    return rec


def same(a, b) -> bool:
    """Bitwise equality of nested tensors, dicts, lists/tuples and None."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# --- 1. only the planned blocks execute ----------------------------------------------------------


def test_executed_blocks_match_planned_path(pretrain, tmp_path, monkeypatch):
    rec = record_steps(monkeypatch)
    rows = train_rows(pretrain("raptr", tmp_path / "run", RAPTR_STAGES))
    r = load_recipe(tmp_path / "run" / "recipe.toml")
    plan = build_plan(r.schedule, L, STEPS, r.tokens_per_step, r.run.seed)

    assert len(rec.ran) == STEPS and [row["step"] for row in rows] == list(range(1, STEPS + 1))
    for t, (ran, asked, row) in enumerate(zip(rec.ran, rec.asked, rows)):
        assert ran == plan.active_layers(t), f"step {t}: executed {ran}"  # ascending, each once
        assert len(ran) == row["path_length"] == (4 if t < 4 else 6)
        assert 0 in ran and L - 1 in ran  # the fixed layers run at every step
        assert ran == (list(range(L)) if asked is None else sorted(asked))  # None = run every block
    # the random paths really vary over stage 0 (a constant path would be a broken sampler)
    assert len({tuple(x) for x in rec.ran[:4]}) > 1


# --- 2. skipped blocks get no optimizer update ---------------------------------------------------


def _watch_optimizer(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Wrap loop.build_optimizer: per AdamW step, the LR, which blocks hold a gradient, and each
    block's [(parameter, AdamW state or None)] just before and just after the step."""
    log: list[dict] = []
    inner = loop.build_optimizer

    def build(model, cfg):
        opt = inner(model, cfg)

        def snapshot() -> list[list[tuple]]:
            return [
                [
                    (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else None)
                    for p in b.parameters()
                ]
                for b in model.blocks
            ]

        def pre(o, *_):
            log.append(
                {
                    "lr": o.param_groups[0]["lr"],
                    "before": snapshot(),
                    "grad": [any(p.grad is not None for p in b.parameters()) for b in model.blocks],
                }
            )

        opt.register_step_pre_hook(pre)
        opt.register_step_post_hook(lambda *_: log[-1].update(after=snapshot()))
        return opt

    monkeypatch.setattr(loop, "build_optimizer", build)
    return log


def test_skipped_blocks_get_no_optimizer_update(pretrain, tmp_path, monkeypatch):
    """Default skipped_grad = "none": a skipped block has grad None, so AdamW leaves its weights and
    its state bitwise alone (no moment update, no weight decay, no step count)."""
    rec = record_steps(monkeypatch)
    log = _watch_optimizer(monkeypatch)
    pretrain("raptr", tmp_path / "run", RAPTR_STAGES, "optim.weight_decay=0.01")
    seen: set[int] = set()
    cases = set()
    for t in range(4):  # stage 0: path length 4 of 6
        step, ran = log[t], set(rec.ran[t])
        assert step["lr"] > 0
        for i in range(L):
            before, after = step["before"][i], step["after"][i]
            if i in ran:
                assert step["grad"][i] and not same(before, after)
                assert all(s is not None for _, s in after)
                continue
            assert not step["grad"][i], f"step {t}: skipped block {i} has a gradient"
            assert same(before, after), f"step {t}: skipped block {i} moved or its AdamW state changed"
            # never active yet: no AdamW state at all; active before: state kept, frozen
            assert all((s is not None) == (i in seen) for _, s in after)
            cases.add(i in seen)
        seen |= ran
    assert cases == {True, False}  # both cases really occurred on this seed


def test_skipped_grad_zero_touches_skipped_blocks(pretrain, tmp_path, monkeypatch):
    """schedule.skipped_grad = "zero" (the documented alternative): skipped blocks get zero grads, so
    AdamW creates/advances their state, decays their moments and applies weight decay. At step 0
    the moments are zero, so a skipped block's matrices shrink by exactly (1 - lr * wd) and its
    vectors (no decay) stay put; later, momentum from earlier active steps moves them too."""
    rec = record_steps(monkeypatch)
    log = _watch_optimizer(monkeypatch)
    pretrain("raptr", tmp_path / "run", RAPTR_STAGES, 'schedule.skipped_grad="zero"', "optim.weight_decay=0.01")
    for t in range(4):
        step = log[t]
        for i in set(range(L)) - set(rec.ran[t]):
            before, after = step["before"][i], step["after"][i]
            assert step["grad"][i] and all(s is not None and int(s["step"]) == t + 1 for _, s in after)
            if t > 0:
                assert not same([p for p, _ in before], [p for p, _ in after])
                continue
            for (p0, _), (p1, _) in zip(before, after):
                if p0.ndim >= 2:  # the weight-decayed group
                    torch.testing.assert_close(p1, p0 * (1 - step["lr"] * 0.01), rtol=1e-6, atol=0)
                else:
                    assert torch.equal(p1, p0)


# --- 3. stacking ---------------------------------------------------------------------------------


def test_stacking_growth_copies_top_layers(pretrain, tmp_path, monkeypatch):
    grown: list[dict] = []
    inner = loop.grow_by_stacking

    def spy(model, new_depth):
        old = len(model.blocks)
        pairs = inner(model, new_depth)
        grown.append(
            {
                "old": old,
                "new": new_depth,
                "pairs": pairs,
                "blocks": [copy.deepcopy(b.state_dict()) for b in model.blocks],
                "storage": [[p.data_ptr() for p in b.parameters()] for b in model.blocks],
            }
        )
        return pairs

    monkeypatch.setattr(loop, "grow_by_stacking", spy)
    rec = record_steps(monkeypatch)
    out = tmp_path / "run"
    rows = pretrain("stacking", out, STACK_STAGES)

    assert len(grown) == 1
    g = grown[0]
    assert (g["old"], g["new"]) == (3, 6)
    assert [src for _, src in g["pairs"]] == growth_sources(3, 6) == [0, 1, 2]
    for new_i, src_i in g["pairs"]:
        assert same(g["blocks"][new_i], g["blocks"][src_i]), f"block {new_i} is not a copy of {src_i}"
        assert not set(g["storage"][new_i]) & set(g["storage"][src_i])  # a copy, not shared storage
    # depth 3 for steps 0-3, then the grown 6-layer model runs in full
    assert [len(r) for r in rec.ran] == [3] * 4 + [6] * 4
    tr = train_rows(rows)
    assert [r["depth"] for r in tr] == [3] * 4 + [6] * 4 and [r["path_length"] for r in tr] == [3] * 4 + [6] * 4
    # final model has every block; eval before the last stage is at the current depth, flagged so
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["num_layers"] == L
    assert len({k.split(".")[3] for k in load_file(out / "final" / "model.safetensors") if ".layer." in k}) == L
    evals = [r for r in rows if "eval_loss" in r and "event" not in r]
    assert [(r["step"], r["eval_depth"], r["eval_full_model"]) for r in evals] == [
        (0, 3, False),
        (4, 3, False),
        (8, 6, True),
    ]
    assert [e["eval_full_model"] for e in events(rows, "stage_end")] == [False, True]


# --- 4. exact resume across a stage boundary -----------------------------------------------------


def _full_then_resumed(pretrain, tmp_path: Path, method: str, stages: str, resume_at: int):
    """A full 8-step run checkpointing every 2 steps, and a copy of it cut back to the checkpoint of
    step `resume_at` (later checkpoints and final/ deleted) then continued with --resume."""
    sets = [stages, "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    rows_full = pretrain(method, full, *sets)
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [f"step-{s:07d}" for s in (2, 4, 6, 8)]
    shutil.copytree(full, cut)
    for s in range(resume_at + 2, STEPS + 1, 2):
        shutil.rmtree(cut / "checkpoints" / f"step-{s:07d}")
    shutil.rmtree(cut / "final")
    rows_cut = pretrain(method, cut, *sets, resume=True)
    # every training loss replays bitwise (floats compared exactly)
    assert [(r["step"], r["loss"]) for r in train_rows(rows_cut)] == [
        (r["step"], r["loss"]) for r in train_rows(rows_full)
    ]
    return rows_full, rows_cut, full, cut


@pytest.mark.parametrize("method,stages", [("raptr", RAPTR_STAGES), ("stacking", STACK_STAGES)])
def test_resume_across_stage_boundary_replays_bitwise(pretrain, tmp_path, method, stages):
    rows_full, rows_cut, full, cut = _full_then_resumed(pretrain, tmp_path, method, stages, resume_at=2)
    assert replayed(rows_cut) == replayed(rows_full)  # same rows, events, evals; no duplicates
    # tensor-wise (the files' bytes may differ: safetensors writes its tied-weight metadata in set order)
    assert same(load_file(cut / "final" / "model.safetensors"), load_file(full / "final" / "model.safetensors"))


def test_resume_at_the_boundary_checkpoint_logs_each_event_once(pretrain, tmp_path):
    rows_full, rows_cut, *_ = _full_then_resumed(pretrain, tmp_path, "raptr", RAPTR_STAGES, resume_at=4)
    assert len(events(rows_cut, "transition")) == 1
    assert replayed(rows_cut) == replayed(rows_full)


# --- 5. data parallel: 2 CPU processes -----------------------------------------------------------


def _dp_rank(recipe, out: Path, record: Path) -> None:
    """One rank, built as `raptr pretrain` builds it; saves the paths its plan drew, the blocks that
    really ran at each step, and its final parameters."""
    from accelerate import Accelerator

    torch.set_num_threads(1)  # 2 ranks x 1 thread on 2 cores
    acc = Accelerator(cpu=True)
    if acc.is_main_process:
        rundir.prepare_out_dir(out, False, False)
        rundir.write_recipe(recipe, out)
    acc.wait_for_everyone()
    trainer = loop.Trainer(recipe, out, acc, console=None)
    planned, ran, draw = [], [], trainer.plan.active_layers
    trainer.plan.active_layers = lambda step: planned.append(draw(step)) or planned[-1]
    loop.forward_backward = recording(loop.forward_backward, [], ran)  # a forked child's own globals
    trainer.run()
    torch.save(
        {"world": acc.num_processes, "planned": planned, "ran": ran, "state": trainer.model.state_dict()},
        record / f"rank{acc.process_index}.pt",
    )


def _dp_launch(recipe_path: str, out: str, record: str) -> None:
    """Runs in a fresh interpreter: debug_launcher forks its ranks, and a fork taken after the parent
    ran any OpenMP (MKL/ATen) kernel deadlocks in the child's first parallel region (libgomp is not
    fork-safe), so launched from the pytest process, which trained models already, the ranks hang."""
    from accelerate import debug_launcher
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    try:
        debug_launcher(functools.partial(_dp_rank, load_recipe(recipe_path), Path(out), Path(record)), num_processes=2)
    finally:
        AcceleratorState._reset_state(True)


def test_two_process_data_parallel_matches_one_process(pretrain, tmp_path):
    """2 ranks (accelerate.debug_launcher: forked CPU processes, gloo) draw the same paths, run only
    them, end bitwise identical, and match a 1-process run of the same global batch up to float
    summation order. Dropout is off: its seed is per rank, so with dropout the runs differ by design.
    The 1-process run goes first and fills the tokenizer/blocks cache, so the ranks only read it."""
    ref_rows = train_rows(
        pretrain("raptr", tmp_path / "one", RAPTR_STAGES, "model.dropout=0.0", "model.attention_dropout=0.0")
    )
    recipe_path, record = tmp_path / "one" / "recipe.toml", tmp_path / "ranks"
    record.mkdir()
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_progressive as t; t._dp_launch(*sys.argv[2:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(recipe_path), str(tmp_path / "two"), str(record)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0, r1 = (torch.load(record / f"rank{i}.pt") for i in (0, 1))
    recipe = load_recipe(recipe_path)
    plan = build_plan(recipe.schedule, L, STEPS, recipe.tokens_per_step, recipe.run.seed)
    assert r0["world"] == r1["world"] == 2
    assert r0["planned"] == r1["planned"] == r0["ran"] == r1["ran"] == [plan.active_layers(t) for t in range(STEPS)]
    assert same(r0["state"], r1["state"])  # bitwise: both ranks applied the same all-reduced grads
    ref = load_file(tmp_path / "one" / "final" / "model.safetensors")
    diff = max(float((r0["state"][k] - ref[k]).abs().max()) for k in ref)
    print(f"max |2-process - 1-process| parameter difference: {diff:.3g}")  # 6e-08 when written
    assert diff < 1e-5
    for a, b in zip(train_rows(read_rows(tmp_path / "two")), ref_rows, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert (a["path_length"], a["flops"], a["tokens"]) == (b["path_length"], b["flops"], b["tokens"])


# --- 6. stage events and FLOPs in metrics.jsonl --------------------------------------------------


def test_stage_events_and_flops_against_baseline(pretrain, tmp_path):
    rows = pretrain("raptr", tmp_path / "raptr", RAPTR_STAGES)
    base = pretrain("baseline", tmp_path / "base")
    tr, tr_base = train_rows(rows), train_rows(base)
    evals = {r["step"]: r for r in rows if "eval_loss" in r and "event" not in r}
    ends = events(rows, "stage_end")
    assert [e["stage"] for e in ends] == [0, 1]
    for e in ends:
        assert {"stage", "steps", "tokens", "flops", "loss_start", "loss_end", "eval_loss"} <= e.keys()
        stage_rows = [r for r in tr if r["stage"] == e["stage"]]
        assert e["steps"] == len(stage_rows) == 4 and e["tokens"] == 4 * TOKENS_PER_STEP
        assert (e["loss_start"], e["loss_end"]) == (stage_rows[0]["loss"], stage_rows[-1]["loss"])
        assert e["flops"] == stage_rows[-1]["flops"]
        assert e["eval_loss"] == evals[e["step"]]["eval_loss"] and evals[e["step"]]["eval_full_model"]
    (tr_ev,) = events(rows, "transition")
    assert (tr_ev["from_stage"], tr_ev["to_stage"]) == (0, 1)
    assert (tr_ev["loss_before"], tr_ev["loss_after"]) == (tr[3]["loss"], tr[4]["loss"])
    assert events(base, "transition") == [] and len(events(base, "stage_end")) == 1
    for run in (tr, tr_base):
        assert run[0]["flops"] > 0 and all(b["flops"] > a["flops"] for a, b in zip(run, run[1:]))

    # Same data and masks in both runs, so the head FLOPs cancel: the saving is exactly the skipped
    # blocks, 3 (fwd+bwd) * layer FLOPs/token * tokens/step * sum over steps of (L - path length).
    r = load_recipe(tmp_path / "raptr" / "recipe.toml")
    layer = layer_flops_per_token(model_dims(resolve_model_config(r, vocab_size=200), r.train.seq_len))
    skipped = sum(L - row["path_length"] for row in tr)
    assert skipped == 4 * 2
    assert tr_base[-1]["flops"] - tr[-1]["flops"] == pytest.approx(3 * layer * TOKENS_PER_STEP * skipped, rel=1e-12)
    # and the ratio is the analytic one `raptr flops --json` predicts (it assumes 15% masked tokens)
    res = CliRunner().invoke(
        app,
        [
            "flops",
            str(RECIPES / "bert-tiny-raptr.toml"),
            "--json",
            *[a for s in [*TINY, RAPTR_STAGES] for a in ("--set", s)],
        ],
    )
    assert res.exit_code == 0, res.output
    analytic = json.loads(res.stdout)["ratio"]
    print(f"raptr/baseline flops: measured {tr[-1]['flops'] / tr_base[-1]['flops']:.4f}, analytic {analytic:.4f}")
    assert tr[-1]["flops"] / tr_base[-1]["flops"] == pytest.approx(analytic, rel=0.02)
    assert analytic < 0.9  # 4-6 on 6 layers really saves compute (layers alone: 40/48)
