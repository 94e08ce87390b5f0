"""Strict TOML -> nested dataclass loading, shared by every recipe section.

Loading is strict in the torchtitan/litgpt sense: an unknown key (with a did-you-mean), a value of
the wrong type, or a section that is not a table is collected as a problem naming the dotted TOML
key; the caller raises once with every problem listed. Types come from the dataclass annotations,
so `--set section.key=value` is typed by the same schema as the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join("none" if a is type(None) else _type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp)
        return f"list of {_type_name(inner)}"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def _numeric(tp: Any) -> bool:
    """Whether a number is a valid value for `tp` (int, float, or a union holding one)."""
    if get_origin(tp) in (Union, types.UnionType):
        return any(_numeric(a) for a in get_args(tp))
    return tp in (int, float)


def coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Return `value` converted to `tp`, or append a problem naming `key` and return None."""
    # One rule for every numeric key: TOML (and so --set) accepts nan and inf, but no setting means
    # anything at either (lr = nan crashes the optimizer, lr = inf diverges, grad_clip = nan turns
    # clipping off silently), and range checks cannot catch nan (every comparison is False).
    if isinstance(value, float) and not math.isfinite(value) and _numeric(tp):
        problems.append(f"{key} = {value!r}: must be a finite number (nan and inf are not allowed)")
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        sub: list[str] = []
        for a in args:
            out = coerce(value, a, key, sub)
            if len(sub) == 0:
                return out
            sub.clear()
        problems.append(f"{key} = {value!r}: expected {_type_name(tp)}")
        return None
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{key} = {value!r}: must be one of {_type_name(tp)}{hint}")
        return None
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            if isinstance(value, (str, int, float)) and not dataclasses.is_dataclass(inner):
                value = [value]  # a single path where a list is expected is unambiguous
            else:
                problems.append(f"{key} = {value!r}: expected {_type_name(tp)}")
                return None
        return [coerce(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {value!r}")
            return None
        return from_dict(tp, value, key, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # 3e18-style budgets and 1e4 steps are common in recipes
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    problems.append(f"{key} = {value!r}: expected {_type_name(tp)}")
    return None


def fields_of(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a dataclass."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from a TOML table, collecting problems instead of raising."""
    hints = fields_of(cls)
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in hints:
            close = difflib.get_close_matches(k, list(hints), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{key}: unknown key{hint}; valid keys: {', '.join(hints)}")
            continue
        out = coerce(v, hints[k], key, problems)
        if out is not None or v is None:
            kwargs[k] = out
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in data]
    if missing:
        problems.append(f"{prefix or 'recipe'}: missing required key(s) {', '.join(missing)}")
        return None
    if any(k not in kwargs for k in required):
        return None  # a required value had the wrong type; already reported
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """Parse a `--set` value as a TOML value; fall back to a bare string (`--set run.name=x`)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (None fields dropped: TOML has no null, defaults restore them)."""
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.init and getattr(obj, f.name) is not None
        }
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps(sections: dict[str, dict]) -> str:
    """Write {section: {key: value}} as TOML; lists of tables become [[section.key]] arrays."""
    out: list[str] = []
    for name, table in sections.items():
        scalars = {k: v for k, v in table.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        arrays = {k: v for k, v in table.items() if k not in scalars}
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        out.append("")
        for k, rows in arrays.items():
            for row in rows:
                out.append(f"[[{name}.{k}]]")
                out += [f"{rk} = {_toml_value(rv)}" for rk, rv in row.items()]
                out.append("")
    return "\n".join(out)


def _comment(text: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(" ".join(text.split()), width, initial_indent="# ", subsequent_indent="# ")


def dumps_documented(objects: dict[str, Any], sections: dict[str, dict]) -> str:
    """`dumps(sections)` with documentation for a reader: each section and key preceded by its
    docstring as `# ` lines, and keys left unset (None: TOML has no null) shown commented out.
    `objects` maps each section to the dataclass instance it was written from. Only comments are
    added, so the text loads back to the same values."""
    out: list[str] = []
    for name, table in sections.items():
        obj = objects[name]
        cls = type(obj)
        hints, docs = fields_of(cls), field_docs(cls)
        if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # not dataclass's generated one
            out += _comment(cls.__doc__)
        out.append(f"[{name}]")
        arrays = {k: v for k, v in table.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        for k in hints:
            if k in table and k not in arrays:
                out += _comment(docs.get(k, ""))
                out.append(f"{k} = {_toml_value(table[k])}")
            elif k not in table and getattr(obj, k) is None:
                out += _comment(docs.get(k, ""))
                out.append(f"# {k} = (unset)")
        out.append("")
        for k, rows in arrays.items():
            out += _comment(docs.get(k, ""))
            row_docs = field_docs(get_args(hints[k])[0])
            for j, row in enumerate(rows):
                out.append(f"[[{name}.{k}]]")
                for rk, rv in row.items():
                    if j == 0:  # documented once, not in every stage
                        out += _comment(row_docs.get(rk, ""))
                    out.append(f"{rk} = {_toml_value(rv)}")
                out.append("")
    return "\n".join(out)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass, for help text."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
            if isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                docs[a.target.id] = str(b.value.value).strip()
    return docs


__all__ = ["coerce", "dumps", "field_docs", "fields_of", "from_dict", "parse_value", "to_dict"]
