"""Does skipping layers save what the FLOPs model says? Measured step time of k-layer RaPTr paths
against the analytic FLOPs ratio, and a whole tiny RaPTr run against a baseline run.

Part 1 (per-step): a 12-layer BERT (hidden 128 by default, seq_len 128, batch 32, vocab 8192,
dropout 0.1) runs the real hot path of one optimizer step, as `train.loop.Trainer` does: dynamic
masking (`mask_tokens`), `forward_backward`, gradient clipping, AdamW (`build_optimizer`), zero_grad.
Paths of k = 6, 8, 10 layers (layers 0 and 11 fixed, the rest a seeded uniform subset, exactly
`schedule.sample_subset`) are timed against the full 12-layer step. Configurations are interleaved
round-robin (12, 6, 8, 10, 12, 6, ...) after a warmup so machine noise hits all alike; the
measured ratio is the median over rounds of t_k / t_12 *of the same round*. The analytic ratio is
`flops.step_flops(dims, k, tokens, n_masked) / step_flops(dims, 12, ...)` (whole model: head on
masked positions included). Target: |measured / analytic - 1| <= 10%.

Every section of a step is timed, and t(k) = a + b k is fitted to the medians: `a` is the fixed
per-step cost (embeddings, head, masking, clipping, AdamW over *all* parameters), which the FLOPs
model counts only partly (head matmuls) or not at all. That fit is the diagnosis when a ratio misses.

Part 2 (whole run): `recipes/bert-tiny-raptr.toml` (6-8-10-12) against `bert-tiny-baseline.toml`,
N steps each (default 40: 10 per stage) through the Trainer, in two child processes driven in
lockstep, one optimizer step at a time (a metrics sink blocks after each step until the parent
says go), so both runs see the same machine. Training time = sum over stages of (steps x median
step time); steps that also ran an eval are left out of the medians, so the full-model evals
RaPTr runs at each stage end (4 vs the baseline's 1) stay out of the ratio. Total step time
(stage-end evals included) and the CPU-time ratio are printed beside it.

    python bench/path_ratio.py            # ~2.5 minutes on 2 idle CPU cores
    python bench/path_ratio.py --quick    # ~1 minute
    python bench/path_ratio.py --json     # one JSON document on stdout
    python bench/path_ratio.py --threads 1  # on a busy machine: 2 OpenMP threads stall when one
                                            # is descheduled, 1 thread degrades gracefully
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from raptr_cli.flops import step_flops
from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.bert.model import BertForMaskedLM
from raptr_cli.objectives.mlm import mask_tokens
from raptr_cli.planning import model_dims
from raptr_cli.recipe import OptimConfig
from raptr_cli.schedule import sample_subset, step_generator
from raptr_cli.train.optim import build_optimizer
from raptr_cli.train.prefetch import Prefetcher
from raptr_cli.train.step import forward_backward

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.10  # |measured / analytic - 1| must stay within this
N_LAYERS, FIXED = 12, [0, 11]
SPECIALS = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK], as the WordPiece trainer assigns them
MASK_ID = 4
SECTIONS = ("mask", "fwd_bwd", "clip", "optim")


class StepBench:
    """One model + AdamW; `step(layers)` runs one timed optimizer step (the Trainer's hot path)."""

    def __init__(
        self,
        hidden: int,
        seq_len: int,
        batch: int,
        vocab: int,
        seed: int = 0,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        micro: int | None = None,
        layers: int = N_LAYERS,
        heads: int | None = None,
    ):
        torch.manual_seed(seed)
        self.cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads or max(1, hidden // 64),
            intermediate_size=4 * hidden,
            max_position_embeddings=max(512, seq_len),
        )  # dropout 0.1: the defaults
        self.model = BertForMaskedLM(self.cfg).to(device).train()
        self.device, self.precision, self.micro = torch.device(device), precision, micro or batch
        self.opt = build_optimizer(self.model, OptimConfig(lr=1e-4))
        self.params = list(self.model.parameters())
        g = torch.Generator().manual_seed(seed)
        # (batch, seq_len) token ids: [CLS] ... [SEP] around uniform non-special ids
        self.ids = torch.randint(len(SPECIALS), vocab, (batch, seq_len), generator=g)
        self.ids[:, 0], self.ids[:, -1] = 2, 3
        self.vocab, self.tokens = vocab, batch * seq_len
        self.n_step = 0
        # as the Trainer does: on a GPU the next batches are masked in a background thread
        cuda = self.device.type == "cuda"
        self.batches = Prefetcher(self._batch, 0, 2**62, pin=cuda, background=cuda)

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        inputs, labels = self.masked(step)
        return inputs, labels, int((labels != -100).sum())

    def close(self) -> None:
        self.batches.close()

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def masked(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(
            self.ids,
            seed=0,
            step=step,
            mlm_probability=0.15,
            mask_id=MASK_ID,
            vocab_size=self.vocab,
            special_ids=SPECIALS,
        )

    def step(self, layers: list[int] | None) -> dict[str, float]:
        """Seconds per section of one optimizer step; `layers=None` is the full model (as the
        Trainer passes it). CPU ops are synchronous, so perf_counter brackets them exactly; on a GPU
        each reading waits for the queued kernels first (the Trainer syncs at the same points)."""
        clock = self._clock
        c0, t0 = time.process_time(), clock()
        inputs, labels, n = self.batches.get(self.n_step)  # "mask": the time spent waiting for it
        t1 = clock()
        batch = {"input_ids": inputs, "labels": labels}
        loss = forward_backward(self.model, batch, n, self.micro, layers, None, self.precision)
        t2 = clock()
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], 1.0)
        assert math.isfinite(float(norm)) and math.isfinite(float(loss))  # the Trainer's guard
        t3 = clock()
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


