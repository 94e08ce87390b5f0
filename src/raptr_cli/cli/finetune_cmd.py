"""`raptr finetune RUN_OR_CHECKPOINT --task TASK`: downstream scores of a pretrained model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt


def _help() -> str:
    from ..config import field_docs
    from ..finetune.config import FinetuneConfig

    keys = "\n".join(f"  {k}: {' '.join(v.split())}" for k, v in field_docs(FinetuneConfig).items())
    task = (
        "TASK: train=PATH,dev=PATH (GLUE-format .tsv with a header: sentence or sentence1/sentence2, "
        "and label; or .csv/.jsonl with those columns), a directory with train.* and dev.*, a built-in "
        "task (builtin:shakespeare-genre: passage -> comedy/history/tragedy, 1792 train / 576 dev "
        "examples from held-out plays, chance 33.3%), or a hub dataset when online (glue/rte, "
        "owner/name[:config])."
    )
    return f"""Fine-tune a run's model (final/ or any checkpoint) on a classification or regression
task and report dev accuracy, macro-F1 and MCC (Pearson/Spearman for regression) per seed and
mean +- std. --from-scratch also fine-tunes the same architecture from random init and reports
the pretraining gain (pretrained minus scratch). Results: OUT/finetune.json (default OUT:
RUN/finetune/TASK/final or .../step-N).

{task}

\b
Examples:
  raptr finetune runs/demo --task builtin:shakespeare-genre
  raptr finetune runs/demo --task builtin:shakespeare-genre --seeds 0 --from-scratch
  raptr finetune runs/demo/checkpoints/step-0000100 --task builtin:shakespeare-genre --json
  raptr finetune runs/demo --task train=rte/train.tsv,dev=rte/dev.tsv --set finetune.max_steps=0
  raptr finetune runs/demo --task glue/sst2 --set finetune.lr=5e-5 --set finetune.early_stop=2

\b
Settings (--set finetune.KEY=VALUE):
{keys}
"""


HELP = _help()


def _seeds(text: str) -> list[int]:
    from ..errors import UserError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected integers like 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text!r}: give distinct non-negative integers, e.g. 0,1,2")
    return seeds


def finetune(
    target: Annotated[
        Path, typer.Argument(help="Run directory (final/) or checkpoint directory.", metavar="RUN_OR_CHECKPOINT")
    ],
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            help="train=PATH,dev=PATH, a task directory, builtin:shakespeare-genre, or a hub name (glue/rte).",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default: RUN/finetune/TASK/<final|step-N>).")
    ] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Fine-tuning seeds, comma-separated.")] = "0,1,2",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", metavar="finetune.KEY=VALUE", help="Override a fine-tuning setting; repeatable."),
    ] = None,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="Also fine-tune the same architecture from random init, and report the pretraining gain.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    from ..finetune.config import load_finetune_config
    from ..finetune.tasks import load_task

    seed_list = _seeds(seeds)
    cfg = load_finetune_config(overrides or [])
    t = load_task(task, cfg)  # every task check runs before the model is loaded or trained
    from rich.console import Console

    from ..finetune.run import run_finetune

    with _Bar() as bar:
        doc = run_finetune(target, t, cfg, seed_list, from_scratch, out, bar.start)
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
        return
    _report(Console(highlight=False, width=None if sys.stdout.isatty() else 120), doc)


class _Bar:
    """One rich progress bar per (init, seed) on stderr, with the latest loss and dev score."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = console or Console(stderr=True, highlight=False, soft_wrap=True)  # stdout stays for --json

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, label: str, total: int):
        task = self.progress.add_task(label, total=total, info="")
        dev = [""]

        def update(step: int, _total: int, info: dict) -> None:
            if "accuracy" in info or "pearson" in info:
                m = "accuracy" if "accuracy" in info else "pearson"
                dev[0] = f" dev {m} {info[m]:.3f}"
            self.progress.update(task, completed=step, info=f"loss {info['loss']:.3f}{dev[0]}")

        return update


def _report(c, doc: dict) -> None:
    from rich.table import Table

    t = doc["task"]
    names = doc["metrics"]
    head = f"{t['name']}: {t['kind']}, {t['train_examples']} train / {t['dev_examples']} dev examples"
    if "chance" in t:
        head += f", chance {t['chance']['accuracy']:.3f} (majority class {t['chance']['majority_class']!r})"
    c.print(head)
    table = Table(title=f"{doc['checkpoint']}: dev scores", title_justify="left")
    for col in ("init", "seed", *names, "steps", "time"):
        table.add_column(col, justify="left" if col == "init" else "right")
    for init in (i for i in ("pretrained", "scratch") if i in doc):
        for r in doc[init]["runs"]:
            steps = str(r["steps"]) if r["best_step"] == r["steps"] else f"{r['best_step']}/{r['steps']}"
            table.add_row(init, str(r["seed"]), *(f"{r[m]:.3f}" for m in names), steps, f"{r['seconds']:.0f} s")
        agg = doc[init]
        table.add_row(
            f"[bold]{init}[/]",
            "mean",
            *(f"[bold]{agg['mean'][m]:.3f}[/] ± {agg['std'][m]:.3f}" for m in names),
            "",
            "",
            end_section=True,
        )
    if "gain" in doc:
        table.add_row("[bold]pretraining gain[/]", "", *(f"[bold]{doc['gain'][m]:+.3f}[/]" for m in names), "", "")
    c.print(table)
    c.print(f"wrote {doc['out']}/finetune.json ({doc['seconds']:.0f} s on {doc['device']})")
