"""`raptr eval RUN_DIR`: score the final model or any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt

HELP = """Score a run's final model (or a checkpoint): full-model MLM loss, perplexity and accuracy,
the context-free floor (the run's train-split unigram loss at the same positions) and how far below
it the model is, and with --path-lengths the mean loss of random k-layer paths (fixed layers on).

\b
Examples:
  raptr eval runs/demo
  raptr eval runs/demo/checkpoints/step-0000100 --json
  raptr eval runs/demo --path-lengths 6,8,10,12
  raptr eval runs/demo --data 'texts/*.txt'
"""


def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint directory.", metavar="RUN_DIR")],
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="Score on these files/globs instead of the run's eval split; repeatable."),
    ] = None,
    path_lengths: Annotated[
        str | None, typer.Option("--path-lengths", help="Comma-separated k values, e.g. 6,8,10,12.")
    ] = None,
    n_paths: Annotated[int, typer.Option("--paths", help="Random paths averaged per path length.")] = 4,
    batches: Annotated[
        int | None, typer.Option("--batches", help="Eval batches (default: the recipe's train.eval_batches).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    from ..errors import UserError
    from ..evaluation import run_eval

    ks: list[int] = []
    if path_lengths:
        try:
            ks = [int(x) for x in path_lengths.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--path-lengths {path_lengths!r}: expected integers like 6,8,10,12") from None
    if n_paths < 1:
        raise UserError(f"--paths {n_paths}: must be >= 1")
    if data:
        data = [str(Path(d).resolve()) if not d.startswith(("builtin:", "hf:")) else d for d in data]
    res = run_eval(run, data, ks, n_paths, batches)
    if res.get("warnings"):  # on stderr: stdout stays one JSON document with --json
        from rich.console import Console as Err
        from rich.markup import escape

        for w in res["warnings"]:
            Err(stderr=True, highlight=False, soft_wrap=True).print(f"[yellow]warning:[/] {escape(w)}")
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(
        f"{res['checkpoint']}: eval loss [bold]{res['eval_loss']:.4f}[/], perplexity {res['perplexity']:.2f}, "
        f"MLM accuracy {res['accuracy']:.3f} over {res['tokens']} predicted tokens"
    )
    if res.get("unigram_loss") is not None:
        # the context-free floor (floor.py): the run's train-split unigram at the same positions
        where = (
            f"the same {res['unigram_tokens']} positions"
            if "eval_loss_at_unigram_positions" not in res
            else f"the {res['unigram_tokens']} text targets (model {res['eval_loss_at_unigram_positions']:.4f} there)"
        )
        below = res["loss_below_unigram"]
        c.print(
            f"context-free floor (train-split unigram) {res['unigram_loss']:.4f} at {where}: "
            f"[bold]{abs(below):.4f}[/] nats {'below' if below >= 0 else 'above'} it",
            soft_wrap=True,
        )
    if "by_path_length" in res:
        t = Table(
            title=f"loss by path length (mean of {res['paths_per_length']} random paths, fixed layers on)",
            title_justify="left",
        )
        t.add_column("path length", justify="right")
        t.add_column("eval loss", justify="right")
        t.add_column("gap to full", justify="right")
        for k, v in res["by_path_length"].items():
            t.add_row(k, f"{v:.4f}", f"{v - res['eval_loss']:+.4f}")
        c.print(t)
