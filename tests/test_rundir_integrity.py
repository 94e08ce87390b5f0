"""Run-directory integrity (issue 14): one writer per run directory (an OS lock that a kill -9 does not
leave behind), a run set aside by an interrupted --overwrite comes back, a malformed trainer_state.json
is refused before any file changes, and a full disk during a save leaves no temporary and says which
checkpoint is intact.

Processes that must hold a lock or die mid-start are real (`kill -9`); everything else runs in-process
through CliRunner on conftest's generated corpus with a 2-layer, 32-wide BERT.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY, merged, read_rows, run_ok, to_toml, train_rows, wait_until
from raptr_cli.errors import UserError
from raptr_cli.train import checkpoint as ckpt
from raptr_cli.train.rundir import LOCK_FILE, RunLock, refuse_if_running

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SHORT = {"train": {"steps": 6, "checkpoint_every": 2, "keep_checkpoints": 0, "eval_every": 0}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, torch_one_thread: None) -> Path:
    """A folder with recipe.toml, data/ and run/: a finished 6-step run with checkpoints at 2, 4, 6."""
    from typer.testing import CliRunner

    from raptr_cli.cli.main import app

    w = tmp_path_factory.mktemp("finished")
    shutil.copytree(corpus_dir, w / "data")
    (w / "recipe.toml").write_text(to_toml(merged(TINY, SHORT)))
    res = CliRunner().invoke(app, ["pretrain", str(w / "recipe.toml"), "--out", str(w / "run")])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return w


@pytest.fixture
def world(finished: Path, tmp_path: Path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(finished, w)
    return w


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: sha256 and mtime (ns)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def interrupted_at_4(w: Path) -> None:
    """run/ as a run killed after its step-4 checkpoint."""
    shutil.rmtree(w / "run" / "final")
    shutil.rmtree(w / "run" / "checkpoints" / "step-0000006")


# Runs raptr as a real process that stops at one point of its start-up, after writing its PID to a
# marker file, so the test can act while it holds the run directory, then SIGKILL it.
HOLD_WRAPPER = r"""
import os, sys, time
from pathlib import Path
from raptr_cli.train import loop

def hold(*a, **k):
    marker = Path(os.environ["RAPTR_TEST_MARKER"])
    marker.with_suffix(".tmp").write_text(str(os.getpid()))
    os.replace(marker.with_suffix(".tmp"), marker)  # whole, once it exists
    time.sleep(600)

if os.environ["RAPTR_TEST_HOLD"] == "train":  # the run is started: the lock is held
    loop.Trainer.run = hold
else:  # "data": with --overwrite the old run is set aside, the new data not prepared yet
    loop.prepare_data = hold
