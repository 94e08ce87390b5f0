"""A run's lifecycle, shared by `raptr pretrain` and `raptr compare`.

`run_recipe` refuses what cannot run before any file is written (trackers, --resume with
--overwrite, memory), locks the run directory, puts back a run an interrupted --overwrite set
aside, decides resume or overwrite (rundir.py), builds the trainer (data, model), trains, and
returns what the run did. The CLI keeps flags, printing and exit codes: this module reports through
a `Reporter` (the CLI's console, so nothing here imports rich) and raises `RunStopped` for a run
that ended before its last step.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import UserError
from ..recipe import Recipe
from .metrics import Sink
from .state import TrainState


class Reporter(Sink, Protocol):
    """The console a run reports to: metrics rows (Sink), notes, warnings and the plan."""

    def note(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...
    def show_plan(self, p: dict, dry_run: bool = False, resumed_at: int | None = None) -> None: ...


class RunStopped(Exception):
    """The run ended before its last step, for `reason`: "interrupted" (a signal; the step finished
    and a checkpoint was saved), "diverged" (a non-finite loss or gradient) or "disk_full".
    `speaks`: whether this process should report it (every rank stops after the same step; the
    main process says so; a full disk is reported by the process that hit it)."""

    def __init__(self, reason: str, message: str, speaks: bool):
        super().__init__(message)
        self.reason, self.message, self.speaks = reason, message, speaks


@dataclass
class RunResult:
    out: Path
    step: int
    state: TrainState
    final_eval: dict | None
    """The eval row at the last step (None when nothing was trained)."""
    trained: bool
    """False when --resume found the run already finished: nothing was done."""
    main_process: bool
    """This process wrote the run directory (rank 0 of a launch)."""


def run_recipe(
    recipe: Recipe,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    sink: Reporter | None = None,
    *,
    memory_check: bool = True,
) -> RunResult:
    """Train `recipe` into the run directory `out` (new; the run there with `resume`; replacing it
    with `overwrite`). Under `accelerate launch` every rank calls it; rank 0 writes `out`.
    `memory_check=False` starts even when the memory estimate exceeds the device's."""
    check_trackers(recipe.log.trackers)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other", hint="Pick one.")

    import torch

    if memory_check:  # before any file is written or the tokenizer trainer runs
        from ..planning import effective_precision, launch_layout

        check_memory_fits(
            recipe, launch_layout(), effective_precision(recipe.train.precision, torch.cuda.is_available())
        )
    from accelerate import Accelerator

    from .rundir import RunLock

    acc = Accelerator(cpu=not torch.cuda.is_available(), log_with=recipe.log.trackers or None, project_dir=str(out))
    # One process writes a run directory: rank 0 locks it for every rank of its launch, before
    # anything in it is read or changed; the other ranks touch nothing until it holds the lock.
    if acc.is_main_process:
        check_writable(out)
    lock = RunLock(out).acquire(create=not resume) if acc.is_main_process else None
    try:
        acc.wait_for_everyone()
        return _train(recipe, out, acc, sink if acc.is_main_process else None, resume, overwrite)
    finally:
        if lock is not None:
            lock.release()


def _train(r: Recipe, out: Path, acc, sink: Reporter | None, resume: bool, overwrite: bool) -> RunResult:
    """run_recipe's part with the run directory locked; `sink` is None on all but the main process."""
    from . import checkpoint as ckpt
    from .loop import Interrupted, Trainer, TrainingDiverged
    from .rundir import prepare_out_dir, recover_overwritten, write_recipe

    main = acc.is_main_process
    if main:
        notes, warnings = recover_overwritten(out)
        if sink is not None:
            for msg in notes:
                sink.note(msg)
            for msg in warnings:
                sink.warn(msg)
    acc.wait_for_everyone()
    if resume:
        _check_resume_recipe(r, out)
    staged = prepare_out_dir(out, resume, overwrite) if main else None
    acc.wait_for_everyone()
    if r.log.trackers:
        acc.init_trackers(r.run.name)
    try:
        try:
            with _sigterm_exits():
                trainer = Trainer(r, out, acc, console=sink, resume=resume)
        except BaseException:
            if staged is not None:  # bad data or tokenizer: put an --overwrite'd run back untouched
                staged.rollback()
            raise
        if staged is not None:
            staged.commit()
            if not resume:
                write_recipe(r, out)
        if resume and trainer.step >= r.train.steps and (out / "final").is_dir():
            if sink is not None:
                sink.note(
                    f"{out} already finished all {r.train.steps} steps; nothing to do "
                    "(raise train.steps in a new run to train longer)"
                )
            return RunResult(out, trainer.step, trainer.state, None, trained=False, main_process=main)
        if sink is not None:
            from ..planning import describe_run

            for w in trainer.data.warnings:
                sink.warn(w)
            plan = describe_run(
                r, vocab_size=trainer.data.vocab_size, layout=trainer.layout, precision=trainer.precision
            )
            sink.show_plan(plan, resumed_at=trainer.step if resume else None)
        final_eval = trainer.run()
    except Interrupted as e:
        raise RunStopped("interrupted", str(e), main) from None
    except TrainingDiverged as e:  # every rank sees the same non-finite global grad norm
        raise RunStopped("diverged", str(e), main) from None
    except ckpt.DiskFull as e:  # rank 0 writes; the launcher stops the other ranks when it exits
        raise RunStopped("disk_full", str(e), True) from None
    except OSError as e:
        if e.errno not in ckpt.DISK_FULL:
            raise
        raise RunStopped(
            "disk_full", f"disk full at {e.filename or out}, {ckpt.intact_checkpoint(out)}", True
        ) from None
    return RunResult(out, trainer.step, trainer.state, final_eval, trained=True, main_process=main)


