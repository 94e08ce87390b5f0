"""Reliability under real failures: `kill -9` at a random moment then `--resume` (baseline, RaPTr across
a stage boundary, stacking across a growth), a kill in each phase of a checkpoint save, SIGINT/SIGTERM,
keep_checkpoints, corrupted checkpoints, and the NaN policies.

Runs that must die are real processes (one torch thread); references and resumes run in-process through
CliRunner (also one thread), which gives bitwise the same numbers on CPU. Training runs are a 6-layer,
32-wide BERT on conftest's generated corpus for 40 steps: about 2 s of compute each.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import eval_rows, logged_steps, read_rows, run_ok, train_rows, wait_until
from raptr_cli.data import packing
from raptr_cli.errors import UserError
from raptr_cli.train import checkpoint as ckpt
from raptr_cli.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("torch_one_thread")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STEPS, EVERY = 40, 5  # stage boundary / stacking growth at step 20
METHODS = {
    "baseline": ("bert-tiny-baseline.toml", None),
    "raptr": ("bert-tiny-raptr.toml", "[{fraction=0.5,path_length=4},{fraction=0.5,path_length=6}]"),
    "stacking": ("bert-tiny-stacking.toml", "[{fraction=0.5,depth=3},{fraction=0.5,depth=6}]"),
}


def pretrain_args(method: str, data: Path, out: Path, **extra: object) -> list[str]:
    """`pretrain RECIPE --out OUT --set ...` for the tiny 6-layer setting of one method."""
    kv: dict[str, object] = {
        "model.n_layers": 6,
        "model.hidden_size": 32,
        "model.num_heads": 2,
        "model.intermediate_size": 64,
        "train.seq_len": 32,
        "train.batch_size": 8,
        "tokenizer.vocab_size": 200,
        "log.console": "none",
        "train.log_every": 1,
        "train.steps": STEPS,
        "train.checkpoint_every": EVERY,
        "train.eval_every": 10,
        "train.eval_batches": 2,
        "data.train": f'["{data}/train.txt"]',
        "data.eval": f'["{data}/eval.txt"]',
    }
    recipe, stages = METHODS[method]
    kv.update({"schedule.stages": stages} if stages else {}, **extra)
    sets = [a for k, v in kv.items() for a in ("--set", f"{k}={v}")]
    return ["pretrain", str(RECIPES / recipe), "--out", str(out), *sets]


def losses(rows: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in train_rows(rows)]


def events(rows: list[dict], name: str) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("wall_s", "tokens_per_s", "tflops_per_s", "data_share")}
        for r in rows
        if r.get("event") == name
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, torch_one_thread: None):
    """method -> the run directory of an uninterrupted 40-step run (trained once, in-process)."""
    from typer.testing import CliRunner

    from raptr_cli.cli.main import app

    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            out = tmp_path_factory.mktemp(f"ref-{method}") / "run"
            res = CliRunner().invoke(app, pretrain_args(method, corpus_dir, out))
            assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
            done[method] = out
        return done[method]

    return get


# --- real processes --------------------------------------------------------------------------------

# Runs raptr with one phase of checkpoint saving stalled (RAPTR_TEST_STALL=phase:step), after writing
# a marker file, so the test can SIGKILL the process at exactly that point. Only the ordinary library
# functions the save calls are wrapped; the code under test is untouched.
STALL_WRAPPER = r"""
import io, os, shutil, sys, time
from pathlib import Path
import torch
phase, step = os.environ["RAPTR_TEST_STALL"].split(":")
tag = f"step-{int(step):07d}"

def stall():
    Path(os.environ["RAPTR_TEST_MARKER"]).write_text(phase)
    time.sleep(600)

if phase == "write":  # optimizer.pt half written inside the temporary directory
    real_save = torch.save
    def save(obj, f, *a, **k):
        if f".tmp-{tag}" in str(f):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            stall()
        return real_save(obj, f, *a, **k)
    torch.save = save