def path_for(k: int, round_: int, n_layers: int = N_LAYERS) -> list[int] | None:
    """A k-layer RaPTr path (fixed first and last layer plus a seeded uniform subset); None = all."""
    if k == n_layers:
        return None
    return sample_subset(n_layers, [0, n_layers - 1], k, step_generator(1234 + k, round_))


def per_step(
    hidden: int = 128,
    seq_len: int = 128,
    batch: int = 32,
    vocab: int = 8192,
    ks: tuple[int, ...] = (6, 8, 10),
    rounds: int = 10,
    warmup: int = 2,
    log=print,
) -> dict:
    """Interleaved timing of k-layer paths vs the full step; returns ratios and a section breakdown."""
    b = StepBench(hidden, seq_len, batch, vocab)
    order = (N_LAYERS, *ks)
    for r in range(warmup):  # allocator, thread pool and AdamW state warm up on every config
        for k in order:
            b.step(path_for(k, r))
    times: dict[int, list[dict[str, float]]] = {k: [] for k in order}
    for r in range(rounds):
        for k in order:
            times[k].append(b.step(path_for(k, warmup + r)))
        log(f"  round {r + 1}/{rounds}: " + "  ".join(f"k={k} {times[k][-1]['total']:.3f}s" for k in order))
    b.close()

    dims = model_dims(b.cfg, seq_len)
    n_masked = int((b.masked(0)[1] != -100).sum())  # ~15% of the non-special positions
    full = step_flops(dims, N_LAYERS, b.tokens, n_masked)
    med = {k: {s: statistics.median(t[s] for t in times[k]) for s in (*SECTIONS, "total", "cpu")} for k in order}
    # least-squares t(k) = a + b k over the medians: a = fixed per-step cost, b = cost per layer
    xs, ys = list(order), [med[k]["total"] for k in order]
    xm, ym = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - xm) * (y - ym) for x, y in zip(xs, ys)) / sum((x - xm) ** 2 for x in xs)
    fixed = ym - slope * xm
    rows = []
    for k in ks:
        measured = statistics.median(a["total"] / f["total"] for a, f in zip(times[k], times[N_LAYERS]))
        # CPU seconds of this process: immune to being descheduled on a shared machine (with one
        # thread it is the compute time; with several it also counts OpenMP spin-waits)
        cpu = statistics.median(a["cpu"] / f["cpu"] for a, f in zip(times[k], times[N_LAYERS]))
        # best-of ratio: interference only ever adds time, so min/min is the noise-free estimate
        # when the machine is shared (a median that misses while this agrees means noise)
        best = min(t["total"] for t in times[k]) / min(t["total"] for t in times[N_LAYERS])
        analytic = step_flops(dims, k, b.tokens, n_masked) / full
        dev = measured / analytic - 1
        rows.append(
            {
                "k": k,
                "measured_ratio": measured,
                "analytic_ratio": analytic,
                "deviation": dev,
                "pass": abs(dev) <= TOLERANCE,
                "median_step_s": med[k]["total"],
                "cpu_time_ratio": cpu,
                "best_of_ratio": best,
            }
        )
    head_share = (step_flops(dims, 0, b.tokens, n_masked)) / full  # FLOPs the model counts as fixed
    return {
        "config": {
            "hidden": hidden,
            "layers": N_LAYERS,
            "seq_len": seq_len,
            "batch": batch,
            "vocab": vocab,
            "dropout": b.cfg.hidden_dropout,
            "rounds": rounds,
            "warmup": warmup,
            "threads": torch.get_num_threads(),
            "n_masked": n_masked,
        },
        "full_step_s": med[N_LAYERS]["total"],
        "rows": rows,
        "sections_s": {str(k): med[k] for k in order},
        "fit": {
            "fixed_s": fixed,
            "per_layer_s": slope,
            "fixed_share_of_full": fixed / med[N_LAYERS]["total"],
            "analytic_fixed_share": head_share,
        },
    }