sys.argv[0] = "raptr"
from raptr_cli.cli.main import main
main()
"""


def spawn_holding(args: list[str], tmp: Path, point: str) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if k != "RAPTR_DEBUG"}  # RAPTR_CACHE is inherited
    (tmp / "hold.py").write_text(HOLD_WRAPPER)
    marker = tmp / "held"
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAPTR_TEST_HOLD=point, RAPTR_TEST_MARKER=str(marker))
    proc = subprocess.Popen(
        [sys.executable, str(tmp / "hold.py"), *map(str, args)],
        env=env,
        stdout=open(tmp / "stdout.txt", "w"),
        stderr=open(tmp / "stderr.txt", "w"),
    )
    wait_until(proc, tmp / "stderr.txt", marker.exists)
    pid = int(marker.read_text())
    assert pid == proc.pid
    return proc, pid


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


# --- 1. one writer per run directory ---------------------------------------------------------------


def test_a_run_being_written_refuses_other_writers_and_export_but_not_eval(world: Path, tmp_path: Path, cli) -> None:
    interrupted_at_4(world)
    run = world / "run"
    proc, pid = spawn_holding(["pretrain", run / "recipe.toml", "--out", run, "--resume"], tmp_path, "train")
    try:
        assert (run / LOCK_FILE).read_text().strip() == str(pid)
        before = snapshot(run)
        for extra in ([], ["--overwrite"], ["--resume"]):
            res = cli("pretrain", world / "recipe.toml", "--out", run, *extra)
            text = " ".join(res.output.split())
            assert res.exit_code == 2, (extra, res.output)
            assert f"{run} is in use by another raptr process (PID {pid})" in text, (extra, text)
            assert "Traceback" not in res.output
        res = cli("export", run, tmp_path / "hf")
        assert res.exit_code == 2 and f"PID {pid}" in res.output, res.output
        assert not (tmp_path / "hf").exists()
        res = cli("eval", run, "--json")  # reading a run in progress is fine (its newest checkpoint)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["checkpoint"] == str(run / "checkpoints" / "step-0000004")
        assert snapshot(run) == before  # nothing of the held run changed (an --overwrite moved nothing)
    finally:
        kill9(proc)
    # the kernel dropped the lock with the process: its .lock file is left, unlocked, and taken over
    assert (run / LOCK_FILE).read_text().strip() == str(pid)
    run_ok(cli, "pretrain", run / "recipe.toml", "--out", run, "--resume")
    assert [r["step"] for r in train_rows(read_rows(run))] == list(range(1, 7))
    assert (run / "final").is_dir() and not (run / LOCK_FILE).exists()


def test_the_lock_names_its_holder_and_is_gone_once_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    with pytest.raises(UserError, match=rf"in use by another raptr process \(PID {os.getpid()}\)"):
        RunLock(run).acquire()
    with pytest.raises(UserError, match=str(os.getpid())):
        refuse_if_running(run)
    lock.release()
    assert not (run / LOCK_FILE).exists()
    refuse_if_running(run)  # free again
    (run / LOCK_FILE).write_text("12345\n")  # a killed holder's file: not a lock
    refuse_if_running(run)
    with RunLock(run):
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_compare_takes_each_runs_lock(world: Path, cli) -> None:
    cmp = world / "cmp"
    with RunLock(cmp / "tiny"):  # as if another process trained cmp/tiny now
        res = cli("compare", world / "recipe.toml", "--out", cmp)
    assert res.exit_code == 2, res.output
    assert f"{cmp / 'tiny'} is in use by another raptr process (PID {os.getpid()})" in " ".join(res.output.split())
    assert not (cmp / "tiny" / "metrics.jsonl").exists()


def test_a_resume_of_a_missing_directory_creates_nothing(tmp_path: Path, world: Path, cli) -> None:
    res = cli("pretrain", world / "recipe.toml", "--out", tmp_path / "nothing", "--resume")
    assert res.exit_code == 2 and "recipe.toml is missing" in res.output, res.output
    assert not (tmp_path / "nothing").exists()


# --- 4. a run set aside by an interrupted --overwrite ----------------------------------------------


def test_a_run_set_aside_by_a_killed_overwrite_is_restored(world: Path, tmp_path: Path, cli) -> None:
    run = world / "run"
    before = snapshot(run)
    proc, pid = spawn_holding(["pretrain", world / "recipe.toml", "--out", run, "--overwrite"], tmp_path, "data")
    hidden = run / f".overwritten-{pid}"
    assert (hidden / "metrics.jsonl").is_file() and not (run / "metrics.jsonl").exists()
    kill9(proc)
    # the next start in that directory (here a new run, which is then refused) puts it back first
    res = cli("pretrain", world / "recipe.toml", "--out", run, "--set", "log.console=plain")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "already holds a run" in text, res.output
    assert (
        f"restored the run in {run} that an interrupted --overwrite (process {pid}) had set aside in {hidden}"
    ) in text
    assert snapshot(run) == before  # byte for byte and mtime for mtime; no .lock, no hidden folder left
    assert not hidden.exists()


def test_a_sigterm_during_an_overwrites_start_puts_the_old_run_back_at_once(world: Path, tmp_path: Path) -> None:
    run = world / "run"
    before = snapshot(run)
    proc, pid = spawn_holding(["pretrain", world / "recipe.toml", "--out", run, "--overwrite"], tmp_path, "data")
    assert (run / f".overwritten-{pid}").is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, (tmp_path / "stderr.txt").read_text()
    assert snapshot(run) == before and sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_the_killed_starts_own_files_do_not_block_the_restore(world: Path, cli) -> None:
    run = world / "run"
    before = snapshot(run)
    hidden = run / ".overwritten-999999"
    hidden.mkdir()
    for name in ("metrics.jsonl", "checkpoints", "final", "recipe.toml", "tokenizer.json"):
        os.replace(run / name, hidden / name)
    (run / "tokenizer.json").write_text("{}")  # the killed start had trained its tokenizer
    (run / "metrics.jsonl").write_text("")  # and opened its log, but logged nothing
    res = cli("pretrain", world / "recipe.toml", "--out", run)
    assert res.exit_code == 2 and "already holds a run" in res.output, res.output  # restored first
    assert snapshot(run) == before and not hidden.exists()


def test_a_half_set_aside_run_is_put_back_together(world: Path, cli) -> None:
    run = world / "run"
    before = snapshot(run)
    hidden = run / ".overwritten-999999"
    hidden.mkdir()
    for name in ("metrics.jsonl", "checkpoints"):  # killed while moving the files one by one
        os.replace(run / name, hidden / name)
    res = cli("pretrain", run / "recipe.toml", "--out", run, "--resume")
    assert res.exit_code == 0, res.output  # the restored run had finished: nothing to do
    content = lambda snap: {k: sha for k, (sha, _) in snap.items()}  # noqa: E731 (a resume rewrites the log)
    assert content(snapshot(run)) == content(before) and not hidden.exists()


def test_a_set_aside_run_next_to_another_run_is_named_and_kept(world: Path, cli) -> None:
    run = world / "run"
    hidden = run / ".overwritten-999999"
    shutil.copytree(run, hidden)  # another run, set aside by a killed --overwrite, then replaced
    (hidden / "recipe.toml").write_text("# the old run\n")
    kept = snapshot(hidden)
    res = cli("pretrain", run / "recipe.toml", "--out", run, "--resume", "--set", "log.console=plain")
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert f"{hidden} holds a run that an interrupted --overwrite (process 999999, no longer running) set aside" in text
    assert f"rm -r {hidden}" in text
    assert snapshot(hidden) == kept


# --- 6. a malformed trainer_state.json ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("step", "x", 'step = "x"'),
        ("step", -5, "step = -5"),
        ("step", [], "step = []"),
        ("step", None, "step is missing"),
        ("step", 2.5, "step = 2.5"),
        ("step", True, "step = true"),
        ("depth", 0, "depth = 0"),
        ("depth", "2", 'depth = "2"'),
        ("depth", 9, "depth = 9"),
        ("tokens", -1, "tokens = -1"),
        ("world_size", "1", 'world_size = "1"'),
        ("sharded", "no", 'sharded = "no"'),
        ("data_blocks", [3], "data_blocks = [3]"),
        ("stage_stats", [], "stage_stats = []"),
        ("stage_stats", {"0": {"start_step": 0}}, "stage_stats.0"),
        ("flops", "NaN", "flops = NaN"),
        ("", [], "holds a list"),
    ],
)
def test_a_malformed_trainer_state_is_refused_before_any_file_changes(key, value, expect, world: Path, cli) -> None:
    interrupted_at_4(world)
    run = world / "run"
    state_file = run / "checkpoints" / "step-0000004" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    if not key:
        state = value
    elif value is None:
        del state[key]
    elif value == "NaN":
        state[key] = float("nan")
    else:
        state[key] = value
    state_file.write_text(json.dumps(state))
    manifest = state_file.parent / "manifest.json"  # kept consistent: the content itself is what is wrong
    entries = json.loads(manifest.read_text())
    entries["trainer_state.json"] = {
        "size": state_file.stat().st_size,
        "sha256": hashlib.sha256(state_file.read_bytes()).hexdigest(),
    }
    manifest.write_text(json.dumps(entries))
    (run / "checkpoints" / ".tmp-step-0000006-1").mkdir()  # a killed save's leftover: kept on refusal
    before = snapshot(run)
    rows = len(read_rows(run))
    res = cli("pretrain", run / "recipe.toml", "--out", run, "--resume")
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and str(state_file) in text and expect in text, text
    if key != "depth" or value != 9:  # (a depth too large is found against the model, in the trainer)
        assert "step-0000002" in text  # the previous checkpoint is offered
    assert snapshot(run) == before and len(read_rows(run)) == rows  # metrics.jsonl not truncated
    assert (run / "checkpoints" / ".tmp-step-0000006-1").is_dir()


def test_a_checkpoint_without_its_config_is_refused(world: Path, cli) -> None:
    interrupted_at_4(world)
    run = world / "run"
    (run / "checkpoints" / "step-0000004" / "config.json").unlink()
    before = snapshot(run)
    res = cli("pretrain", run / "recipe.toml", "--out", run, "--resume")
    assert res.exit_code == 2 and "step-0000004" in res.output and "config.json" in res.output, res.output
    assert snapshot(run) == before


# --- 7. a full disk during a save -----------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _model_and_state():
    import torch

    from raptr_cli.models.bert.config import BertConfig
    from raptr_cli.models.bert.model import BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(
            vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=16
        )
    )
    opt = torch.optim.AdamW(model.parameters())
    return model, opt.state_dict()


def test_a_full_disk_mid_save_removes_the_temporary_and_names_the_intact_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    model, opt = _model_and_state()
    monkeypatch.setattr(ckpt.torch, "save", enospc)  # after model.safetensors and config.json
    with pytest.raises(ckpt.DiskFull, match="no previous checkpoint exists"):
        ckpt.save_checkpoint(tmp_path, 1, model, opt, {}, "bert", keep=0)
    monkeypatch.undo()
    first = ckpt.save_checkpoint(tmp_path, 1, model, opt, {}, "bert", keep=0)
    monkeypatch.setattr(ckpt.torch, "save", enospc)
    with pytest.raises(ckpt.DiskFull) as e:
        ckpt.save_checkpoint(tmp_path, 2, model, opt, {}, "bert", keep=0)
    assert str(e.value).startswith(
        f"disk full at {tmp_path / 'checkpoints' / 'step-0000002'}, previous checkpoint step 1 is intact ({first})"
    )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]  # no temporary left
    assert ckpt.read_state(first)["state"]["step"] == 1


def test_the_full_disk_errors_of_the_real_writers_are_recognised(tmp_path: Path, monkeypatch) -> None:
    # what each writer raised on a real full tmpfs: torch.save to a path, safetensors, a file object
    pos = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 662")
    chained = RuntimeError("unexpected pos 832 vs 726")
    chained.__context__ = OSError(errno.ENOSPC, "No space left on device")
    rust = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert ckpt.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert ckpt.is_disk_full(chained, tmp_path) and ckpt.is_disk_full(rust, tmp_path)
    assert not ckpt.is_disk_full(OSError("disk full"), tmp_path)  # no errno: another failure
    assert not ckpt.is_disk_full(pos, tmp_path)  # plenty of space here: a real bug, not a full disk
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: SimpleNamespace(total=2**30, used=2**30 - 4096, free=4096))
    assert ckpt.is_disk_full(pos, tmp_path)


def test_a_run_whose_checkpoint_hits_a_full_disk_exits_1_and_resumes_later(world: Path, cli, monkeypatch) -> None:
    out = world / "again"
    real = ckpt.torch.save
    monkeypatch.setattr(
        ckpt.torch, "save", lambda obj, f, *a, **k: enospc() if "step-0000004" in str(f) else real(obj, f, *a, **k)
    )
    res = cli("pretrain", world / "recipe.toml", "--out", out)
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), repr(res.exception)
    assert (
        f"disk full at {out / 'checkpoints' / 'step-0000004'}, previous checkpoint step 2 is intact "
        f"({out / 'checkpoints' / 'step-0000002'})"
    ) in text, text
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    assert ckpt.read_state(out / "checkpoints" / "step-0000002")["state"]["step"] == 2
    monkeypatch.undo()  # space freed
    run_ok(cli, "pretrain", out / "recipe.toml", "--out", out, "--resume")
    assert (out / "final").is_dir() and [r["step"] for r in train_rows(read_rows(out))] == list(range(1, 7))


def test_a_full_disk_while_writing_final_keeps_the_last_checkpoint(world: Path, cli, monkeypatch) -> None:
    out = world / "again"
    real = ckpt.write_model_dir
    monkeypatch.setattr(
        ckpt, "write_model_dir", lambda path, *a, **k: enospc() if path.name == ".final.tmp" else real(path, *a, **k)
    )
    res = cli("pretrain", world / "recipe.toml", "--out", out)
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert f"disk full at {out / 'final'}, previous checkpoint step 6 is intact" in text, text
    assert not (out / ".final.tmp").exists() and not (out / "final").exists()
    monkeypatch.undo()
    run_ok(cli, "pretrain", out / "recipe.toml", "--out", out, "--resume")  # writes final/ from step 6
    assert (out / "final" / "model.safetensors").is_file()


def test_a_full_disk_while_logging_exits_1_naming_the_intact_checkpoint(world: Path, cli, monkeypatch) -> None:
    from raptr_cli.train import metrics

    out = world / "again"
    real = metrics.JsonlSink.log
    monkeypatch.setattr(
        metrics.JsonlSink, "log", lambda self, row: enospc() if row.get("step") == 5 else real(self, row)
    )
    res = cli("pretrain", world / "recipe.toml", "--out", out)
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert f"disk full at {out}, previous checkpoint step 4 is intact" in text, text
