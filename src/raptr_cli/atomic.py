"""Write a directory so that, under its real name, it is always complete.

Checkpoints, a run's final/ and an HF export are all written the same way: into a hidden sibling,
fsynced, then renamed into place. A kill mid-write leaves only the hidden sibling (which its writer
clears on the next start), never a half-written directory under the real name; an existing target
is renamed aside before the new one takes its name, and deleted only after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

Translate = Callable[[BaseException, Path], "BaseException | None"]
"""Called with a failed write's exception and its temporary directory, while the partial copy still
takes its space on disk: returns the exception to raise instead, or None to raise the original."""


def _fsync_dir(path: Path, files: bool = True) -> None:
    """fsync every file directly in `path` (unless not `files`), then `path` itself (its entries)."""
    for f in path.iterdir() if files else ():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: Path, tmp: Path, translate: Translate | None = None) -> Iterator[Path]:
    """Yield the empty directory `tmp` (a sibling of `target`, created with its parents) to write
    into; once the block ends, its files are fsynced and it replaces `target`. When the block (or
    the fsync) fails, `tmp` is removed: a half-written copy would keep a full disk full."""
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a killed writer's leftover of the same name
        tmp.mkdir()
        yield tmp
        _fsync_dir(tmp)  # the data is on disk before the rename makes it visible
    except BaseException as e:
        instead = translate(e, tmp) if translate is not None and isinstance(e, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if instead is None:
            raise
        raise instead from e
    old = tmp.with_name(f"{tmp.name}.old")  # a rename cannot replace a non-empty directory
    try:
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only a failed rename leaves it
    _fsync_dir(target.parent, files=False)  # the rename itself
    shutil.rmtree(old, ignore_errors=True)