class LockstepClock:
    """Metrics sink of a whole-run child process: after every training row it reports READY on
    stdout and blocks until the parent writes a line on stdin, so two runs advance one step at a
    time, alternately. A step is timed from its "go" to its training row; a step whose interval
    also held an eval or a checkpoint (RaPTr evals the full model at each stage end) is marked."""

    def __init__(self):
        self.steps: list[dict] = []
        self.started = False
        self._go()

    def _go(self) -> None:
        if self.started:
            print("READY", flush=True)
            if not sys.stdin.readline():  # EOF: the parent is gone, so stop rather than train on
                os._exit(1)
        self.t = (time.perf_counter(), time.process_time())
        self.dirty = False

    def log(self, row: dict) -> None:
        now = (time.perf_counter(), time.process_time())
        if "loss" in row and "event" not in row:
            self.steps.append(
                {
                    "stage": row["stage"],
                    "flops": row["flops"],
                    "clean": not self.dirty,
                    "wall": now[0] - self.t[0],
                    "cpu": now[1] - self.t[1],
                }
            )
            self._go()
        elif "eval_loss" in row and not self.started:  # the step-0 eval: training starts next
            self.started = True
            self._go()
        elif "eval_loss" in row or row.get("event") == "checkpoint":
            self.dirty = True

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        """Training seconds = sum over stages of (steps x median clean step time)."""
        stages: dict[int, list[dict]] = {}
        for x in self.steps:
            stages.setdefault(x["stage"], []).append(x)
        out = {
            "flops": self.steps[-1]["flops"],
            "train_s": 0.0,
            "cpu_s": 0.0,
            "stages": {},
            "all_steps_s": sum(x["wall"] for x in self.steps),
        }  # evals included
        for k, xs in stages.items():
            clean = [x for x in xs if x["clean"]] or xs
            wall, cpu = (statistics.median(x[c] for x in clean) for c in ("wall", "cpu"))
            out["train_s"] += len(xs) * wall
            out["cpu_s"] += len(xs) * cpu
            out["stages"][k] = {"steps": len(xs), "median_step_s": wall}
        return out


def _child(name: str, steps: int, out: str) -> None:
    """One whole run under the parent's lockstep (`--lockstep-child`); prints DONE <summary>."""
    from accelerate import Accelerator

    from raptr_cli.recipe import load_recipe
    from raptr_cli.train.loop import Trainer
    from raptr_cli.train.rundir import prepare_out_dir

    r = load_recipe(
        REPO / "recipes" / f"bert-tiny-{name}.toml",
        [
            f"train.steps={steps}",
            "train.eval_every=0",
            "train.eval_batches=1",
            "train.checkpoint_every=0",
            "train.log_every=1",
            "log.console=none",
            "optim.warmup_steps=1",
        ],
    )
    prepare_out_dir(Path(out), resume=False, overwrite=True)
    clock = LockstepClock()
    Trainer(r, Path(out), Accelerator(cpu=True), console=clock).run()
    print("DONE " + json.dumps(clock.summary()), flush=True)


