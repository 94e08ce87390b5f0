"""`raptr compare`: baseline vs stacking vs RaPTr side by side, at equal FLOPs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt, SetOpt

HELP = """Run recipes one after another on the same data and seed (or read finished runs) and compare
them: relative FLOPs, wall time, tokens/s, final and best full-model eval loss, eval loss at equal
FLOPs, loss jumps at stage switches, the context-free floor (train-split unigram loss at the same
positions) and how far below it each run ends. Writes compare.json, compare.md and loss_vs_flops.png to --out.

\b
Examples:
  raptr compare recipes/bert-tiny-baseline.toml recipes/bert-tiny-raptr.toml --out runs/cmp
  raptr compare recipes/bert-tiny-baseline.toml recipes/bert-tiny-raptr.toml --equal-flops
  raptr compare --runs runs/bert-tiny-baseline runs/bert-tiny-raptr --out runs/cmp
  raptr compare --runs runs/cmp/* --out runs/cmp
  raptr compare --runs runs/s0/* runs/s1/* --out runs/seeds --paired-against bert-tiny-baseline
  raptr compare --runs runs/cmp/bert-tiny-baseline runs/cmp/bert-tiny-raptr --downstream builtin:shakespeare-genre

A finished run in --out is reused only when its recipe.toml is the same resolved recipe (as for
--resume), and an interrupted one continues from its newest checkpoint; runs of one run.name are read as seeds of one recipe. BERT and UL2 runs are refused
together (their losses measure different things) unless --allow-mixed.
"""


def compare(
    recipes: Annotated[
        list[Path] | None,
        typer.Argument(help="Recipes to run (after --runs: more run directories).", metavar="RECIPE.toml..."),
    ] = None,
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--runs", help="Finished run directories to compare instead; takes several (--runs runs/cmp/*) and repeats."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where runs and the comparison land.")] = Path(
        "runs/compare"
    ),
    equal_flops: Annotated[
        bool, typer.Option("--equal-flops", help="Also run the baseline shortened to each method's FLOPs.")
    ] = False,
    allow_mixed: Annotated[
        bool,
        typer.Option(
            "--allow-mixed", help="Tabulate BERT and UL2 runs together although their losses measure different things."
        ),
    ] = False,
    set_: SetOpt = None,
    downstream: Annotated[
        str | None,
        typer.Option(
            "--downstream",
            metavar="TASK",
            help="Also fine-tune every run on TASK "
            "(as raptr finetune, pretrained and from scratch) and add its dev score and pretraining gain.",
        ),
    ] = None,
    paired_against: Annotated[
        str | None,
        typer.Option(
            "--paired-against",
            metavar="RUN_NAME",
            help="Also report each run's final eval loss minus this run.name's, seed by seed (mean +- std, "
            "and in how many seeds it is lower): e.g. the equi-FLOP baseline.",
        ),
    ] = None,
    downstream_seeds: Annotated[
        str, typer.Option("--downstream-seeds", help="Fine-tuning seeds for --downstream.")
    ] = "0,1,2",
    json_out: JsonOpt = False,
) -> None:
    from ..comparison import compare_runs, write_outputs
    from ..errors import UserError

    if runs:  # `--runs A B`: an option takes one value, so the directories after the first arrive here
        runs, recipes = _run_dirs([*runs, *(recipes or [])]), []
    if bool(recipes) == bool(runs):
        raise UserError(
            "give either RECIPE.toml files to run or --runs DIR ... to read", hint="See raptr compare --help."
        )
    if out.exists() and not out.is_dir():  # before any training: the comparison could not be written
        raise UserError(
            f"--out {out} is a file, not a directory",
            hint="Point --out at a directory (new, or one that compare wrote).",
        )
    if runs:
        dirs = list(runs)
    else:
        dirs = _run_all(list(recipes), out, set_ or [], equal_flops, quiet=json_out, allow_mixed=allow_mixed)
    result = compare_runs(dirs, allow_mixed=allow_mixed, paired_against=paired_against)
    if downstream:
        from ..finetune import downstream as ds
        from .finetune_cmd import _Bar, _seeds

        with _Bar() as bar:
            ds.add_downstream(result, dirs, downstream, _seeds(downstream_seeds), bar.start)
    try:
        files = write_outputs(result, out)
        if downstream:  # its own table, appended: the main table's columns stay as they are
            with open(out / "compare.md", "a") as f:
                f.write("\n".join(ds.markdown(result)) + "\n")
    except OSError as e:
        raise UserError(
            f"--out {out}: cannot write the comparison ({e.strerror}: {e.filename})",
            hint="Point --out at a writable directory.",
        ) from None
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_table(result)
    if downstream:
        typer.echo("\n".join(ds.markdown(result)[1:]))
    typer.echo("wrote " + ", ".join(str(f) for f in files))


# what compare writes next to the runs in --out: `--runs runs/cmp/*` expands to these too
_OUTPUTS = ("compare.json", "compare.md", "loss_vs_flops.png")


def _run_dirs(args: list[Path]) -> list[Path]:
    """The values of `--runs` and the positional arguments that follow it: run directories (compare's
    own output files, which `--runs runs/cmp/*` picks up, are skipped); a recipe or any other file is
    an error."""
    from ..errors import UserError

    dirs = []
    for a in args:
        if a.is_dir():
            dirs.append(a)
        elif a.is_file() and a.name in _OUTPUTS:
            continue
        elif a.suffix == ".toml":
            raise UserError(
                f"{a}: give either RECIPE.toml files to run or --runs DIR ... to read, not both",
                hint="See raptr compare --help.",
            )
        else:
            raise UserError(
                f"--runs {a}: {'not a directory' if a.exists() else 'no such run directory'}",
                hint="Pass run directories written by `raptr pretrain` (or by compare in its --out).",
            )
    return dirs


def _print_table(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"eval loss at equal FLOPs read at {result['equal_flops']:.3e} FLOPs (the smallest run's total)",
        title_justify="left",
    )
    for col in (
        "run",
        "method",
        "schedule",
        "rel. FLOPs",
        "wall s",
        "tok/s",
        "final eval",
        "best eval",
        "eval @ equal FLOPs",
        "switch jumps",
        "unigram floor",
        "below floor",
    ):
        t.add_column(col, justify="left" if col in ("run", "method", "schedule") else "right")
    f4 = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in result["runs"]:
        t.add_row(
            r["name"],
            r["method"],
            r["schedule"],
            f"{r['relative_flops']:.3f}",
            f"{r['wall_s']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f4(r["final_eval_loss"]),
            f4(r["best_eval_loss"]),
            f4(r["eval_loss_at_equal_flops"]),
            " ".join(f"{j:+.3f}" for j in r["transition_jumps"]) or "-",
            f4(r.get("unigram_loss")),
            f4(r.get("loss_below_unigram")),
        )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(t)
    if "by_name" in result:
        from ..comparison import AGGREGATED, spread

        g_t = Table(title="mean over seeds +- sample std (min - max)", title_justify="left")
        for col in (
            "run",
            "method",
            "schedule",
            "seeds",
            "rel. FLOPs",
            "final eval",
            "best eval",
            "eval @ equal FLOPs",
            "below floor",
        ):
            g_t.add_column(col, justify="left" if col in ("run", "method", "schedule", "seeds") else "right")
        for g in result["by_name"]:
            g_t.add_row(
                g["name"],
                g["method"],
                g["schedule"],
                ", ".join(map(str, g["seeds"])),
                *(spread(g[k], 3 if k == "relative_flops" else 4) for k in AGGREGATED),
            )
        console.print(g_t)
    if result.get("paired"):
        p_t = Table(
            title=f"final eval loss minus {result['paired'][0]['against']}'s, seed by seed (negative: lower)",
            title_justify="left",
        )
        for col in ("run", "per seed", "mean +- std", "lower in"):
            p_t.add_column(col, justify="left" if col in ("run", "per seed") else "right")
        for p in result["paired"]:
            p_t.add_row(
                p["name"],
                ", ".join(f"{s}: {d:+.4f}" for s, d in zip(p["seeds"], p["diffs"])),
                f"{p['mean']:+.4f} +- {p['std']:.4f}",
                f"{p['lower_in']} of {len(p['seeds'])}",
            )
        console.print(p_t)


def _run_all(
    recipes: list[Path], out: Path, sets: list[str], equal_flops: bool, quiet: bool, allow_mixed: bool = False
) -> list[Path]:
    from ..budget import solve_steps
    from ..comparison import refuse_mixed_objectives
    from ..errors import UserError
    from ..planning import describe_run
    from ..recipe import load_recipe
    from ..schedule import is_full_model
    from .pretrain_cmd import run_console, train_and_report

    loaded = [(p, load_recipe(p, sets)) for p in recipes]  # validate every recipe before any training
    if not allow_mixed:
        refuse_mixed_objectives({str(p): r.model.arch for p, r in loaded})
    jobs = [(p, r, list(sets), str(p)) for p, r in loaded]  # (file, resolved recipe, --set, what to call it)
    if equal_flops:
        base = next(((p, r) for p, r in loaded if is_full_model(r.schedule.method)), None)
        if base is None:
            raise UserError(
                "--equal-flops needs a baseline recipe among the recipes",
                hint='Add recipes/bert-tiny-baseline.toml (schedule.method = "baseline").',
            )
        base_plan = describe_run(base[1])
        for p, r in loaded:
            if is_full_model(r.schedule.method):
                continue
            steps = solve_steps(base_plan["total_flops"], base_plan["steps"], describe_run(r)["total_flops"])
            name = f"{base[1].run.name}-equiflop-{r.run.name}"
            job_sets = [*sets, f"train.steps={steps}", f"run.name={name}"]
            jobs.append((base[0], load_recipe(base[0], job_sets), job_sets, f"{base[0]} shortened to the FLOPs of {p}"))
    named: dict[str, str] = {}
    for _, r, _, label in jobs:  # each run lands in OUT/<run.name>: two of one name would share it
        if r.run.name in named:
            raise UserError(
                f"two recipes would write the same run directory {out / r.run.name}: "
                f"{named[r.run.name]} and {label} both have run.name = {r.run.name!r}",
                hint="Give each recipe its own run.name.",
            )
        named[r.run.name] = label
    # decide every job's directory before training any: a refusal then costs no training
    todo = [(p, out / r.run.name, job_sets, _reusable(p, r, out / r.run.name)) for p, r, job_sets, _ in jobs]
    dirs = []
    for path, run_dir, job_sets, reuse in todo:
        if reuse != "finished":
            r = load_recipe(path, [*job_sets, *(["log.console=none"] if quiet else [])])
            resume = reuse == "partial"  # an interrupted run of this recipe continues from its checkpoint
            train_and_report(r, run_dir, run_console(r)[0], resume=resume, overwrite=not resume)
        dirs.append(run_dir)
    return dirs


def _reusable(path: Path, recipe, run_dir: Path) -> str:
    """ "finished" when run_dir holds this recipe's finished run (reused: delete the folder to rerun it),
    "partial" when it holds an interrupted run of it with a checkpoint (resumed exactly, as --resume),
    "" when there is nothing to keep there (trained from scratch). A run of another recipe is refused,
    finished or not: the same rule as `--resume` (recipe_differences)."""
    import tomllib

    from ..errors import UserError
    from ..recipe import recipe_differences
    from ..train.checkpoint import list_checkpoints
    from ..train.rundir import RUN_MARKERS, resolved_toml

    saved = run_dir / "recipe.toml"
    if not saved.is_file():
        held = [m for m in RUN_MARKERS if (run_dir / m).exists()]
        if held:
            raise UserError(
                f"{run_dir} holds run files ({', '.join(held)}) but no recipe.toml, so it cannot be "
                f"told apart from another recipe's run: {path} would overwrite it",
                hint=f"Move {run_dir} away (or delete it), or compare into another --out.",
            )
        return ""
    try:
        theirs = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{saved} is not a readable recipe ({e}), so {run_dir} cannot be reused or replaced safely",
            hint=f"Move {run_dir} away (or delete it), or compare into another --out.",
        ) from None
    diff = recipe_differences(tomllib.loads(resolved_toml(recipe)), theirs)
    if diff:
        raise UserError(
            f"{run_dir} holds a run of another recipe: {path} differs from {saved} in: "
            + ", ".join(f"{k} ({a!r} here, {b!r} there)" for k, (a, b) in diff.items()),
            hint=f"Give {path} its own run.name, compare into another --out, or delete {run_dir} to rerun it.",
        )
    if (run_dir / "final").is_dir():
        return "finished"
    return "partial" if list_checkpoints(run_dir) else ""
