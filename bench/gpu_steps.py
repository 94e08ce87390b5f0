"""The timed steps of bench/gpu.py: raptr's training step (the Trainer's hot path), transformers'
BertForMaskedLM beside it, and the interleaved, time-boxed rounds that measure them."""

from __future__ import annotations

import gc
import math
import statistics
import time

import torch

from path_ratio import StepBench, path_for
from raptr_cli.flops import step_flops
from raptr_cli.planning import model_dims
from raptr_cli.train.loop import compile_blocks
from raptr_cli.train.step import autocast, forward_backward

MIN_ROUNDS = 3  # a phase past its time box still gets this many timed rounds


def _mark(cuda: bool):
    if cuda:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e
    return time.perf_counter()


def _seconds(a, b, cuda: bool) -> float:
    return a.elapsed_time(b) / 1e3 if cuda else b - a


def raptr_step(b: StepBench, layers: list[int] | None) -> None:
    """One optimizer step as train.loop.Trainer runs it (no extra syncs: see the module doc)."""
    inputs, labels, n = b.batches.get(b.n_step)
    loss = forward_backward(b.model, {"input_ids": inputs, "labels": labels}, n, b.micro, layers, None, b.precision)
    norm = torch.nn.utils.clip_grad_norm_([p for p in b.params if p.grad is not None], 1.0)
    if not (math.isfinite(float(norm)) and math.isfinite(float(loss))):  # the Trainer's guard
        raise RuntimeError(f"non-finite step in the benchmark (loss {float(loss)}, grad norm {float(norm)})")
    b.opt.step()
    b.opt.zero_grad(set_to_none=True)
    b.n_step += 1


class HFStep:
    """transformers.BertForMaskedLM of the same shape as a StepBench model, trained as its users
    do: fp32 weights under bf16 autocast (on CPU fp32), head on every position, torch AdamW (fused
    on CUDA, as generous to it as raptr's), the same clipping. Batches are masked ahead and pinned."""

    def __init__(self, b: StepBench):
        import transformers

        c = b.cfg
        self.model = (
            transformers.BertForMaskedLM(
                transformers.BertConfig(
                    vocab_size=c.vocab_size,
                    hidden_size=c.hidden_size,
                    num_hidden_layers=c.num_layers,
                    num_attention_heads=c.num_heads,
                    intermediate_size=c.intermediate_size,
                    max_position_embeddings=c.max_position_embeddings,
                    attn_implementation="sdpa",
                )
            )
            .to(b.device)
            .train()
        )
        cuda = b.device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, **({"fused": True} if cuda else {}))
        self.batches = [tuple(t.pin_memory() if cuda else t for t in b.masked(1000 + i)) for i in range(4)]
        self.device, self.precision, self.i = b.device, b.precision, 0

    def step(self) -> None:
        x, y = (t.to(self.device, non_blocking=True) for t in self.batches[self.i % len(self.batches)])
        self.i += 1
        with autocast(self.device, self.precision):
            loss = self.model(input_ids=x, labels=y).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if not math.isfinite(float(norm)):
            raise RuntimeError("non-finite gradient in the transformers step")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def measure(
    spec, compiled: bool, s, device: str, rounds: int, until: float, peak: float | None, with_hf: bool, log=print
) -> dict:
    """Interleaved rounds of the full model, its k-layer paths (and HF); medians and ratios. `spec`
    is a gpu.ModelSpec, `s` a gpu.Scale (batch, seq_len, precision, warmup, slice_s)."""
    cuda = device == "cuda"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    b = StepBench(
        spec.hidden,
        s.seq_len,
        s.batch,
        spec.vocab,
        device=device,
        precision=s.precision,
        layers=spec.layers,
        heads=spec.heads,
    )
    hf, configs = None, []
    try:
        if compiled:
            compile_blocks(b.model)
        hf = HFStep(b) if with_hf else None
        L = spec.layers
        configs.append((str(L), lambda r: raptr_step(b, None)))
        configs += [(str(k), lambda r, k=k: raptr_step(b, path_for(k, r, L))) for k in spec.ks]
        if hf is not None:
            configs.append(("hf", lambda r: hf.step()))
        for r in range(s.warmup):  # compilation (every block, forward and backward), allocator, AdamW state
            for _, f in configs:
                f(r)
        if cuda:
            torch.cuda.synchronize()
        warm_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {n: [] for n, _ in configs}
        until = min(until, time.perf_counter() + s.slice_s)
        for r in range(rounds):
            marks = []
            for name, f in configs:
                a = _mark(cuda)
                f(s.warmup + r)
                marks.append((name, a, _mark(cuda)))
            if cuda:
                torch.cuda.synchronize()
            for name, a, e in marks:
                times[name].append(_seconds(a, e, cuda))
            if r + 1 >= MIN_ROUNDS and time.perf_counter() > until:
                break
        dims = model_dims(b.cfg, s.seq_len)
        n_masked = int((b.masked(0)[1] != -100).sum())
        full_flops = step_flops(dims, L, b.tokens, n_masked)
        full = times[str(L)]
        res = {
            "model": spec.name,
            "compiled": compiled,
            "rounds": len(full),
            "warmup_s": warm_s,
            "tokens_per_step": b.tokens,
            "n_masked": n_masked,
            "paths": {},
        }
        for k in (L, *spec.ks):
            t = statistics.median(times[str(k)])
            fl = step_flops(dims, k, b.tokens, n_masked)
            row = {
                "step_s": t,
                "tokens_per_s": b.tokens / t,
                "tflops_per_s": fl / t / 1e12,
                "mfu": fl / t / peak if peak else None,
            }
            if k != L:
                row["measured_ratio"] = statistics.median(a / f for a, f in zip(times[str(k)], full))
                row["flops_ratio"] = fl / full_flops
                row["ratio_vs_flops"] = row["measured_ratio"] / row["flops_ratio"]
            res["paths"][str(k)] = row
            log(
                f"  {spec.name} {'compiled' if compiled else 'eager'} k={k:2d}: {t * 1e3:8.2f} ms  "
                f"{row['tokens_per_s']:12,.0f} tok/s"
                + (f"  MFU {row['mfu']:.1%}" if peak else "")
                + (f"  ratio/FLOPs {row['ratio_vs_flops']:.3f}" if k != L else "")
            )
        if hf is not None:
            t = statistics.median(times["hf"])
            res["hf"] = {
                "step_s": t,
                "tokens_per_s": b.tokens / t,
                "mfu": full_flops / t / peak if peak else None,
                "raptr_over_hf": statistics.median(h / f for h, f in zip(times["hf"], full)),
            }
            log(
                f"  transformers BertForMaskedLM (sdpa): {t * 1e3:8.2f} ms  {b.tokens / t:12,.0f} tok/s  "
                f"raptr/HF {res['hf']['raptr_over_hf']:.2f}x"
            )
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        res["wall_s"] = time.perf_counter() - t0
        return res
    finally:
        b.close()
        configs.clear()  # the closures hold the models: free them before the allocator is reset
        b = hf = None  # drop the last references (the closures above are cleared)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
