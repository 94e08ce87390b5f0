"""Does dropping heads and MLP units save what the FLOPs model says? Step time of a width subnetwork
(half the attention heads and half the MLP units of every block) against the full step of the same
12 x 256 BERT, next to the analytic FLOPs ratio (issue 18; target: within 10%).

The step is the Trainer's hot path, as bench/path_ratio.py times it (dynamic masking,
`forward_backward`, clipping, AdamW), plus what a width step adds: the subnet draw
(`Plan.subnet`, per block a seeded subset of heads and units) and the masked update around the
AdamW step (`train.width.masked_update`, which restores the dropped slices' weights and moments).
Full and narrow steps alternate after a warmup, so machine noise hits both alike; the measured ratio
is the median over rounds of t_narrow / t_full of the same round. The analytic ratio is
`flops.step_flops(dims, 12, tokens, n_masked, 0.5, 0.5) / step_flops(dims, 12, tokens, n_masked)`
(head on the masked positions included). What it cannot see: the weight gathers, the masked
update and AdamW over every parameter are fixed costs the FLOPs model does not count.

    python bench/width_ratio.py            # ~1 minute on 2 idle CPU cores
    python bench/width_ratio.py --quick
    python bench/width_ratio.py --json --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

from path_ratio import SECTIONS, StepBench, busy_note
from raptr_cli.flops import step_flops
from raptr_cli.planning import model_dims
from raptr_cli.schedule import ScheduleConfig, StageConfig, build_plan
from raptr_cli.train.step import forward_backward
from raptr_cli.train.width import masked_update

TOLERANCE = 0.10
HIDDEN, LAYERS, HEADS = 256, 12, 4


class WidthBench(StepBench):
    """StepBench whose step runs a subnet (drawn per step) with the masked AdamW update."""

    def narrow_step(self, subnet) -> dict[str, float]:
        clock = self._clock
        c0, t0 = time.process_time(), clock()
        inputs, labels, n = self.batches.get(self.n_step)
        t1 = clock()
        batch = {"input_ids": inputs, "labels": labels}
        loss = forward_backward(
            self.model, batch, n, self.micro, None, None, self.precision, subnet if subnet.narrow else None
        )
        t2 = clock()
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], 1.0)
        assert math.isfinite(float(norm)) and math.isfinite(float(loss))
        t3 = clock()
        with masked_update(self.opt, self.model, subnet):
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t4, c4 = clock(), time.process_time()
        self.n_step += 1
        return {
            "mask": t1 - t0,
            "fwd_bwd": t2 - t1,
            "clip": t3 - t2,
            "optim": t4 - t3,
            "total": t4 - t0,
            "cpu": c4 - c0,
        }


def per_step(
    seq_len: int = 128, batch: int = 16, vocab: int = 8192, rounds: int = 6, warmup: int = 1, log=print
) -> dict:
    b = WidthBench(HIDDEN, seq_len, batch, vocab, layers=LAYERS, heads=HEADS)
    cfg = ScheduleConfig(method="raptr", stages=[StageConfig(fraction=1.0, heads_fraction=0.5, mlp_fraction=0.5)])
    widths = (HEADS, b.cfg.intermediate_size)
    narrow = build_plan(cfg, LAYERS, 10_000, batch * seq_len, 0, widths)
    full = build_plan(
        ScheduleConfig(method="raptr", stages=[StageConfig(fraction=1.0, path_length=LAYERS)]),
        LAYERS,
        10_000,
        batch * seq_len,
        0,
        widths,
    )
    times: dict[str, list[dict]] = {"full": [], "half": []}
    for r in range(warmup + rounds):
        for name, plan in (("full", full), ("half", narrow)):
            t0 = time.perf_counter()
            sub = plan.subnet(r)
            draw = time.perf_counter() - t0
            t = b.narrow_step(sub)
            t["total"] += draw  # the draw is part of a width step's cost
            if r >= warmup:
                times[name].append(t)
        if r >= warmup:
            log(
                f"  round {r + 1 - warmup}/{rounds}: full {times['full'][-1]['total']:.3f}s  "
                f"half {times['half'][-1]['total']:.3f}s"
            )
    b.close()
    dims = model_dims(b.cfg, seq_len)
    n_masked = int((b.masked(0)[1] != -100).sum())
    analytic = step_flops(dims, LAYERS, b.tokens, n_masked, 0.5, 0.5) / step_flops(dims, LAYERS, b.tokens, n_masked)
    measured = statistics.median(h["total"] / f["total"] for h, f in zip(times["half"], times["full"]))
    best = min(t["total"] for t in times["half"]) / min(t["total"] for t in times["full"])
    cpu = statistics.median(h["cpu"] / f["cpu"] for h, f in zip(times["half"], times["full"]))
    med = {k: {s: statistics.median(t[s] for t in v) for s in (*SECTIONS, "total")} for k, v in times.items()}
    dev = measured / analytic - 1
    return {
        "config": {
            "hidden": HIDDEN,
            "layers": LAYERS,
            "heads": HEADS,
            "intermediate": b.cfg.intermediate_size,
            "seq_len": seq_len,
            "batch": batch,
            "vocab": vocab,
            "rounds": rounds,
            "threads": torch.get_num_threads(),
            "n_masked": n_masked,
        },
        "measured_ratio": measured,
        "analytic_ratio": analytic,
        "deviation": dev,
        "pass": abs(dev) <= TOLERANCE,
        "best_of_ratio": best,
        "cpu_time_ratio": cpu,
        "sections_s": med,
    }


def run(quick: bool = False, rounds: int | None = None, log=print) -> dict:
    loads = [os.getloadavg()[0]]
    log(f"width: {LAYERS} x {HIDDEN} BERT, {HEADS} heads, full step vs half the heads and half the MLP units")
    res = {"per_step": per_step(rounds=rounds or (3 if quick else 6), warmup=1, log=log)}
    loads.append(os.getloadavg()[0])
    p = res["per_step"]
    res["checks"] = [
        {
            "name": "step time, half heads + half MLP units / full",
            "measured": p["measured_ratio"],
            "analytic": p["analytic_ratio"],
            "deviation": p["deviation"],
            "pass": p["pass"],
        }
    ]
    res["tolerance"] = TOLERANCE
    res["load_average"] = loads
    res["busy"] = busy_note(loads)
    return res


def print_report(res: dict, out=sys.stdout) -> None:
    p, w = res["per_step"], (lambda s="": print(s, file=out))
    c = p["config"]
    w(
        f"\nWidth savings: {c['layers']} x {c['hidden']} BERT ({c['heads']} heads, d_ff {c['intermediate']}), seq "
        f"{c['seq_len']}, batch {c['batch']}, vocab {c['vocab']}, {c['threads']} threads, {c['rounds']} rounds"
    )
    w(
        f"half heads + half units / full: measured {p['measured_ratio']:.4f}, FLOPs {p['analytic_ratio']:.4f} "
        f"({p['deviation']:+.2%}) {'PASS' if p['pass'] else 'FAIL'}; best-of {p['best_of_ratio']:.4f}, "
        f"cpu-time {p['cpu_time_ratio']:.4f}"
    )
    w(
        "sections (median ms): "
        + " | ".join(f"{k}: " + " ".join(f"{s} {v[s] * 1e3:.0f}" for s in SECTIONS) for k, v in p["sections_s"].items())
    )
    if res.get("busy"):
        w(res["busy"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else print
    res = run(quick=a.quick, rounds=a.rounds, log=log)
    print(json.dumps(res, indent=2)) if a.json else print_report(res)
    return 0 if all(c["pass"] for c in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