def whole_run(steps: int = 40, log=print) -> dict:
    """RaPTr 6-8-10-12 vs baseline (the tiny demo recipes), `steps` steps each through the Trainer.

    The two runs live in two processes driven in lockstep, one optimizer step at a time, the
    first mover alternating each step: sequential runs on a shared machine saw +-25% drift in step
    time over tens of seconds, which no ordering of whole runs cancels."""
    import subprocess

    from raptr_cli.data.corpus import corpus_dir

    if not (corpus_dir("shakespeare") / "MANIFEST.json").is_file():
        return {"skipped": "the Shakespeare corpus is not cached: run `make data` first"}
    names = ("baseline", "raptr")
    res: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="raptr-bench-") as tmp:
        errs = {n: open(Path(tmp) / f"{n}.err", "w") for n in names}
        procs = {
            n: subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--lockstep-child",
                    n,
                    str(steps),
                    str(Path(tmp) / n),
                    "--threads",
                    str(torch.get_num_threads()),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errs[n],
                text=True,
            )
            for n in names
        }

        def until(n: str, tag: str) -> str:
            for line in procs[n].stdout:  # other output on stdout is skipped
                if line.startswith(tag):
                    return line[len(tag) :].strip()
            raise RuntimeError(f"whole-run child {n!r} died:\n" + (Path(tmp) / f"{n}.err").read_text()[-3000:])

        def go(n: str) -> None:
            procs[n].stdin.write("go\n")
            procs[n].stdin.flush()

        log(f"  baseline and raptr, {steps} steps each, alternating step by step ...")
        try:
            for n in names:
                until(n, "READY")  # both built, both past the step-0 eval
            for i in range(steps):  # every step ends in READY (the last one too)
                for n in names if i % 2 == 0 else names[::-1]:
                    go(n)
                    until(n, "READY")
            for n in names:  # let both finish: final eval, checkpoint, final/ (untimed)
                go(n)
            for n in names:
                res[n] = json.loads(until(n, "DONE"))
                procs[n].wait()
        finally:
            for n, p in procs.items():
                if p.poll() is None:
                    p.kill()
                    p.wait()
                errs[n].close()
    b, r = res["baseline"], res["raptr"]
    measured = r["train_s"] / b["train_s"]
    analytic = r["flops"] / b["flops"]  # same data and masks: exact counts
    dev = measured / analytic - 1
    return {
        "steps": steps,
        "baseline": b,
        "raptr": r,
        "measured_ratio": measured,
        "analytic_ratio": analytic,
        "deviation": dev,
        "pass": abs(dev) <= TOLERANCE,
        "cpu_time_ratio": r["cpu_s"] / b["cpu_s"],
        "ratio_with_evals": r["all_steps_s"] / b["all_steps_s"],
    }


def busy_note(loads: list[float]) -> str | None:
    """Timing ratios assume an otherwise idle machine; say so when the 1-minute load average
    (sampled before and after each part, so mostly other processes' load) says it was not."""
    cores = os.cpu_count() or 1
    if max(loads, default=0.0) > 1.5 * cores:
        return (
            f"machine busy: load average up to {max(loads):.1f} on {cores} cores while timing; other "
            "processes compete for the CPU, so ratios are noisy (rerun on an idle machine, or with "
            "--threads 1, which does not stall on descheduled OpenMP threads)"
        )
    return None


def checks(result: dict) -> list[dict]:
    """Flat (name, measured, analytic, deviation, pass) rows: what bench/run.py prints."""
    rows = [
        {
            "name": f"step time, {r['k']}-layer path / 12",
            "measured": r["measured_ratio"],
            "analytic": r["analytic_ratio"],
            "deviation": r["deviation"],
            "pass": r["pass"],
        }
        for r in result["per_step"]["rows"]
    ]
    w = result.get("whole_run", {})
    if "measured_ratio" in w:
        rows.append(
            {
                "name": f"tiny run 6-8-10-12 / baseline ({w['steps']} steps)",
                "measured": w["measured_ratio"],
                "analytic": w["analytic_ratio"],
                "deviation": w["deviation"],
                "pass": w["pass"],
            }
        )
    return rows


def run(
    quick: bool = False,
    hidden: int = 128,
    rounds: int | None = None,
    run_steps: int | None = None,
    skip_run: bool = False,
    log=print,
) -> dict:
    """Both parts; the dict is what --json prints."""
    loads = [os.getloadavg()[0]]
    log(f"per-step: 12-layer BERT h={hidden}, interleaved k = 12, 6, 8, 10")
    res = {
        "per_step": per_step(hidden=hidden, rounds=rounds or (6 if quick else 10), warmup=1 if quick else 2, log=log)
    }
    loads.append(os.getloadavg()[0])
    if not skip_run:
        log("whole run: bert-tiny-raptr (6-8-10-12) vs bert-tiny-baseline")
        res["whole_run"] = whole_run(steps=run_steps or (20 if quick else 40), log=log)
        loads.append(os.getloadavg()[0])
    res["checks"] = checks(res)
    res["tolerance"] = TOLERANCE
    res["load_average"] = loads
    res["busy"] = busy_note(loads)
    return res