elif phase == "rename":  # the temporary directory is complete but not renamed yet
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if Path(src).name.startswith(f".tmp-{tag}"):
            stall()
        return real_replace(src, dst, *a, **k)
    os.replace = replace
elif phase == "prune":  # the new checkpoint is in place; deleting an old one has removed one file
    real_rmtree = shutil.rmtree
    def rmtree(path, *a, **k):
        p = Path(path)
        # an old checkpoint is renamed to .tmp-delete-step-N before it is deleted; stall mid-delete
        if p.name.lstrip(".").removeprefix("tmp-delete-").startswith("step-") and p.name != tag \
                and (p.parent / tag).is_dir():
            (p / "model.safetensors").unlink()
            stall()
        return real_rmtree(path, *a, **k)
    shutil.rmtree = rmtree
sys.argv[0] = "raptr"
from raptr_cli.cli.main import main
main()
"""


def spawn(args: list[str], tmp: Path, stall: str | None = None) -> subprocess.Popen:
    """Start raptr as a real process; output goes to files (a full pipe would block the child)."""
    env = {k: v for k, v in os.environ.items() if k != "RAPTR_DEBUG"}  # RAPTR_CACHE is inherited
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "raptr_cli.cli.main"]
    if stall:
        (tmp / "stall.py").write_text(STALL_WRAPPER)
        env.update(RAPTR_TEST_STALL=stall, RAPTR_TEST_MARKER=str(tmp / "stalled"))
        cmd = [sys.executable, str(tmp / "stall.py")]
    return subprocess.Popen(
        [*cmd, *args], env=env, stdout=open(tmp / "stdout.txt", "w"), stderr=open(tmp / "stderr.txt", "w")
    )


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # it really was killed, not finished


def resume_recording_data(cli, args: list[str], monkeypatch) -> list[int]:
    """Resume in-process; returns the steps whose batches were drawn (to prove no replay of data)."""
    drawn: list[int] = []
    real = packing.batch_indices
    monkeypatch.setattr(packing, "batch_indices", lambda step, *a, **k: (drawn.append(step), real(step, *a, **k))[1])
    run_ok(cli, *args, "--resume")
    return drawn


def assert_same_run(out: Path, ref: Path) -> None:
    """Bitwise the run that was never interrupted: losses, paths, evals, stage events, final weights."""
    got, want = read_rows(out), read_rows(ref)
    assert [s for s, _ in losses(got)] == list(range(1, STEPS + 1))  # each step logged exactly once
    assert losses(got) == losses(want)
    for keys, pick in (
        (("stage", "path_length", "depth", "lr", "tokens", "flops"), train_rows),
        (("step", "eval_loss"), eval_rows),
    ):
        assert [[r[k] for k in keys] for r in pick(got)] == [[r[k] for k in keys] for r in pick(want)], keys
    for name in ("transition", "stage_end"):  # stage summaries carry the saved per-stage counters
        assert events(got, name) == events(want, name), name
    a, b = load_file(str(out / "final" / "model.safetensors")), load_file(str(ref / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- 1. kill -9 at a random moment, then --resume ------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_kill9_at_a_random_step_then_resume_replays_bitwise(
    method, reference, corpus_dir, cli, tmp_path, monkeypatch
) -> None:
    rng = random.Random(f"kill-{method}")  # fixed per method so a failure reproduces
    # raptr/stacking die before step 20, so the resumed part crosses the stage boundary / the growth
    n_rows = rng.randint(6, 30 if method == "baseline" else 17)
    out = tmp_path / "run"
    args = pretrain_args(method, corpus_dir, out)
    proc = spawn(args, tmp_path)
    wait_until(proc, tmp_path / "stderr.txt", lambda: logged_steps(out) >= n_rows)
    time.sleep(rng.uniform(0, 0.03))  # land anywhere in a step, an eval or a save
    kill9(proc)
    assert not (out / "final").exists()
    start = ckpt.read_state(ckpt.list_checkpoints(out)[-1])["state"]["step"]
    if method != "baseline":
        assert start < STEPS // 2, "the kill must leave the stage change to the resumed run"
    drawn = resume_recording_data(cli, args, monkeypatch)
    assert drawn == list(range(start, STEPS))  # straight to the data position: no batch re-drawn
    assert_same_run(out, reference(method))
    assert not list((out / "checkpoints").glob(".tmp-*"))


# --- 2. atomic checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phase",
    [
        "write",
        "rename",
        "prune",
    ],
)
def test_a_kill_during_a_save_leaves_only_complete_checkpoints(
    phase, reference, corpus_dir, cli, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "run"
    args = pretrain_args("baseline", corpus_dir, out)
    proc = spawn(args, tmp_path, stall=f"{phase}:15")  # checkpoints 5 and 10 exist by then
    wait_until(proc, tmp_path / "stderr.txt", (tmp_path / "stalled").exists)
    kill9(proc)
    dirs = sorted((out / "checkpoints").glob("step-*"))
    found = [d.name for d in ckpt.list_checkpoints(out)]
    # write/rename: the save of 15 never happened; prune: 15 is in place and 5, being deleted, is no
    # longer under its real name
    assert found == (["step-0000010", "step-0000015"] if phase == "prune" else ["step-0000005", "step-0000010"])
    broken = [d.name for d in dirs if not loads(d)]
    resume_recording_data(cli, args, monkeypatch)
    assert_same_run(out, reference("baseline"))
    assert not list((out / "checkpoints").glob(".tmp-*"))  # stale temporaries were cleared
    assert broken == [], f"incomplete checkpoint directories under a real name: {broken}"


def test_keep_checkpoints_keeps_the_newest_n(reference, corpus_dir, cli, tmp_path) -> None:
    ref = reference("baseline")  # keep_checkpoints defaults to 2
    assert [d.name for d in ckpt.list_checkpoints(ref)] == ["step-0000035", "step-0000040"]
    for keep, steps, want in ((3, 12, [8, 10, 12]), (0, 6, [2, 4, 6])):  # 0 keeps them all
        out = tmp_path / f"keep{keep}"
        run_ok(
            cli,
            *pretrain_args(
                "baseline",
                corpus_dir,
                out,
                **{
                    "train.steps": steps,
                    "train.checkpoint_every": 2,
                    "train.keep_checkpoints": keep,
                    "model.n_layers": 2,
                },
            ),
        )
        assert [d.name for d in ckpt.list_checkpoints(out)] == [f"step-{s:07d}" for s in want]


def loads(d: Path) -> bool:
    try:
        return bool(ckpt.read_state(d))
    except UserError:
        return False


def _killed_copy(ref: Path, dest: Path, keep_through: int) -> Path:
    """A copy of a finished run as a crash after checkpoint `keep_through` would leave it."""
    shutil.copytree(ref, dest)
    shutil.rmtree(dest / "final")
    for d in ckpt.list_checkpoints(dest):
        if int(d.name[len(ckpt.PREFIX) :]) > keep_through:
            shutil.rmtree(d)
    return dest


def test_a_truncated_newest_checkpoint_is_refused_and_the_previous_one_offered(
    reference, corpus_dir, cli, tmp_path
) -> None:
    out = _killed_copy(ref := reference("baseline"), tmp_path / "run", keep_through=STEPS)
    newest, previous = ckpt.list_checkpoints(out)[-1], ckpt.list_checkpoints(out)[-2]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a full disk or a partial copy
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    res = cli(*pretrain_args("baseline", corpus_dir, out), "--resume")
    assert res.exit_code == 2 and "Traceback" not in res.output
    err = " ".join(res.stderr.split())
    assert "truncated or corrupted" in err and f"{newest} " in err and "model.safetensors" in err
    assert f"previous complete checkpoint is {previous}" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # doing what the hint says (move the broken one away) resumes from the previous one, exactly
    shutil.move(newest, tmp_path / newest.name)
    run_ok(cli, *pretrain_args("baseline", corpus_dir, out), "--resume")
    assert losses(read_rows(out)) == losses(read_rows(ref))


def test_a_corrupted_checkpoint_of_the_right_size_is_refused(reference, corpus_dir, cli, tmp_path) -> None:
    out = _killed_copy(reference("baseline"), tmp_path / "run", keep_through=35)
    weights = out / "checkpoints" / "step-0000035" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight (the header is at the start of the file)
    weights.write_bytes(bytes(data))
    res = cli(*pretrain_args("baseline", corpus_dir, out), "--resume")
    assert res.exit_code == 2 and "model.safetensors" in res.stderr, res.output


def test_a_torn_metrics_line_does_not_block_the_resume(reference, corpus_dir, cli, tmp_path) -> None:
    out = _killed_copy(ref := reference("baseline"), tmp_path / "run", keep_through=35)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 36, "stage": 0, "loss": 3.1')  # no newline: the write was cut short
    run_ok(cli, *pretrain_args("baseline", corpus_dir, out), "--resume")
    assert losses(read_rows(out)) == losses(read_rows(ref))


# --- 3. signals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "console"), [(signal.SIGINT, "plain"), (signal.SIGTERM, "none")])
def test_a_signal_finishes_the_step_saves_and_exits_130(
    signum, console, reference, corpus_dir, cli, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "run"
    args = pretrain_args("baseline", corpus_dir, out, **{"log.console": console})
    proc = spawn(args, tmp_path)
    wait_until(proc, tmp_path / "stderr.txt", lambda: logged_steps(out) >= 12)
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=60) == 130
    rows = read_rows(out)
    last = train_rows(rows)[-1]["step"]
    assert last < STEPS and not (out / "final").exists()
    newest = ckpt.list_checkpoints(out)[-1]
    assert newest.name == f"step-{last:07d}"  # the step under way finished and was saved
    assert ckpt.read_state(newest)["state"]["step"] == last
    assert rows[-1] == {"event": "checkpoint", "step": last, "path": f"checkpoints/{newest.name}"}
    err = "".join((tmp_path / "stderr.txt").read_text().split())  # the console folds long paths
    assert "Traceback" not in err
    if console != "none":
        assert f"interruptedatstep{last};checkpointsavedto{newest}" in err
    drawn = resume_recording_data(cli, args, monkeypatch)
    assert drawn == list(range(last, STEPS))
    assert_same_run(out, reference("baseline"))


def signal_during(monkeypatch, step: int) -> None:
    """Deliver SIGTERM's effect (the handler's flag) while the optimizer step `step` (0-based) runs."""
    real = Trainer._apply

    def apply(self, step_, params, loss):
        if step_ == step:
            self.stop.on_signal(signal.SIGTERM, None)
        return real(self, step_, params, loss)

    monkeypatch.setattr(Trainer, "_apply", apply)


def test_a_signal_during_the_last_step_lets_the_run_finish(corpus_dir, cli, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    signal_during(monkeypatch, SMALL["train.steps"] - 1)
    run_ok(cli, *pretrain_args("baseline", corpus_dir, out, **SMALL))  # exit 0, not 130
    assert (out / "final" / "model.safetensors").is_file()


def test_a_signal_on_a_checkpoint_step_saves_it_once(corpus_dir, cli, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    signal_during(monkeypatch, 5)  # step 6 is a checkpoint_every = 2 step
    res = cli(*pretrain_args("baseline", corpus_dir, out, **SMALL))
    assert res.exit_code == 130, res.output
    saves = [r for r in read_rows(out) if r.get("event") == "checkpoint"]
    assert [r["step"] for r in saves] == [2, 4, 6]
    assert ckpt.read_state(ckpt.list_checkpoints(out)[-1])["state"]["step"] == 6


# --- 5. NaN / inf -----------------------------------------------------------------------------------------

SMALL = {
    "model.n_layers": 2,
    "train.steps": 12,
    "train.checkpoint_every": 2,
    "train.keep_checkpoints": 0,
    "train.eval_every": 0,
}
SKIP = {**SMALL, "train.nan_policy": "skip", "train.max_skipped_steps": 2}


def poison(monkeypatch, steps: set[int]) -> None:
    """Make the gradient of these (0-based) steps non-finite just before the trainer's guard sees it:
    a transient fault (one bad batch), which a real model cannot be made to produce on demand."""
    real = Trainer._apply

    def apply(self, step, params, loss):
        if step in steps:
            next(p for p in params if p.grad is not None).grad.fill_(float("nan"))
        return real(self, step, params, loss)

    monkeypatch.setattr(Trainer, "_apply", apply)


def test_nan_stop_exits_1_naming_the_step_and_the_last_good_checkpoint(corpus_dir, cli, tmp_path) -> None:
    out = tmp_path / "run"
    # a real divergence: the first AdamW step at lr 1e30 blows the weights up, step 1 goes non-finite
    res = cli(
        *pretrain_args(
            "baseline",
            corpus_dir,
            out,
            **{**SMALL, "train.checkpoint_every": 1, "optim.lr": 1e30, "optim.warmup_steps": 0},
        )
    )
    assert res.exit_code == 1 and "Traceback" not in res.output
    err = "".join(res.stderr.split())  # the console wraps long lines, paths included
    assert re.search(r"non-finiteatstep[12]\D", err) and f"{out}/checkpoints/step-0000001" in err
    assert [d.name for d in ckpt.list_checkpoints(out)] == ["step-0000001"]  # nothing saved after it
    assert not (out / "final").exists()
    assert all(r["loss"] is not None for r in train_rows(read_rows(out)))


def test_nan_skip_skips_the_step_and_goes_on(corpus_dir, cli, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    poison(monkeypatch, {3, 7})
    run_ok(cli, *pretrain_args("baseline", corpus_dir, out, **SKIP))
    rows = read_rows(out)
    assert [r["step"] for r in rows if r.get("event") == "skipped_step"] == [
        4,
        8,
    ]  # completed-step numbering, like training rows
    final = ckpt.list_checkpoints(out)[-1]
    assert ckpt.read_state(final)["state"]["skipped_steps"] == 2
    # a skipped step leaves AdamW untouched: 12 steps, 10 updates
    opt = torch.load(final / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in opt["state"].values()} == {10.0}
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "final" / "model.safetensors")).values())


def test_nan_skip_stops_after_max_skipped_steps(corpus_dir, cli, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    poison(monkeypatch, {3, 5, 7})
    res = cli(*pretrain_args("baseline", corpus_dir, out, **SKIP))
    assert res.exit_code == 1 and "Traceback" not in res.output
    err = "".join(res.stderr.split())
    assert re.search(r"non-finiteatstep[78]\D", err) and f"{out}/checkpoints/step-0000006" in err
    assert len([r for r in read_rows(out) if r.get("event") == "skipped_step"]) == 2
    assert not (out / "final").exists()


def test_a_skipped_step_is_logged_once_across_a_resume(corpus_dir, cli, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    poison(monkeypatch, {4})  # the step right after checkpoint step-0000004
    args = pretrain_args("baseline", corpus_dir, out, **SKIP)
    run_ok(cli, *args)
    _killed_copy(out, tmp_path / "crashed", keep_through=4)
    run_ok(cli, *args[:3], str(tmp_path / "crashed"), *args[4:], "--resume")
    assert len([r for r in read_rows(tmp_path / "crashed") if r.get("event") == "skipped_step"]) == 1
