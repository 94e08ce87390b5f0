"""`raptr analyze stability|polynomial`: the paper's two analyses, runnable (docs/analyses.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from .boundary import guarded
from .options import JsonOpt

app = typer.Typer(
    help="The paper's analyses: stability across depth, the polynomial toy (docs/analyses.md).", no_args_is_help=True
)

STABILITY_HELP = """Stability of trained runs: full-model loss, mean loss of random paths of L-1, L-2, ...
blocks (fixed layers on; the same paths as `raptr eval --path-lengths`), the gap, and the loss jumps
at the run's stage switches beside the gap the model had there. With --sweep, first trains tiny
RaPTr BERTs (post-LN, pre-LN, no LayerNorm, post-LN without residuals) at each depth and writes
stability.json, stability.md and stability.png (gap vs L, log-log, 1/sqrt(L) slope) into --out.

\b
Examples:
  raptr analyze stability runs/demo
  raptr analyze stability runs/cmp/* --json
  raptr analyze stability --sweep depth=4,8,16 --out runs/stability
  raptr analyze stability --sweep depth=4,8,16,24 --variants pre,none --steps 300
"""

POLY_HELP = """The polynomial toy: a staircase of parities of degree 1..D on the Boolean cube, learned by a
small residual MLP with the full network (baseline), growing random paths (raptr), the same stages
reversed (shrink) and progressive layer dropping (pld), all at equal FLOPs. Reports each degree's
share of the population error (exact: the shares add up to the total) over training, and writes
polynomial.json, polynomial.md and polynomial.png into --out.

\b
Examples:
  raptr analyze polynomial
  raptr analyze polynomial --seeds 0,1,2 --out runs/poly --json
"""


def _ints(flag: str, text: str, minimum: int = 0) -> list[int]:
    from ..errors import UserError

    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < minimum or len(set(vals)) != len(vals):
        raise UserError(
            f"{flag} {text!r}: expected distinct integers >= {minimum}, comma-separated",
            hint=f"For example {flag} 0,1.",
        )
    return vals


@app.command("stability", help=STABILITY_HELP)
@guarded
def stability(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories (or checkpoints).", metavar="RUN...")
    ] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Train tiny models first: depth=4,8,16.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Sweep directory (default runs/stability).")] = None,
    variants: Annotated[
        str, typer.Option("--variants", help="Sweep variants: post, pre, none, post-nores.")
    ] = "post,pre,none,post-nores",
    steps: Annotated[int, typer.Option("--steps", help="Sweep: training steps per model.")] = 150,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", help="Sweep: train on these files/globs or builtin:shakespeare (default: a generated corpus)."
        ),
    ] = None,
    drops: Annotated[str, typer.Option("--drops", help="Path lengths L-d to score, as d values.")] = "1,2",
    n_paths: Annotated[int, typer.Option("--paths", help="Random paths averaged per path length.")] = 4,
    batches: Annotated[int | None, typer.Option("--batches", help="Eval batches (default: the recipe's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    from ..analysis.stability import analyze_run, parse_sweep, sweep_recipes, sweep_table, write_sweep
    from ..errors import UserError

    ds = _ints("--drops", drops, minimum=1)
    if n_paths < 1:
        raise UserError(f"--paths {n_paths}: must be >= 1")
    if sweep is None and not runs:
        raise UserError("give run directories or --sweep depth=...", hint="See raptr analyze stability --help.")
    if sweep is not None and runs:
        raise UserError("give either run directories or --sweep, not both", hint="See raptr analyze stability --help.")
    for r in runs or []:
        if not r.is_dir():
            raise UserError(f"{r}: no such run directory", hint="Pass directories written by `raptr pretrain`.")
    say = (lambda msg: typer.echo(msg, err=True)) if json_out else typer.echo
    if sweep is None:
        results = [analyze_run(r, ds, n_paths, batches) for r in runs]
    else:
        depths = parse_sweep(sweep)
        out = out or Path("runs/stability")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file", hint="Point --out at a directory.")
        vs = [v.strip() for v in variants.split(",") if v.strip()]
        data = [str(Path(d).resolve()) if not d.startswith(("builtin:", "hf:")) else d for d in data] if data else None
        jobs = sweep_recipes(out, depths, vs, steps, data)
        import torch

        # 32-wide matmuls gain nothing from a second thread, and OpenMP spin-waiting on a busy
        # 2-core machine made these runs several times slower (as tests/conftest.py notes)
        torch.set_num_threads(1)
        results = []
        for job in jobs:
            run_dir = out / job["name"]
            _train(job["recipe"], run_dir, say)
            results.append({"variant": job["variant"], **analyze_run(run_dir, ds, n_paths, batches)})
        files = write_sweep(results, out)
    if json_out:
        typer.echo(json.dumps({"runs": results}, indent=2))
        return
    _print(*sweep_table(results), "stability gap (gap = loss of random (L-1)-block paths minus full-model loss)")
    if sweep is not None:
        say("wrote " + ", ".join(str(f) for f in files))


def _train(recipe: Path, run_dir: Path, say) -> None:
    """Train one sweep model as `raptr pretrain` does (train_and_report), reusing a finished run of the same recipe."""
    from ..recipe import load_recipe
    from .compare_cmd import _reusable
    from .pretrain_cmd import run_console, train_and_report

    r = load_recipe(recipe)
    reuse = _reusable(recipe, r, run_dir)
    if reuse == "finished":
        say(f"reusing {run_dir} (delete it to retrain)")
        return
    t = time.perf_counter()
    resume = reuse == "partial"  # continue an interrupted sweep model from its checkpoint
    train_and_report(r, run_dir, run_console(r)[0], resume=resume, overwrite=not resume)
    say(f"trained {run_dir} in {time.perf_counter() - t:.1f} s")


@app.command("polynomial", help=POLY_HELP)
@guarded
def polynomial(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default runs/polynomial).")] = None,
    seeds: Annotated[
        str, typer.Option("--seeds", help="Comma-separated seeds (paired: same init and data per seed).")
    ] = "0,1",
    steps: Annotated[
        int, typer.Option("--steps", help="Steps of the subnetwork methods (the baseline gets equal FLOPs).")
    ] = 400,
    degree: Annotated[int, typer.Option("--degree", help="Highest degree D of the target.")] = 6,
    json_out: JsonOpt = False,
) -> None:
    from ..analysis.polynomial import ToyConfig, run_polynomial, table, write_outputs
    from ..errors import UserError

    seed_list = _ints("--seeds", seeds)
    out = out or Path("runs/polynomial")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", hint="Point --out at a directory.")
    say = (lambda msg: typer.echo(msg, err=True)) if json_out else typer.echo
    cfg = ToyConfig(steps=steps, degree=degree)
    import torch

    torch.set_num_threads(1)  # a 64-wide MLP gains nothing from threads; spin-waiting costs (see --sweep)
    result = run_polynomial(
        cfg,
        seed_list,
        progress=lambda r: say(
            f"{r['method']:>8} seed {r['seed']}: {r['steps']} steps, final MSE {r['curve'][-1]['total']:.4f} ({r['wall_s']:.1f} s)"
        ),
    )
    files = write_outputs(result, out)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    _print(*table(result), f"polynomial toy, final population MSE by degree (mean of seeds {seed_list}; equal FLOPs)")
    say("wrote " + ", ".join(str(f) for f in files))


def _print(header: list[str], rows: list[list[str]], title: str) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 or h.startswith(("switch", "degrees")) else "right")
    for r in rows:
        t.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 200).print(t)
