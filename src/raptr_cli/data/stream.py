"""Documents as a stream, in batches, and cheap fingerprints of the files they come from.

`iter_documents` yields the same non-blank documents, in the same order, as `load_documents`
(files.py), but never holds more than one batch (or one .txt file) as strings: .jsonl is read
line by line, .parquet by row groups through pyarrow, a hub dataset batch by batch from
`datasets`' memory-mapped cache. (`.json` files, a single JSON value each, are still read whole
through `datasets`.)

`source_fingerprints` names the corpus without reading it as text: per file its size and the
sha256 of its bytes (for a hub dataset, of the Arrow files in `datasets`' cache), memoised in
``<cache>/fingerprints.json`` by (path, size, mtime), so every rank and every rerun of a 20 GB
corpus pays for the hashing once. A file rewritten with the same size and mtime to the
nanosecond would be missed; anything else invalidates what was built from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from raptr_cli.data.corpus import sha256_file
from raptr_cli.data.files import JSON_SUFFIXES, PARQUET_SUFFIXES, TEXT_SUFFIXES, hub_dataset
from raptr_cli.data.files import need_field as _need_field
from raptr_cli.errors import UserError

BATCH_DOCS = 256  # documents per batch (jsonl/parquet/hub rows)
MEMO = "fingerprints.json"


def _offline() -> None:
    # Local files only: keep `datasets` from probing the hub; read when it is first imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    rows = hits = 0
    fields: set[str] = set()
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:  # JSON text is UTF-8 (RFC 8259): name the first byte that is not, as files.py does
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path} is not UTF-8 text: byte {offset + e.start} is {raw[e.start : e.start + 1]!r} ({e.reason})",
                    hint="JSON data must be UTF-8; re-encode the file (e.g. `iconv -f latin1 -t utf-8`).",
                ) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise UserError(
                    f"Could not read {path.name}: line {lineno} is not JSON ({exc})",
                    hint="Each .jsonl line must be one JSON object; .json a list of objects.",
                ) from None
            if not isinstance(row, dict):
                raise UserError(
                    f"Could not read {path.name}: line {lineno} is not a JSON object",
                    hint="Each .jsonl line must be one JSON object; .json a list of objects.",
                )
            rows += 1
            if text_field in row:
                hits += 1
                if isinstance(row[text_field], str):
                    yield row[text_field]
            elif len(fields) < 50:
                fields.update(row)
    if rows and not hits:
        _need_field(sorted(fields), text_field, path.name)


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(
            f"Could not read {path.name}: {type(exc).__name__}: {exc}", hint="Check that it is a parquet file."
        ) from None
    _need_field(pf.schema_arrow.names, text_field, path.name)
    for batch in pf.iter_batches(batch_size=BATCH_DOCS, columns=[text_field]):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))


def _json(path: Path, text_field: str) -> Iterator[str]:
    _offline()
    from datasets import load_dataset

    try:
        ds = load_dataset("json", data_files=[str(path)], split="train")
    except Exception as exc:  # malformed JSON: name the file
        raise UserError(
            f"Could not read {path.name}: {type(exc).__name__}: {exc}",
            hint="Each .jsonl line must be one JSON object; .json a list of objects.",
        ) from exc
    _need_field(ds.column_names, text_field, path.name)
    for batch in ds.select_columns([text_field]).iter(batch_size=BATCH_DOCS):
        yield from (t for t in batch[text_field] if isinstance(t, str))


def _raw_documents(files: list[Path] | str, text_field: str) -> Iterator[str]:
    if isinstance(files, str):
        for batch in hub_dataset(files, text_field).iter(batch_size=BATCH_DOCS):
            yield from (t for t in batch[text_field] if isinstance(t, str))
        return
    for f in files:
        if f.suffix in TEXT_SUFFIXES:
            # utf-8 with replacement: one odd byte should not stop a pretraining run.
            yield f.read_text(encoding="utf-8", errors="replace")
        elif f.suffix in PARQUET_SUFFIXES:
            yield from _parquet(f, text_field)
        elif f.suffix == ".jsonl":
            yield from _jsonl(f, text_field)
        elif f.suffix in JSON_SUFFIXES:
            yield from _json(f, text_field)


def iter_documents(files: list[Path] | str, text_field: str = "text") -> Iterator[tuple[int, str]]:
    """(index, document) of every non-blank document, in `load_documents`' order; the index counts
    non-blank documents from 0, so it names a document for the held-out split and for resuming."""
    i = 0
    for doc in _raw_documents(files, text_field):
        if doc.strip():
            yield i, doc
            i += 1


def _memo_path() -> Path:
    from raptr_cli.data.corpus import cache_root

    return cache_root() / MEMO


def source_fingerprints(files: list[Path] | str, text_field: str) -> list[dict]:
    """[{"name", "bytes", "sha256"}] of every file of the corpus (hub: its cached Arrow files)."""
    paths = (
        [Path(c["filename"]) for c in hub_dataset(files, text_field).cache_files]
        if isinstance(files, str)
        else [Path(f) for f in files]
    )
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    out, changed = [], False
    for p in paths:
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key], changed = sha256_file(p), True
        out.append({"name": p.name, "bytes": st.st_size, "sha256": memo[key]})
    if changed:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".fp-", suffix=".tmp", dir=memo_file.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump(memo, fh)
            os.replace(tmp, memo_file)  # ranks may race: the last complete copy wins
        except OSError:
            pass  # only a cache: the hashes are recomputed next time
    return out


def count_documents(files: list[Path] | str, text_field: str) -> int:
    """How many non-blank documents the corpus holds (one streaming pass)."""
    return sum(1 for _ in iter_documents(files, text_field))
