"""`raptr compare`: baseline vs stacking vs RaPTr side by side, at equal FLOPs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOpt, SetOpt

HELP = """Run recipes one after another on the same data and seed (or read finished runs) and compare
them: relative FLOPs, wall time, tokens/s, final and best full-model eval loss, eval loss at equal
FLOPs, loss jumps at stage switches. Writes compare.json, compare.md and loss_vs_flops.png to --out.

\b
Examples:
  raptr compare recipes/bert-tiny-baseline.toml recipes/bert-tiny-raptr.toml --out runs/cmp
  raptr compare recipes/bert-tiny-baseline.toml recipes/bert-tiny-raptr.toml --equal-flops
  raptr compare --runs runs/bert-tiny-baseline runs/bert-tiny-raptr --out runs/cmp
  raptr compare --runs runs/cmp/bert-tiny-baseline runs/cmp/bert-tiny-raptr --downstream builtin:shakespeare-genre
"""


def compare(
    recipes: Annotated[Optional[list[Path]], typer.Argument(help="Recipes to run.", metavar="RECIPE.toml...")] = None,
    runs: Annotated[Optional[list[Path]], typer.Option("--runs", help="Finished run directories to compare instead; repeatable.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where runs and the comparison land.")] = Path("runs/compare"),
    equal_flops: Annotated[bool, typer.Option("--equal-flops", help="Also run the baseline shortened to each method's FLOPs.")] = False,
    set_: SetOpt = None,
    downstream: Annotated[Optional[str], typer.Option("--downstream", metavar="TASK", help="Also fine-tune every run on TASK "
                          "(as raptr finetune, pretrained and from scratch) and add its dev score and pretraining gain.")] = None,
    downstream_seeds: Annotated[str, typer.Option("--downstream-seeds", help="Fine-tuning seeds for --downstream.")] = "0,1,2",
    json_out: JsonOpt = False,
) -> None:
    from ..comparison import compare_runs, write_outputs
    from ..errors import UserError

    if bool(recipes) == bool(runs):
        raise UserError("give either RECIPE.toml files to run or --runs DIR ... to read", hint="See raptr compare --help.")
    if runs:
        dirs = list(runs)
    else:
        dirs = _run_all(list(recipes), out, set_ or [], equal_flops, quiet=json_out)
    result = compare_runs(dirs)
    if downstream:
        from ..finetune import downstream as ds
        from .finetune_cmd import _Bar, _seeds

        with _Bar() as bar:
            ds.add_downstream(result, dirs, downstream, _seeds(downstream_seeds), bar.start)
    files = write_outputs(result, out)
    if downstream:  # its own table, appended: the main table's columns stay as they are
        with open(out / "compare.md", "a") as f:
            f.write("\n".join(ds.markdown(result)) + "\n")
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_table(result)
    if downstream:
        typer.echo("\n".join(ds.markdown(result)[1:]))
    typer.echo("wrote " + ", ".join(str(f) for f in files))


def _print_table(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"eval loss at equal FLOPs read at {result['equal_flops']:.3e} FLOPs (the smallest run's total)",
              title_justify="left")
    for col in ("run", "method", "schedule", "rel. FLOPs", "wall s", "tok/s", "final eval", "best eval",
                "eval @ equal FLOPs", "switch jumps"):
        t.add_column(col, justify="left" if col in ("run", "method", "schedule") else "right")
    f4 = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in result["runs"]:
        t.add_row(r["name"], r["method"], r["schedule"], f"{r['relative_flops']:.3f}", f"{r['wall_s']:.1f}",
                  f"{r['tokens_per_s']:,.0f}", f4(r["final_eval_loss"]), f4(r["best_eval_loss"]),
                  f4(r["eval_loss_at_equal_flops"]), " ".join(f"{j:+.3f}" for j in r["transition_jumps"]) or "-")
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(t)
    if "by_name" in result:
        from ..comparison import AGGREGATED, spread

        g_t = Table(title="mean over seeds (min - max)", title_justify="left")
        for col in ("run", "method", "schedule", "seeds", "rel. FLOPs", "final eval", "best eval", "eval @ equal FLOPs"):
            g_t.add_column(col, justify="left" if col in ("run", "method", "schedule", "seeds") else "right")
        for g in result["by_name"]:
            g_t.add_row(g["name"], g["method"], g["schedule"], ", ".join(map(str, g["seeds"])),
                        *(spread(g[k], 3 if k == "relative_flops" else 4) for k in AGGREGATED))
        console.print(g_t)


def _run_all(recipes: list[Path], out: Path, sets: list[str], equal_flops: bool, quiet: bool) -> list[Path]:
    from ..budget import solve_steps
    from ..errors import UserError
    from ..planning import describe_run
    from ..recipe import load_recipe
    from .pretrain_cmd import pretrain

    loaded = [(p, load_recipe(p, sets)) for p in recipes]  # validate every recipe before any training
    jobs = [(p, r.run.name, list(sets)) for p, r in loaded]
    if equal_flops:
        base = next(((p, r) for p, r in loaded if r.schedule.method == "baseline"), None)
        if base is None:
            raise UserError("--equal-flops needs a baseline recipe among the recipes",
                            hint="Add recipes/bert-tiny-baseline.toml (schedule.method = \"baseline\").")
        base_plan = describe_run(base[1])
        for p, r in loaded:
            if r.schedule.method == "baseline":
                continue
            steps = solve_steps(base_plan["total_flops"], base_plan["steps"], describe_run(r)["total_flops"])
            name = f"{base[1].run.name}-equiflop-{r.run.name}"
            jobs.append((base[0], name, [*sets, f"train.steps={steps}", f"run.name={name}"]))
    dirs = []
    for path, name, job_sets in jobs:
        run_dir = out / name
        if (run_dir / "final").is_dir():  # finished earlier: reuse (delete the folder to rerun)
            dirs.append(run_dir)
            continue
        console = ["log.console=none"] if quiet else []
        pretrain(path, out=run_dir, set_=[*job_sets, *console], resume=False, overwrite=True,
                 dry_run=False, json_out=False)
        dirs.append(run_dir)
    return dirs
