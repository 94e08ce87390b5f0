"""The one error boundary: UserError -> short message naming the key/file and the fix, exit 2."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import typer

from ..errors import UserError


def report_user_error(e: UserError) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]error:[/] {escape(e.message)}")  # escape: a glob like [a-z]* is not markup
    for p in e.problems:
        err.print(f"  - {p}", markup=False)
    if e.hint:
        err.print(f"[dim]hint:[/] {escape(e.hint)}")


def guarded(fn: Callable) -> Callable:
    """Wrap a command: UserError -> message + exit 2; traceback only with RAPTR_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("RAPTR_DEBUG"):
                raise
            report_user_error(e)
            raise typer.Exit(2) from None

    return wrapper
