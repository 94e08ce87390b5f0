"""`raptr recipe show`: the resolved recipe with every default filled in."""

from __future__ import annotations

from typing import Annotated

import typer

from .boundary import guarded
from .options import RecipeArg, SetOpt

app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)


@app.command(
    "show",
    help="Print the resolved recipe (file + --set + defaults) as TOML, each key with its "
    "documentation as a comment (unset keys commented out).\n\n"
    "Example: raptr recipe show recipes/bert-tiny-raptr.toml --set train.steps=50",
)
@guarded
def show(
    recipe: RecipeArg,
    set_: SetOpt = None,
    no_docs: Annotated[bool, typer.Option("--no-docs", help="Print the bare TOML, without the comments.")] = False,
) -> None:
    from ..recipe import load_recipe

    typer.echo(load_recipe(recipe, set_ or []).to_toml(docs=not no_docs))
