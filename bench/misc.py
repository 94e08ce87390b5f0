"""Start-up time, torch.compile per block (recompiles and speed), and activation memory by path.

    python bench/misc.py [--quick] [--json]

- start-up: wall time of `raptr --help` and `raptr flops RECIPE` (targets < 1 s and < 2 s).
- compile: each block compiled on its own; after warm-up, 20 steps over new random paths must
  trigger zero recompiles; reports the compiled/eager step-time ratio (on CPU it may not pay).
- activations: bytes autograd saves for backward on a 6-of-12-layer path vs the full model
  (a skipped layer must hold none: expected ratio ~ the layer share plus the head's).
- input pipeline: the share of step time the loop waits for its batch when the trainer's own
  batch builder (`train.step.train_batch`: BERT-base recipe, 256 x 128 masked on the host) runs
  ahead in the prefetch thread, as on a GPU, against building it inline. The GPU step is simulated
  by a sleep of the measured H100 step time (the host is idle while kernels run); the real
  kernel-launch work of an eager step would also compete for the GIL, which a sleep does not.
  Also left out: pinning (the trainer pins in the thread on CUDA), and RaPTr's shorter steps on
  short paths (a 6-layer step is ~0.6 of the full one: the in-loop share would be larger there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def startup(reps: int) -> list[dict]:
    raptr = [sys.executable, "-m", "raptr_cli.cli.main"]
    rows = []
    for name, args, target in (
        ("raptr --help", ["--help"], 1.0),
        ("raptr flops bert-base-raptr", ["flops", str(ROOT / "recipes/bert-base-raptr.toml")], 2.0),
    ):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run(raptr + args, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "name": f"start-up: {name} (s)",
                "measured": statistics.median(times),
                "target": target,
                "ok": statistics.median(times) < target,
            }
        )
    return rows


def _tiny(layers: int = 12, hidden: int = 128):
    from raptr_cli.models.bert.config import BertConfig
    from raptr_cli.models.bert.model import BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=8192,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=2,
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
        )
    )


def _batch(B: int = 16, T: int = 128):
    from raptr_cli.objectives.mlm import mask_tokens

    ids = torch.randint(5, 8192, (B, T), generator=torch.Generator().manual_seed(0))
    return mask_tokens(
        ids, seed=0, step=0, mlm_probability=0.15, mask_id=4, vocab_size=8192, special_ids=[0, 1, 2, 3, 4]
    )


def _paths(n: int, seed: int = 0) -> list[list[int]]:
    from raptr_cli.schedule import sample_subset, step_generator

    return [sample_subset(12, [0, 11], [6, 8, 10][i % 3], step_generator(seed, i)) for i in range(n)]


def compile_check(steps: int) -> list[dict]:
    import torch._dynamo
    from torch._dynamo.utils import counters

    from raptr_cli.train.loop import compile_blocks

    x, y = _batch()
    eager, comp = _tiny(), _tiny()
    compile_blocks(comp)
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-4)
    opt_c = torch.optim.AdamW(comp.parameters(), lr=1e-4)

    def step(m, opt, layers):
        t0 = time.perf_counter()
        m(x, labels=y, layers=layers).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    warm = _paths(3, seed=1)
    for p in warm:  # compile: every block once (forward and backward)
        step(comp, opt_c, p)
        step(eager, opt_e, p)
    step(comp, opt_c, None)
    before = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    frames_before = counters["stats"].get("unique_graphs", 0)
    te, tc = [], []
    for p in _paths(steps, seed=2):
        te.append(step(eager, opt_e, p))
        tc.append(step(comp, opt_c, p))
    after = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    new_graphs = counters["stats"].get("unique_graphs", 0) - frames_before
    return [
        {
            "name": f"compile: recompiles over {steps} new random paths after warm-up",
            "measured": after - before,
            "target": 0,
            "ok": after - before == 0 and new_graphs == 0,
            "new_graphs": new_graphs,
        },
        {
            "name": "compile: eager / compiled step time (>1 = compile pays)",
            "measured": statistics.median(te) / statistics.median(tc),
            "target": None,
            "ok": True,
        },
    ]


def activation_memory() -> list[dict]:
    """Bytes autograd saves for backward, path of 6 vs all 12 layers."""
    x, y = _batch()
    m = _tiny()

    def saved_bytes(layers) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = m(x, labels=y, layers=layers).loss
        loss.backward()
        m.zero_grad(set_to_none=True)
        return total

    full = saved_bytes(None)
    six = saved_bytes([0, 2, 4, 6, 8, 11])  # fixed first and last layer plus four others
    none = saved_bytes([])  # embeddings + head only: what no block holds
    per_block = (full - none) / 12
    return [
        {
            "name": "activations: saved bytes, 6-layer path / full model",
            "measured": six / full,
            "target": (none + 6 * per_block) / full,
            "ok": abs(six - (none + 6 * per_block)) / full < 0.02,
            "full_mb": full / 2**20,
            "six_mb": six / 2**20,
        }
    ]


H100_STEP_S = 0.066  # compiled BERT-base full step, batch 256 x 128, bf16 (docs/benchmarks.md)


def input_pipeline(steps: int) -> list[dict]:
    from raptr_cli.models.registry import objective_for
    from raptr_cli.recipe import load_recipe
    from raptr_cli.train.prefetch import Prefetcher
    from raptr_cli.train.step import train_batch

    recipe = load_recipe(ROOT / "recipes/bert-base-raptr.toml")
    B, T, V = recipe.train.batch_size, recipe.train.seq_len, 30522
    specials = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    objective = objective_for(recipe, specials, V)
    blocks = torch.randint(5, V, (16 * B, T), generator=torch.Generator().manual_seed(0), dtype=torch.int32)

    def make(step: int):
        return train_batch(blocks, objective, B, recipe.run.seed, step)

    share = {}
    for background in (False, True):
        waited = 0.0
        with Prefetcher(make, 0, steps + 1, background=background) as p:
            for step in range(steps + 1):
                t0 = time.perf_counter()
                p.get(step)
                if step:  # steady state: the trainer's first batch is built during its first eval
                    waited += time.perf_counter() - t0
                time.sleep(H100_STEP_S)  # the GPU computes; the host thread waits on it
        share[background] = waited / (waited + steps * H100_STEP_S)
    what = f"(BERT-base {B}x{T}, simulated {H100_STEP_S * 1e3:.0f} ms GPU step)"
    return [
        {
            "name": f"data wait / step, batch built in the loop {what}",
            "measured": share[False],
            "target": None,
            "ok": True,
        },
        {
            "name": f"data wait / step, prefetch thread {what}",
            "measured": share[True],
            "target": 0.02,
            "ok": share[True] < 0.02,
        },
    ]


def rows(quick: bool = False) -> list[dict]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = startup(3 if quick else 5)
    rows += activation_memory()
    rows += compile_check(6 if quick else 20)
    rows += input_pipeline(20 if quick else 50)
    return rows


def run(quick: bool = False, log=print) -> dict:
    """The bench/run.py protocol (bench/checks.py)."""
    from checks import as_checks

    return as_checks(rows(quick), lambda r: r["ok"])


def print_report(res: dict) -> None:
    from checks import print_checks

    print_checks(res)


def main() -> None:
    ap = argparse.ArgumentParser(description="start-up, compile and activation-memory checks")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows_ = rows(a.quick)
    if a.json:
        print(json.dumps(rows_, indent=2))
        return
    for r in rows_:
        tgt = "" if r["target"] is None else f" (target {r['target']:.3g})"
        print(f"{r['name']}: {r['measured']:.3g}{tgt} {'PASS' if r['ok'] else 'MISS'}")


if __name__ == "__main__":
    main()
