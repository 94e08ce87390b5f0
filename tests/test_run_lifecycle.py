"""train.run.run_recipe called directly, as a library would, without the CLI: a tiny run, an exact
resume, a finished run left alone, the refusals that protect a run directory, and an interruption
reported as RunStopped (the CLI turns it into exit 130)."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import pytest

from conftest import read_rows, train_rows
from raptr_cli.errors import UserError
from raptr_cli.recipe import load_recipe
from raptr_cli.train import checkpoint as ckpt
from raptr_cli.train.loop import Trainer
from raptr_cli.train.run import RunStopped, run_recipe

pytestmark = pytest.mark.usefixtures("torch_one_thread")

STEPS = {"train": {"steps": 8, "checkpoint_every": 4, "keep_checkpoints": 0}}


class Recorder:
    """A Reporter that keeps what a console would print."""

    def __init__(self):
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.plans: list[tuple[dict, int | None]] = []

    def log(self, row: dict) -> None:
        self.rows.append(row)

    def close(self) -> None:
        pass

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def show_plan(self, p: dict, dry_run: bool = False, resumed_at: int | None = None) -> None:
        self.plans.append((p, resumed_at))


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def finished(make_recipe, tmp_path: Path) -> tuple[Path, Recorder]:
    out, sink = tmp_path / "run", Recorder()
    res = run_recipe(load_recipe(make_recipe(STEPS)), out, sink=sink)
    assert res.trained and res.main_process and res.step == 8 and res.out == out
    return out, sink


def test_a_run_without_the_cli_writes_its_directory_and_reports_to_its_sink(finished) -> None:
    out, sink = finished
    assert (out / "final" / "model.safetensors").is_file() and (out / "recipe.toml").is_file()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000004", "step-0000008"]
    assert not (out / ".lock").exists()  # released
    assert sink.rows == read_rows(out)  # the sink saw every row metrics.jsonl holds
    assert len(sink.plans) == 1 and sink.plans[0][1] is None  # a new run, not a resumed one
    state = ckpt.read_state(out / "checkpoints" / "step-0000008")["state"]
    assert state["tokens"] == 8 * 8 * 32 and state["step"] == 8


def test_the_result_carries_the_final_state_and_eval(make_recipe, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_recipe(load_recipe(make_recipe(STEPS)), out)  # no sink: nothing printed, files as ever
    assert res.final_eval is not None and res.final_eval["step"] == 8
    assert res.final_eval == [r for r in read_rows(out) if "eval_loss" in r and "event" not in r][-1]
    saved = ckpt.read_state(out / "checkpoints" / "step-0000008")["state"]
    assert res.state.to_json() == {k: v for k, v in saved.items() if k != "step"}


def test_resume_continues_exactly_and_a_finished_run_is_left_alone(finished, make_recipe, tmp_path: Path) -> None:
    out, _ = finished
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-0000008")
    sink = Recorder()
    res = run_recipe(load_recipe(cut / "recipe.toml"), cut, resume=True, sink=sink)
    assert res.trained and sink.plans[0][1] == 4  # resumed at step 4
    assert [r["loss"] for r in train_rows(read_rows(cut))] == [r["loss"] for r in train_rows(read_rows(out))]

    before, again = files(cut), Recorder()
    res = run_recipe(load_recipe(cut / "recipe.toml"), cut, resume=True, sink=again)
    assert not res.trained and res.final_eval is None and res.step == 8
    assert any("already finished all 8 steps" in n for n in again.notes) and not again.plans
    assert files(cut) == before


def test_an_existing_run_is_refused_unless_overwrite(finished, make_recipe) -> None:
    out, _ = finished
    recipe, before = load_recipe(make_recipe(STEPS)), files(out)
    losses = [r["loss"] for r in train_rows(read_rows(out))]
    with pytest.raises(UserError, match="already holds a run"):
        run_recipe(recipe, out)
    with pytest.raises(UserError, match="contradict"):
        run_recipe(recipe, out, resume=True, overwrite=True)
    assert files(out) == before  # refused before any file changed
    res = run_recipe(recipe, out, overwrite=True)
    assert res.trained and not list(out.glob(".overwritten-*"))  # the old run is gone once the new one started
    assert [r["loss"] for r in train_rows(read_rows(out))] == losses  # the same recipe trained again


def test_an_interrupted_run_raises_run_stopped_after_its_checkpoint(make_recipe, tmp_path: Path, monkeypatch) -> None:
    real = Trainer._apply

    def apply(self, step, params, loss):
        if step == 2:  # as SIGTERM's handler would, during the optimizer step of step 3
            self.stop.on_signal(signal.SIGTERM, None)
        return real(self, step, params, loss)

    monkeypatch.setattr(Trainer, "_apply", apply)
    out = tmp_path / "run"
    with pytest.raises(RunStopped) as e:
        run_recipe(load_recipe(make_recipe(STEPS)), out)
    assert e.value.reason == "interrupted" and e.value.speaks
    assert e.value.message == f"interrupted at step 3; checkpoint saved to {out / 'checkpoints' / 'step-0000003'}"
    assert not (out / "final").exists() and not (out / ".lock").exists()