@contextlib.contextmanager
def _sigterm_exits():
    """Until the trainer installs its own handlers, SIGTERM raises SystemExit(143) instead of ending
    the process on the spot, so a start stopped while it reads its data puts an --overwrite'd run
    back (the rollback above). A SIGKILL cannot be caught: the next start restores that one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    saved = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


# --- checks before anything is written -------------------------------------------------------------


def _check_resume_recipe(recipe: Recipe, out: Path) -> None:
    """--resume continues exactly only with the recipe the run was started with (OUT/recipe.toml)."""
    import tomllib

    from ..recipe import recipe_differences
    from .rundir import resolved_toml

    saved_path = out / "recipe.toml"
    if not saved_path.is_file():
        raise UserError(
            f"--resume: {saved_path} is missing", hint="Resume needs the run directory that pretrain wrote."
        )
    saved = tomllib.loads(saved_path.read_text())
    legacy = "split_seed" not in saved.get("data", {})
    if legacy:  # a run from before data.split_seed: its blocks were held out by run.seed
        data = saved.setdefault("data", {})
        data.setdefault("eval_split", "blocks")
        data["split_seed"] = saved.get("run", {}).get("seed", 0)
    diff = list(recipe_differences(tomllib.loads(resolved_toml(recipe)), saved))
    if diff:
        hint = f"Resume with `raptr pretrain {saved_path} --out {out} --resume` to continue exactly"
        if legacy and "data.split_seed" in diff:
            hint += (
                f", adding --set data.split_seed={saved['data']['split_seed']} (the run predates "
                "data.split_seed: its eval split followed run.seed)"
            )
        raise UserError(
            f"--resume: the recipe differs from the run's {saved_path} in: {', '.join(diff)}", hint=hint + "."
        )


def check_writable(out: Path) -> None:
    """An existing --out must take new files: try to create one (permission bits say nothing for
    root, nor for read-only mounts), before anything is moved or written there."""
    if not out.is_dir():
        return  # a new directory: prepare_out_dir creates it and reports a failure
    probe = out / f".raptr-write-test-{os.getpid()}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"--out {out} is not writable ({e.strerror or e})",
            hint="Point --out at a directory you can write, or fix its permissions.",
        ) from None


def check_memory_fits(recipe: Recipe, layout: dict, precision: str) -> None:
    """Refuse a run whose memory estimate exceeds this process's GPU (or the host's RAM)."""
    from ..planning import check_memory, device_memory, host_memory

    check_memory(recipe, layout, precision, device=device_memory(), host=host_memory())


# accelerate tracker name -> the module it needs
TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def check_trackers(names: list[str]) -> None:
    """Every tracker must be one accelerate knows and whose package is installed."""
    problems = []
    for i, n in enumerate(names):
        if n not in TRACKER_MODULES:
            problems.append(f"log.trackers[{i}] = {n!r}: not an accelerate tracker ({', '.join(TRACKER_MODULES)})")
        elif importlib.util.find_spec(TRACKER_MODULES[n]) is None:
            problems.append(
                f"log.trackers[{i}] = {n!r}: the package {TRACKER_MODULES[n]!r} is not installed "
                f"(pip install {TRACKER_MODULES[n]})"
            )
    if problems:
        raise UserError(
            "log.trackers names trackers that cannot be used:",
            problems=problems,
            hint="Install the package or remove the tracker; metrics.jsonl is always written.",
        )
