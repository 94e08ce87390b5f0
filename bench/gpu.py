"""GPU throughput: bf16 BERT-base (12 x 768, vocab 30522), sequence 128, tokens/s and MFU of one
training step for the full model and for 6/8/10-layer RaPTr paths, eager and compiled block by block.

The step is the Trainer's hot path (`path_ratio.StepBench`): dynamic masking on the host, forward and
backward under bf16 autocast with the head on masked positions only, gradient clipping with the
finite check, fused AdamW, zero_grad. Configurations are interleaved round-robin after a warm-up and
each figure is the median over rounds. Model FLOPs are the analytic `flops.step_flops` (forward +
backward = 3x forward matmuls, attention scores included, head on masked positions only: the FLOPs
the step really needs, never padded or recomputed ones); MFU = model FLOP/s / the GPU's dense bf16
peak from `budget.GPU_PEAKS` (H100 SXM: 989 TFLOP/s).

Not part of `make bench` (CI and this project's dev box have no GPU). On a CUDA machine:

    python bench/gpu.py                      # batch 256, eager and compiled, ~2 minutes
    python bench/gpu.py --batch 512 --json   # one JSON document on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import siblings

from path_ratio import N_LAYERS, StepBench, path_for  # noqa: E402

from raptr_cli.flops import step_flops  # noqa: E402
from raptr_cli.planning import model_dims  # noqa: E402
from raptr_cli.train.loop import compile_blocks, device_peak  # noqa: E402

MFU_TARGET = 0.45  # issue #7: full model, bf16, BERT-base, sequence 128


def measure(compiled: bool, batch: int, micro: int, seq_len: int, ks: tuple[int, ...], rounds: int,
            warmup: int, log=print) -> dict:
    torch.manual_seed(0)
    b = StepBench(768, seq_len, batch, 30522, device="cuda", precision="bf16", micro=micro)
    if compiled:
        compile_blocks(b.model)
    order = (N_LAYERS, *ks)
    for r in range(warmup):
        for k in order:
            b.step(path_for(k, r))
    times: dict[int, list[float]] = {k: [] for k in order}
    for r in range(rounds):
        for k in order:
            times[k].append(b.step(path_for(k, warmup + r))["total"])
    dims = model_dims(b.cfg, seq_len)
    n_masked = int((b.masked(0)[1] != -100).sum())
    peak = device_peak(b.device, "bf16")
    rows = []
    for k in order:
        t = statistics.median(times[k])
        flops = step_flops(dims, k, b.tokens, n_masked)
        row = {"k": k, "step_s": t, "tokens_per_s": b.tokens / t, "tflops_per_s": flops / t / 1e12,
               "mfu": flops / t / peak if peak else None}
        if k != N_LAYERS:
            row["measured_ratio"] = statistics.median(a / f for a, f in zip(times[k], times[N_LAYERS]))
            row["analytic_ratio"] = flops / step_flops(dims, N_LAYERS, b.tokens, n_masked)
            row["deviation"] = row["measured_ratio"] / row["analytic_ratio"] - 1
        rows.append(row)
        log(f"  {'compiled' if compiled else 'eager'} k={k:2d}: {t * 1e3:7.2f} ms  {row['tokens_per_s']:,.0f} tok/s  "
            f"{row['tflops_per_s']:.1f} TFLOP/s" + (f"  MFU {100 * row['mfu']:.1f}%" if peak else ""))
    mem = torch.cuda.max_memory_allocated() / 2**30
    b.close()
    del b
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"compiled": compiled, "batch": batch, "micro": micro, "rows": rows, "peak_mem_gib": mem}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--micro", type=int, default=None, help="micro-batch (default: the whole batch)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (none found).", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else print
    name = torch.cuda.get_device_name()
    log(f"{name}, torch {torch.__version__}, BERT-base bf16, batch {a.batch} x {a.seq_len}")
    results = [measure(m == "compiled", a.batch, a.micro or a.batch, a.seq_len, (6, 8, 10), a.rounds, a.warmup, log)
               for m in a.modes.split(",")]
    doc = {"gpu": name, "torch": torch.__version__, "mfu_target": MFU_TARGET, "results": results}
    if a.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"\n{name}: BERT-base, bf16, batch {a.batch} x {a.seq_len}, medians of {a.rounds} interleaved rounds")
    print(f"{'mode':<9} {'path':>4} {'ms/step':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'t_k/t_12':>8} {'FLOPs':>6} {'off by':>7}")
    for res in results:
        for r in res["rows"]:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
            extra = (f"{r['measured_ratio']:>8.3f} {r['analytic_ratio']:>6.3f} {r['deviation']:>+7.1%}"
                     if "measured_ratio" in r else "")
            print(f"{'compiled' if res['compiled'] else 'eager':<9} {r['k']:>4} {r['step_s'] * 1e3:>8.2f} "
                  f"{r['tokens_per_s']:>10,.0f} {r['tflops_per_s']:>8.1f} {mfu:>6} {extra}")
        print(f"{'':<9} peak memory {res['peak_mem_gib']:.1f} GiB")
    best = max(r["mfu"] or 0 for res in results for r in res["rows"] if r["k"] == N_LAYERS)
    print(f"\nbest full-model MFU {100 * best:.1f}% (target {100 * MFU_TARGET:.0f}%): "
          f"{'PASS' if best >= MFU_TARGET else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
