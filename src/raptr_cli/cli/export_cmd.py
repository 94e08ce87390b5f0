"""`raptr export RUN_DIR --to hf OUT_DIR`: hand a trained model to Hugging Face transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt

HELP = """Export a run's final model (or a checkpoint) to a directory that Hugging Face transformers
loads offline: BERT runs as BertForMaskedLM (AutoModelForMaskedLM), UL2 runs as LlamaForCausalLM
(AutoModelForCausalLM; same logits as raptr for fully causal input, as Llama has no prefix-LM
mask). The tokenizer goes along (AutoTokenizer). Pre-LN BERT models cannot be exported.

\b
Examples:
  raptr export runs/demo --to hf runs/demo-hf
  raptr export runs/demo/checkpoints/step-0000100 runs/demo-step100-hf
  raptr export runs/demo runs/demo-hf --overwrite --json
"""


def export(
    run: Annotated[Path, typer.Argument(help="Run directory or checkpoint directory.", metavar="RUN_DIR")],
    out: Annotated[
        Path,
        typer.Argument(help="Directory to create (must be empty or absent unless --overwrite).", metavar="OUT_DIR"),
    ],
    to: Annotated[str, typer.Option("--to", help="Export format; only 'hf' (transformers) for now.")] = "hf",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT_DIR.")] = False,
    json_out: JsonOpt = False,
) -> None:
    from ..errors import UserError
    from ..export import TARGETS, export_hf, hf_loader

    if to not in TARGETS:
        raise UserError(f"--to {to!r} is not a known export format", hint=f"Choose one of: {', '.join(TARGETS)}.")
    path = export_hf(run, out, overwrite=overwrite)
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    loader = hf_loader(arch)
    if json_out:
        typer.echo(
            json.dumps(
                {"out": str(path), "format": to, "architecture": arch, "files": sorted(p.name for p in path.iterdir())},
                indent=2,
            )
        )
        return
    from rich.console import Console

    c = Console(highlight=False)
    c.print(f"exported [bold]{arch}[/] to {path}")
    c.print(
        f"  load with: transformers.{loader}.from_pretrained({str(path)!r}) and "
        f"AutoTokenizer.from_pretrained({str(path)!r})",
        markup=False,
        soft_wrap=True,
    )
