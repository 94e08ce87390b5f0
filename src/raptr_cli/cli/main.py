"""`raptr`: the typer app and its one error boundary.

Commands live one per module; this file only wires them. torch is never imported here, so
`raptr --help` stays fast; each command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import UserError
from .boundary import guarded, report_user_error

HELP = """Efficient LM pretraining by progressive subnetwork training (RaPTr).

\b
Examples:
  raptr data fetch shakespeare                      # cache the demo corpus
  raptr pretrain recipes/bert-tiny-raptr.toml       # train; outputs in runs/<name>
  raptr pretrain recipes/bert-tiny-raptr.toml --dry-run --set train.steps=2000
  raptr flops recipes/bert-base-raptr.toml          # FLOPs and savings of a schedule
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from . import (
        analyze_cmd,
        compare_cmd,
        data_cmd,
        eval_cmd,
        export_cmd,
        finetune_cmd,
        flops_cmd,
        pretrain_cmd,
        recipe_cmd,
    )

    app.command("pretrain", help=pretrain_cmd.HELP, no_args_is_help=True)(guarded(pretrain_cmd.pretrain))
    app.add_typer(data_cmd.app, name="data")
    app.add_typer(recipe_cmd.app, name="recipe")
    app.add_typer(analyze_cmd.app, name="analyze")
    app.command("eval", help=eval_cmd.HELP, no_args_is_help=True)(guarded(eval_cmd.eval_))
    app.command("compare", help=compare_cmd.HELP, no_args_is_help=True)(guarded(compare_cmd.compare))
    app.command("export", help=export_cmd.HELP, no_args_is_help=True)(guarded(export_cmd.export))
    app.command("flops", help=flops_cmd.HELP, no_args_is_help=True)(guarded(flops_cmd.flops))
    app.command("finetune", help=finetune_cmd.HELP, no_args_is_help=True)(guarded(finetune_cmd.finetune))


_register()


def main() -> None:
    try:
        app()
    except UserError as e:  # raised outside a command body (option parsing callbacks)
        if os.environ.get("RAPTR_DEBUG"):
            raise
        report_user_error(e)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
