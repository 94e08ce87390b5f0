"""The run directory's lifecycle: never clobber a run by accident, and never lose one to bad input.

`--overwrite` first *moves* the old run's files into a hidden folder; they are deleted only once the
new run has validated its data and built its model (`commit`), and put back if that fails
(`rollback`). So a typo in `data.train` with `--overwrite` costs nothing. A start killed in between
(SIGKILL, or SIGTERM before the handlers are installed) leaves that folder behind; the next start in
the directory puts it back (`recover_overwritten`).

One process at a time writes a run directory: `RunLock` holds an exclusive `flock` on OUT/.lock
(with the holder's PID in it) from before anything in OUT changes until the process ends. The
kernel drops the lock when its process dies, so a `kill -9` leaves no stale lock; a leftover .lock
file is unlocked and simply taken over. Under `accelerate launch` rank 0 holds it for all ranks.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from ..errors import UserError
from ..recipe import Recipe
from . import checkpoint as ckpt

RUN_MARKERS = ("metrics.jsonl", "checkpoints", "final")
RUN_FILES = (*RUN_MARKERS, "recipe.toml", "tokenizer.json")
LOCK_FILE = ".lock"
SET_ASIDE = ".overwritten-"


def _make_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory", hint="Point --out at a directory (new or a run's).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"--out {out}: cannot create the directory ({e.strerror})", hint="Point --out at a writable directory path."
        ) from None


def _holder(fd: int) -> str:
    """The PID the holder wrote, read through our own descriptor (it may not have written it yet)."""
    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.01)
    return "unknown"


def _in_use(out: Path, pid: str) -> UserError:
    return UserError(
        f"{out} is in use by another raptr process (PID {pid}) that is writing this run",
        hint=f"Wait for it to finish or stop it (kill {pid}), or use another --out directory.",
    )


class RunLock:
    """Exclusive `flock` on OUT/.lock for as long as this object holds it (see the module doc)."""

    def __init__(self, out: Path):
        self.out, self.path, self.fd = out, out / LOCK_FILE, None

    def acquire(self, create: bool = True) -> RunLock:
        """Take the lock or raise UserError naming the holder's PID. `create=False`: an absent OUT
        is left absent (a --resume of nothing; the caller refuses it) and nothing is locked."""
        if not create and not self.out.is_dir():
            return self
        _make_dir(self.out)
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UserError(
                    f"--out {self.out}: cannot create {self.path} ({e.strerror})",
                    hint="Point --out at a directory you can write to.",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _holder(fd) if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK) else None
                os.close(fd)
                if pid is not None:
                    raise _in_use(self.out, pid) from None
                raise UserError(
                    f"--out {self.out}: cannot lock {self.path} ({e.strerror})",
                    hint="The file system does not support file locks; use a local directory.",
                ) from None
            # a holder that just finished removes the file: if ours is no longer the one at the path,
            # a third process may lock the new one, so start over on it
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:  # removed while still held, so a waiter that opened it sees the change (above)
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_running(run_dir: Path) -> None:
    """UserError when a process holds `run_dir`'s lock (for readers that need a finished state)."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it (a holder keeps it until it ends)
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise _in_use(run_dir, _holder(fd)) from None
    finally:
        os.close(fd)  # closing drops our shared lock


def _has_own_run(out: Path) -> bool:
    """OUT holds progress of its own: a checkpoint, final/, or a logged row."""
    metrics = out / "metrics.jsonl"
    return bool(
        ckpt.list_checkpoints(out)
        or (out / "final").exists()
        or (metrics.is_file() and metrics.read_text(errors="replace").strip())
    )


def recover_overwritten(out: Path) -> tuple[list[str], list[str]]:
    """Put back a run that an interrupted --overwrite set aside in OUT/.overwritten-PID; call with the
    lock held, so no live process owns such a folder. Returns (notes, warnings) for the console.

    It is restored when that cannot clobber anything: no name clashes, or OUT holds only the
    never-committed start's files (a tokenizer.json, an empty metrics.jsonl: no checkpoint, no
    final/, no logged row), which are dropped. Otherwise OUT holds another run and the folder is
    left as it is and named."""
    notes: list[str] = []
    warnings: list[str] = []
    if not out.is_dir():
        return notes, warnings
    for hidden in sorted(p for p in out.glob(f"{SET_ASIDE}*") if p.is_dir()):
        pid = hidden.name[len(SET_ASIDE) :]
        entries = sorted(hidden.iterdir())
        clashes = [p.name for p in entries if (out / p.name).exists()]
        if clashes and _has_own_run(out):
            warnings.append(
                f"{hidden} holds a run that an interrupted --overwrite (process {pid}, no longer running) "
                f"set aside, and {out} holds another run ({', '.join(clashes)}): it was left untouched. "
                f"Move it elsewhere to keep it, or delete it (rm -r {hidden})."
            )
            continue
        for name in clashes:  # the interrupted start's own files: nothing trained with them
            dst = out / name
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        for p in entries:
            os.replace(p, out / p.name)
        hidden.rmdir()
        if entries:
            notes.append(
                f"restored the run in {out} that an interrupted --overwrite (process {pid}) had set aside in {hidden}"
            )
    return notes, warnings


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
    _make_dir(out)
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
        moved = out / f"{SET_ASIDE}{os.getpid()}"
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

    fixed = replace(
        recipe,
        data=dataclasses.replace(data, train=[absolute(s) for s in data.train], eval=[absolute(s) for s in data.eval]),
        tokenizer=dataclasses.replace(recipe.tokenizer, path=absolute(recipe.tokenizer.path)),
    )
    return fixed.to_toml()


def write_recipe(recipe: Recipe, out: Path) -> None:
    (out / "recipe.toml").write_text(resolved_toml(recipe))
