"""Shared fixtures: an isolated raptr cache, a small generated corpus, tiny recipes, the CLI runner.

Nothing here touches ~/.cache, the network or the Shakespeare corpus: every run trains on a few
kilobytes of generated sentences with a 2-4 layer, 32-wide BERT, so a training run takes ~1 s.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="session", autouse=True)
def raptr_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point RAPTR_CACHE at a throwaway folder for the whole session (tokenizer and block caches
    land there, never in ~/.cache); RAPTR_DEBUG is cleared so error paths behave as for users."""
    root = tmp_path_factory.mktemp("raptr-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAPTR_CACHE", str(root))
        mp.delenv("RAPTR_DEBUG", raising=False)
        yield root


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One intra-op thread while a module runs (restored after). 32-wide matmuls gain nothing from
    threads, and on a shared 2-core machine OpenMP spin-waiting made the training tests ~10x slower.
    Opt-in per module (pytestmark) so other suites keep torch's default for their golden numbers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- a tiny, learnable corpus --------------------------------------------------------------------

_SUBJ = [
    "the cat",
    "a dog",
    "the king",
    "my friend",
    "the queen",
    "a bird",
    "the old man",
    "our horse",
    "the young girl",
    "a soldier",
    "the baker",
    "his mother",
]
_VERB = ["sees", "likes", "finds", "calls", "loves", "follows", "hears", "keeps", "brings", "wants"]
_OBJ = [
    "the ball",
    "a fish",
    "the crown",
    "an apple",
    "the river",
    "a song",
    "the tree",
    "some bread",
    "the letter",
    "a sword",
    "the garden",
    "her ring",
]
_TAIL = ["in the morning", "at night", "by the sea", "with joy", "every day", "in the rain"]


def generate_corpus(n_docs: int, sentences: int, seed: int) -> list[str]:
    """Documents of templated sentences: enough structure that a 2-layer model learns in 40 steps."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        docs.append(
            " ".join(
                f"{rng.choice(_SUBJ)} {rng.choice(_VERB)} {rng.choice(_OBJ)} {rng.choice(_TAIL)} ."
                for _ in range(sentences)
            )
        )
    return docs


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding train.txt (~45 KB) and eval.txt (~10 KB), generated once per session."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "train.txt").write_text("\n".join(generate_corpus(30, 40, seed=0)))
    (d / "eval.txt").write_text("\n".join(generate_corpus(6, 40, seed=1)))
    return d


# --- tiny recipes ------------------------------------------------------------------------------

TINY: dict[str, dict[str, Any]] = {
    "run": {"name": "tiny", "seed": 0},
    "model": {"n_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
    "data": {"train": ["data/train.txt"], "eval": ["data/eval.txt"]},
    "tokenizer": {"vocab_size": 200},
    "optim": {"lr": 3e-3, "warmup_steps": 2},
    "train": {
        "steps": 8,
        "batch_size": 8,
        "seq_len": 32,
        "eval_every": 4,
        "eval_batches": 4,
        "checkpoint_every": 0,
        "log_every": 1,
    },
    "log": {"console": "none"},
    "schedule": {"method": "baseline"},
}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """A deliberately independent TOML writer (tests must not write fixtures with the code under test).
    A list of dicts becomes an array of tables ([[section.key]])."""
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        arrays = {k: v for k, v in table.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in arrays]
        for k, rows in arrays.items():
            for row in rows:
                lines.append(f"[[{name}.{k}]]")
                lines += [f"{rk} = {_toml_value(rv)}" for rk, rv in row.items()]
        lines.append("")
    return "\n".join(lines)


def merged(base: dict, changes: dict) -> dict:
    """Section-wise merge: {"train": {"steps": 4}} changes one key; a value of None deletes it."""
    out = {s: dict(t) for s, t in base.items()}
    for s, t in changes.items():
        sec = out.setdefault(s, {})
        for k, v in t.items():
            if v is None:
                sec.pop(k, None)
            else:
                sec[k] = v
    return out


@pytest.fixture
def make_recipe(tmp_path: Path, corpus_dir: Path) -> Callable[..., Path]:
    """Write a tiny recipe into tmp_path/<folder>/ with the corpus copied to <folder>/data/, so the
    recipe's relative `data/train.txt` only resolves against the recipe's own folder."""

    def make(changes: dict | None = None, folder: str = "exp", name: str = "recipe.toml") -> Path:
        d = tmp_path / folder
        if not (d / "data").is_dir():
            shutil.copytree(corpus_dir, d / "data")
        path = d / name
        path.write_text(to_toml(merged(TINY, changes or {})))
        return path

    return make


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner: CliRunner) -> Callable[..., Any]:
    """cli("pretrain", recipe, "--out", out) -> click Result (stdout and stderr kept apart)."""
    from raptr_cli.cli.main import app

    def invoke(*args: Any) -> Any:
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_rows(rows: list[dict]) -> list[dict]:
    """Training rows only (not eval rows nor events)."""
    return [r for r in rows if "loss" in r and "event" not in r]


def eval_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "eval_loss" in r and "event" not in r]


def run_ok(cli: Callable[..., Any], *args: Any) -> Any:
    """Invoke the CLI and fail with its output (and any exception) unless it exits 0."""
    res = cli(*args)
    assert res.exit_code == 0, f"exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def logged_steps(out: Path) -> int:
    """Training rows in metrics.jsonl so far (only whole lines: the last one may be half written)."""
    p = out / "metrics.jsonl"
    lines = p.read_text().split("\n")[:-1] if p.exists() else []
    return sum('"loss"' in line and '"event"' not in line for line in lines)


def wait_until(proc: subprocess.Popen, stderr: Path, ready, timeout: float = 120) -> None:
    """Poll `ready()` while the process runs; fail with its stderr if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"raptr exited ({proc.returncode}) too early:\n{stderr.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.002)