def print_report(res: dict, out=sys.stdout) -> None:
    p = res["per_step"]
    c = p["config"]
    w = lambda s="": print(s, file=out)  # noqa: E731
    w(
        f"\nPath savings: 12-layer BERT h={c['hidden']}, seq {c['seq_len']}, batch {c['batch']}, vocab {c['vocab']}, "
        f"dropout {c['dropout']}, {c['threads']} threads, {c['rounds']} interleaved rounds"
    )
    w(f"full 12-layer step: {p['full_step_s'] * 1e3:.1f} ms (median)")
    w(f"{'k':>3}  {'measured':>9}  {'analytic':>9}  {'meas/anal-1':>11}  result  {'(best-of':>9}  {'cpu-time)':>9}")
    for r in p["rows"]:
        w(
            f"{r['k']:>3}  {r['measured_ratio']:>9.4f}  {r['analytic_ratio']:>9.4f}  {r['deviation']:>+11.2%}  "
            f"{'PASS' if r['pass'] else 'FAIL'}    {r['best_of_ratio']:>9.4f}  {r['cpu_time_ratio']:>9.4f}"
        )
    w("measured = median over rounds of t_k / t_12 (same round); best-of = min t_k / min t_12")
    f = p["fit"]
    w(
        f"fit t(k) = {f['fixed_s'] * 1e3:.1f} ms + k x {f['per_layer_s'] * 1e3:.1f} ms: fixed cost is "
        f"{f['fixed_share_of_full']:.1%} of the full step (FLOPs model: {f['analytic_fixed_share']:.1%}, head only)"
    )
    w(
        "sections (median ms): "
        + " | ".join(
            f"k={k}: " + " ".join(f"{s} {v[s] * 1e3:.0f}" for s in SECTIONS) for k, v in p["sections_s"].items()
        )
    )
    wr = res.get("whole_run")
    if wr and "skipped" in wr:
        w(f"\nwhole run: skipped ({wr['skipped']})")
    elif wr:
        b, r = wr["baseline"], wr["raptr"]
        w(
            f"\nWhole tiny run, {wr['steps']} steps each, in lockstep (training time = sum over stages of "
            "steps x median step):"
        )
        w(
            f"  baseline {b['train_s']:.2f} s   raptr 6-8-10-12 {r['train_s']:.2f} s   per-stage raptr step: "
            + ", ".join(f"{v['median_step_s'] * 1e3:.0f} ms" for v in r["stages"].values())
            + f" (baseline {b['stages']['0']['median_step_s'] * 1e3:.0f} ms)"
        )
        w(
            f"  wall ratio {wr['measured_ratio']:.4f} vs FLOPs ratio {wr['analytic_ratio']:.4f} "
            f"({wr['deviation']:+.2%}) {'PASS' if wr['pass'] else 'FAIL'}; cpu-time ratio {wr['cpu_time_ratio']:.4f}; "
            f"all steps incl. the stage-end evals: {wr['ratio_with_evals']:.4f}"
        )
    if res.get("busy"):
        w(f"\nnote: {res['busy']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--lockstep-child"]:  # internal: one whole run, driven by whole_run()
        name, steps, out = argv[1:4]
        torch.set_num_threads(int(argv[5]))
        _child(name, int(steps), out)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run `finally`: stop children, clean up
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and shorter runs (~1 minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ap.add_argument("--hidden", type=int, default=128, help="model width for the per-step part (128 or 256)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 10, quick 6)")
    ap.add_argument("--run-steps", type=int, default=None, help="steps per whole run (default 40, quick 20)")
    ap.add_argument("--skip-run", action="store_true", help="per-step part only")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice, one per core); 1 resists a busy machine",
    )
    a = ap.parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run(a.quick, a.hidden, a.rounds, a.run_steps, a.skip_run, log=log)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)
    return 0 if all(c["pass"] for c in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
