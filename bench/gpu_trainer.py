"""The real trainer on a short real run, for bench/gpu.py: `data_share`, MFU and peak memory as
`raptr pretrain` reports them, next to the `--dry-run` memory estimate of the same recipe.

The run is `recipes/bert-base-raptr.toml` (6-8-10-12) with only the data, the length and the
logging changed: a device machine has no internet and no raptr cache, so the text is generated
here (Zipf-distributed four-letter words) and the tokenizer is a WordPiece tokenizer.json holding
exactly those words, the vocabulary size the recipe asks for (every word one token, nothing to
train). Everything else is the trainer's own path: packing, the batch builder in the prefetch
thread, masking, evals at the stage ends, metrics.jsonl, the final checkpoint.
"""

from __future__ import annotations

import contextlib
import statistics
import string
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "bert-base-raptr.toml"


def _word(i: int) -> str:
    """The i-th four-letter word (26^4 > any vocabulary here: all distinct)."""
    letters = string.ascii_lowercase
    return "".join(letters[(i // 26**j) % 26] for j in range(4))


def synthetic_data(folder: Path, vocab_size: int, n_words: int, seed: int = 0) -> tuple[Path, Path]:
    """train.txt (documents of Zipf-distributed words, one per line) and a tokenizer.json whose
    vocabulary is the five BERT specials plus exactly those words: `vocab_size` tokens in all."""
    from tokenizers import models

    from raptr_cli.data.tokenizer import SPECIAL_TOKENS, train_wordpiece

    words = [_word(i) for i in range(vocab_size - len(SPECIAL_TOKENS))]
    # the project's tokenizer layout (normaliser, pre-tokeniser, specials 0-4, [CLS] A [SEP]),
    # trained on two words, then given the full vocabulary
    tok = train_wordpiece([f"{words[0]} {words[-1]}"] * 2, vocab_size=len(SPECIAL_TOKENS) + 2, min_frequency=1)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({w: len(SPECIAL_TOKENS) + i for i, w in enumerate(words)})
    tok.model = models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##")
    folder.mkdir(parents=True, exist_ok=True)
    tok_file, train = folder / "tokenizer.json", folder / "train.txt"
    tok.save(str(tok_file))
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(len(words)) + 10.0)
    ids = rng.choice(len(words), size=n_words, p=p / p.sum())
    arr = np.array(words)
    train.write_text("\n".join(" ".join(arr[ids[i : i + 400]]) for i in range(0, n_words, 400)) + "\n")
    return train, tok_file


class _OneProcess:
    """What the Trainer asks of accelerate's Accelerator in a single process (used only when
    accelerate is not installed on the device machine)."""

    process_index, num_processes, is_main_process, distributed_type = 0, 1, True, "NO"

    def __init__(self, device: torch.device):
        self.device = device

    def main_process_first(self):
        return contextlib.nullcontext()

    def wait_for_everyone(self) -> None:
        pass


def _accelerator(cuda: bool, notes: list[str]):
    try:
        from accelerate import Accelerator
    except ImportError:
        notes.append("accelerate is not installed: the trainer ran with a one-process stand-in")
        return _OneProcess(torch.device("cuda" if cuda else "cpu"))
    return Accelerator(cpu=not cuda)


def _weighted(rows: list[dict], key: str) -> float | None:
    """Time-weighted mean of a per-window figure over training rows (window seconds = the
    window's tokens / its tokens_per_s)."""
    num = den = 0.0
    prev = None
    for r in rows:
        if prev is not None and r.get(key) is not None and r["tokens_per_s"] > 0:
            dt = (r["tokens"] - prev["tokens"]) / r["tokens_per_s"]
            num, den = num + r[key] * dt, den + dt
        prev = r
    return num / den if den else None


def trainer_run(
    work: Path,
    *,
    cuda: bool,
    batch: int,
    micro: int,
    seq_len: int,
    steps: int,
    log_every: int,
    compiled: bool,
    model: dict | None = None,
    vocab_size: int = 30522,
    n_words: int = 300_000,
    eval_fraction: float = 0.12,
    log=print,
) -> dict:
    """One short `raptr pretrain` of the BERT-base RaPTr recipe in this process. `model`
    overrides [model] keys (the CPU smoke's tiny width). The eval split holds more than one batch
    (~280 blocks of ~2,360), so evals run at the training batch shape, as with a real corpus. Returns data_share, MFU, the stage
    tables' figures, peak memory (CUDA) and the dry-run estimate for this very recipe."""
    from raptr_cli.planning import describe_run, effective_precision
    from raptr_cli.recipe import load_recipe
    from raptr_cli.train.loop import Trainer
    from raptr_cli.train.metrics import read_metrics
    from raptr_cli.train.rundir import prepare_out_dir

    notes: list[str] = []
    t0 = time.perf_counter()
    train, tok_file = synthetic_data(work / "data", vocab_size, n_words)
    sets = [
        f'data.train=["{train}"]',
        f'tokenizer.path="{tok_file}"',
        f'data.cache_dir="{work / "cache"}"',
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        f"train.micro_batch_size={micro}",
        f"train.seq_len={seq_len}",
        "train.eval_every=0",
        "train.eval_batches=1",
        "train.checkpoint_every=0",
        f"train.log_every={log_every}",
        f"data.eval_fraction={eval_fraction}",
        f"train.compile={'true' if compiled else 'false'}",
        f"optim.warmup_steps={max(1, steps // 10)}",
        "log.console=none",
    ]
    sets += [f"model.{k}={v}" for k, v in (model or {}).items()]
    recipe = load_recipe(RECIPE, sets)
    out = work / "run"
    prepare_out_dir(out, resume=False, overwrite=True)
    acc = _accelerator(cuda, notes)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(recipe, out, acc)
    setup_s = time.perf_counter() - t0
    log(
        f"  trainer: {recipe.run.name}, {steps} steps of {batch} x {seq_len}, "
        f"{'compiled' if compiled else 'eager'}, data ready in {setup_s:.1f} s"
    )
    trainer.run()
    steps_done, state = trainer.step, trainer.state
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    precision = trainer.precision
    plan = describe_run(
        recipe,
        vocab_size=trainer.data.vocab_size,
        meta_model=True,
        precision=effective_precision(recipe.train.precision, cuda),
    )
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r and "event" not in r]
    stage_ends = [r for r in rows if r.get("event") == "stage_end"]
    # steady state: the first stage's first quarter holds compilation and allocator warm-up
    steady = [r for r in train_rows if r["step"] > max(log_every, steps // 16)]
    return {
        "recipe": str(RECIPE.relative_to(REPO)),
        "overrides": sets,
        "precision": precision,
        "steps": steps_done,
        "setup_s": setup_s,
        "wall_s": time.perf_counter() - t0,
        # the median window: robust to a window that also compiled a block (a long step that
        # would pull a time-weighted mean down); the weighted and whole-run figures are beside it
        "data_share": statistics.median(r["data_share"] for r in steady) if steady else None,
        "data_share_weighted": _weighted(steady, "data_share"),
        "data_share_stages": [r["data_share"] for r in stage_ends],
        "data_share_run": state.data_s / max(state.train_s, 1e-9),
        "mfu": statistics.median(r["mfu"] for r in steady) if steady and "mfu" in steady[0] else None,
        "tokens_per_s_stages": {f"{r['path_length']:g}": r["tokens_per_s"] for r in stage_ends},
        "peak_memory_gib": peak,
        "estimate_gib": plan["memory"]["total_gib"],
        "estimate": plan["memory"],
        "notes": notes,
    }
