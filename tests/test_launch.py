"""The multi-process launch path README documents, on CPU: `accelerate launch --multi_gpu
--num_processes 2 $(which raptr) pretrain ...` trains one model in data parallel (not two models
alone), matches a single-process run, and a resume with another world size is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import generate_corpus, logged_steps, wait_until

ROOT = Path(__file__).resolve().parents[1]
RAPTR = shutil.which("raptr", path=str(Path(sys.executable).parent)) or str(Path(sys.executable).parent / "raptr")
ACCELERATE = str(Path(sys.executable).parent / "accelerate")

SETS = [
    "--set",
    "train.steps=6",
    "--set",
    "model.n_layers=4",
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.num_heads=2",
    "--set",
    "model.intermediate_size=64",
    "--set",
    "train.seq_len=32",
    "--set",
    "train.batch_size=8",
    "--set",
    "tokenizer.vocab_size=200",
    "--set",
    "log.console=none",
    "--set",
    "train.eval_every=0",
    "--set",
    "train.checkpoint_every=3",
    "--set",
    "model.dropout=0.0",
    "--set",
    "model.attention_dropout=0.0",
    "--set",
    "schedule.stages=[{fraction=0.5,path_length=3},{fraction=0.5,path_length=4}]",
]


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not Path(ACCELERATE).exists():
        pytest.skip("accelerate's launcher is not installed next to this python")
    tmp = tmp_path_factory.mktemp("launch")
    (tmp / "a.txt").write_text("\n".join(generate_corpus(30, 20, seed=3)))
    env = {**os.environ, "RAPTR_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    data = ["--set", f'data.train=["{tmp / "a.txt"}"]']
    recipe = str(ROOT / "recipes/bert-tiny-raptr.toml")
    one = _run([RAPTR, "pretrain", recipe, "--out", str(tmp / "one"), *SETS, *data], env)
    assert one.returncode == 0, one.stderr
    two = _run(
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
            RAPTR,
            "pretrain",
            recipe,
            "--out",
            str(tmp / "two"),
            *SETS,
            *data,
        ],
        env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, env, recipe, data


def test_two_processes_train_one_model_like_one_process(runs):
    tmp, *_ = runs
    a = load_file(str(tmp / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp / "two" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    # same global batch, same paths; only the float summation order of the gradient differs
    assert worst < 1e-4, worst
    state = (tmp / "two" / "checkpoints").glob("step-*/trainer_state.json")
    assert all('"world_size": 2' in p.read_text() for p in state)


def test_resume_with_another_world_size_is_refused(runs):
    tmp, env, recipe, data = runs
    shutil.rmtree(tmp / "two" / "final")
    last = sorted((tmp / "two" / "checkpoints").glob("step-*"))[-1]
    shutil.rmtree(last)
    before = sorted(p.name for p in (tmp / "two" / "checkpoints").iterdir())
    res = _run([RAPTR, "pretrain", str(tmp / "two" / "recipe.toml"), "--out", str(tmp / "two"), "--resume"], env)
    assert res.returncode == 2
    assert "2 processes" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in (tmp / "two" / "checkpoints").iterdir()) == before


FSDP = [
    ACCELERATE,
    "launch",
    "--use_fsdp",
    "--fsdp_version",
    "2",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


@pytest.fixture(scope="module")
def sharded(runs):
    tmp, env, recipe, data = runs
    res = _run([*FSDP, RAPTR, "pretrain", recipe, "--out", str(tmp / "fsdp"), *SETS, *data], env)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "fsdp"


def test_fsdp_launch_trains_the_same_model_sharded(runs, sharded):
    tmp, *_ = runs
    a = load_file(str(tmp / "one" / "final" / "model.safetensors"))
    b = load_file(str(sharded / "final" / "model.safetensors"))  # gathered to full tensors on rank 0
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # skipped blocks were neither gathered nor updated, on both ranks
    states = list((sharded / "checkpoints").glob("step-*/trainer_state.json"))
    assert states and all('"sharded": true' in p.read_text() for p in states)


def test_fsdp_resume_is_exact_and_a_replicated_resume_is_refused(runs, sharded):
    tmp, env, recipe, data = runs
    again = tmp / "fsdp-resumed"
    shutil.copytree(sharded, again)
    shutil.rmtree(again / "final")
    shutil.rmtree(sorted((again / "checkpoints").glob("step-*"))[-1])  # back to step 3: stage 1 of 2
    before = sorted(p.name for p in (again / "checkpoints").iterdir())
    res = _run([RAPTR, "pretrain", str(again / "recipe.toml"), "--out", str(again), "--resume"], env)
    assert res.returncode == 2 and "sharded (FSDP)" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == before
    res = _run([*FSDP, RAPTR, "pretrain", str(again / "recipe.toml"), "--out", str(again), "--resume"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(sharded / "final" / "model.safetensors"))
    b = load_file(str(again / "final" / "model.safetensors"))
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_refuses_stacking_and_unsupported_options(runs):
    tmp, env, _, data = runs
    stack = str(ROOT / "recipes/bert-tiny-stacking.toml")
    sets = [*SETS[:-2], "--set", "schedule.stages=[{fraction=0.5,depth=2},{fraction=0.5,depth=4}]"]
    res = _run([*FSDP, RAPTR, "pretrain", stack, "--out", str(tmp / "fsdp-stack"), *sets, *data], env)
    assert res.returncode != 0 and "cannot run sharded (FSDP)" in res.stderr
    assert "Traceback" not in res.stderr.split("cannot run sharded")[0][-2000:]
    res = _run(
        [
            *FSDP[:-4],
            "--fsdp_offload_params",
            "true",
            *FSDP[-4:],
            RAPTR,
            "pretrain",
            str(ROOT / "recipes/bert-tiny-raptr.toml"),
            "--out",
            str(tmp / "fsdp-offload"),
            *SETS,
            *data,
        ],
        env,
    )
    assert res.returncode != 0 and "parameter offloading" in res.stderr


def _workers(launcher: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes (their RANK from /proc/PID/environ)."""
    pids = [int(c) for c in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()]
    ranks = {}
    for pid in pids:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        ranks[int(env["RANK"])] = pid
    return ranks


