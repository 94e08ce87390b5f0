"""The run directory's lifecycle: never clobber a run by accident, and never lose one to bad input.

`--overwrite` first *moves* the old run's files into a hidden folder; they are deleted only once the
new run has validated its data and built its model (`commit`), and put back if that fails
(`rollback`). So a typo in `data.train` with `--overwrite` costs nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..recipe import Recipe
from . import checkpoint as ckpt

RUN_MARKERS = ("metrics.jsonl", "checkpoints", "final")
RUN_FILES = (*RUN_MARKERS, "recipe.toml", "tokenizer.json")


class Staged:
    def __init__(self, out: Path, moved: Path | None):
        self.out, self.moved = out, moved

    def commit(self) -> None:
        if self.moved is not None:
            shutil.rmtree(self.moved, ignore_errors=True)
            self.moved = None

    def rollback(self) -> None:
        if self.moved is None:
            return
        for p in self.moved.iterdir():
            dst = self.out / p.name
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            os.replace(p, dst)
        self.moved.rmdir()
        self.moved = None


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> Staged:
    """Check --out for this start mode; with --overwrite, set the old run aside (see module doc)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory", hint="Point --out at a directory (new or a run's).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory ({e.strerror})",
                        hint="Point --out at a writable directory path.") from None
    existing = [m for m in RUN_MARKERS if (out / m).exists()]
    if resume:
        if not ckpt.list_checkpoints(out):
            raise UserError(
                f"--resume: {out} holds no complete checkpoint",
                hint="Start a new run without --resume, or point --out at the run to continue.",
            )
        return Staged(out, None)
    if existing and not overwrite:
        raise UserError(
            f"{out} already holds a run ({', '.join(existing)})",
            hint="Use --resume to continue it, --overwrite to replace it, or --out for a new directory.",
        )
    out.mkdir(parents=True, exist_ok=True)
    moved = None
    present = [m for m in RUN_FILES if (out / m).exists()]
    if present:
        moved = out / f".overwritten-{os.getpid()}"
        moved.mkdir(exist_ok=True)
        for m in present:
            os.replace(out / m, moved / m)
    return Staged(out, moved)


def resolved_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML, with local paths made absolute so it reruns from anywhere."""
    from ..recipe import replace

    def absolute(spec: str) -> str:
        if not spec or ":" in spec.split("/")[0]:  # builtin:..., hf:...
            return spec
        return str(spec if Path(spec).is_absolute() else (recipe.base_dir / spec).resolve())

    data = replace(recipe).data
    import dataclasses

    fixed = replace(recipe,
                    data=dataclasses.replace(data, train=[absolute(s) for s in data.train],
                                             eval=[absolute(s) for s in data.eval]),
                    tokenizer=dataclasses.replace(recipe.tokenizer, path=absolute(recipe.tokenizer.path)))
    return fixed.to_toml()


def write_recipe(recipe: Recipe, out: Path) -> None:
    (out / "recipe.toml").write_text(resolved_toml(recipe))
