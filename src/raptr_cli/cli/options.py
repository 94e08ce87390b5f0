"""Option aliases shared by the commands (one definition, same help everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RecipeArg = Annotated[Path, typer.Argument(help="Recipe TOML file.", metavar="RECIPE.toml")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<run.name>).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="SECTION.KEY=VALUE",
        help="Override a recipe key, typed by the recipe schema; repeatable (--set train.steps=200).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]


def console_for(mode: str):
    from .console import Console

    return Console(mode)