SIGNAL_SETS = [*SETS, "--set", "train.steps=600", "--set", "train.checkpoint_every=0"]
LAUNCH_2 = [
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
    RAPTR,
    "pretrain",
]


@pytest.fixture(scope="module")
def unsignalled(runs):
    tmp, env, recipe, data = runs
    res = _run([*LAUNCH_2, recipe, "--out", str(tmp / "unsignalled"), *SIGNAL_SETS, *data], env)
    assert res.returncode == 0, res.stderr[-3000:]
    return load_file(str(tmp / "unsignalled" / "final" / "model.safetensors"))


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="finds the workers through /proc/PID/task/PID/children (Linux)",
)
@pytest.mark.parametrize("target", ["rank 0", "rank 1", "launcher"])
def test_a_signal_stops_every_rank_after_the_same_step(runs, unsignalled, target):
    """SIGTERM to one worker only (a scheduler may signal only some), or Ctrl-C to the launcher (which
    forwards it). The ranks agree on the stop, so all of them save the same step and exit 130 (none
    is left waiting in a collective), one process says so, and the resume finishes exactly."""
    import json
    import signal

    tmp, env, recipe, data = runs
    tag = target.replace(" ", "")
    out, err_file = tmp / f"signalled-{tag}", tmp / f"signalled-{tag}.err"
    workers: dict[int, int] = {}
    with open(err_file, "w") as err:
        proc = subprocess.Popen(
            [*LAUNCH_2, recipe, "--out", str(out), *SIGNAL_SETS, *data],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_until(proc, err_file, lambda: logged_steps(out) >= 3)
            workers = _workers(proc.pid)
            assert proc.poll() is None and sorted(workers) == [0, 1], "the run ended before it could be signalled"
            if target == "launcher":
                os.kill(proc.pid, signal.SIGINT)
            else:
                os.kill(workers[int(target[-1])], signal.SIGTERM)
            assert proc.wait(timeout=120) != 0  # the launcher reports a stop of its workers as a failure
        finally:
            for pid in [proc.pid, *workers.values()]:  # the workers run in sessions of their own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    err = err_file.read_text()
    if target != "launcher":
        assert "exitcode  : 130" in err, err[-3000:]  # the first worker to exit, as the launcher reports it
    assert "Traceback" not in err.split("interrupted at step")[0], err[-3000:]
    assert not (out / "final").exists()
    (saved,) = (out / "checkpoints").iterdir()
    step = int(saved.name.split("-")[1])
    assert 0 < step < 600 and json.loads((saved / "trainer_state.json").read_text())["step"] == step
    assert err.count(f"interrupted at step {step}") == 1  # said once, by the main process
    res = _run([*LAUNCH_2, recipe, "--out", str(out), *SIGNAL_SETS, *data, "--resume"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(out / "final" / "model.safetensors"))
    assert a and a.keys() == unsignalled.keys()
    assert all(torch.equal(a[k], unsignalled[k]) for k in a)
