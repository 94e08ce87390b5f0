"""GPU benchmark (issue 19): one script, about 4 minutes on an H100/H200, one table of ratios.

What it measures, in this order (each phase time-boxed, a global deadline over all of them):
1. BERT-base (12 x 768, vocab 30522), bf16, sequence 128: tokens/s and MFU of one training step
   for the full model and 6/8/10-layer RaPTr paths, eager, with transformers' BertForMaskedLM
   (attn_implementation="sdpa", bf16 autocast, fused AdamW, same clipping) interleaved in the same
   rounds for the raptr/HF tokens/s ratio;
2. the same raptr rows compiled block by block (`train.compile`);
3. the real trainer: a short `raptr pretrain` of recipes/bert-base-raptr.toml on generated text
   (bench/gpu_trainer.py), for `data_share` (the share of step time the loop waits for its batch)
   and peak GPU memory (torch.cuda.max_memory_allocated) against the `--dry-run` estimate;
4. the same as 1-2 for a 24 x 1024 model (paths 12/16/20 of 24).

A step is the Trainer's hot path: the batch from the prefetch thread (masked on the host), forward
and backward under autocast with the head on masked positions only, clipping with the finite check
(the step's one host sync), fused AdamW, zero_grad. Configurations are interleaved round-robin
after warm-up rounds; each step is timed with CUDA events read after each round, so timing adds no
sync of its own; figures are medians over rounds (ratios: medians of the per-round ratio). Model
FLOPs are the analytic `flops.step_flops` (forward + backward, attention scores included, head on
masked positions only); MFU = model FLOP/s / the GPU's dense peak (`budget.GPU_PEAKS`, or --peak).

Without CUDA (or with --cpu-smoke) it runs the same phases and table on the CPU at a tiny scale
(12 x 64 and 24 x 64, vocabulary 1000, batch 4 x 32, fp32, eager): that exercises the code paths,
never the targets, and never writes docs/gpu-results.json.

    python bench/gpu.py --json      # on a GPU: the table, and docs/gpu-results.json
    python bench/gpu.py --cpu-smoke --json-out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = REPO / "docs" / "gpu-results.json"
sys.path.insert(0, str(HERE))  # run as a script: import siblings
try:
    import raptr_cli  # noqa: F401
except ImportError:  # a device machine with the working tree but raptr not installed
    sys.path.insert(0, str(REPO / "src"))

from gpu_steps import measure  # noqa: E402
from gpu_table import print_table, table  # noqa: E402
from raptr_cli.train.throughput import device_peak  # noqa: E402


@dataclass
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    ks: tuple[int, ...]  # path lengths timed against the full model


@dataclass
class Scale:
    base: ModelSpec
    large: ModelSpec
    batch: int
    seq_len: int
    precision: str
    rounds: int
    large_rounds: int
    warmup: int
    slice_s: float  # time box of one phase's timed rounds
    trainer: dict = field(default_factory=dict)  # gpu_trainer.trainer_run keywords


GPU = Scale(
    ModelSpec("BERT-base 12x768", 12, 768, 12, 30522, (6, 8, 10)),
    ModelSpec("24x1024", 24, 1024, 16, 30522, (12, 16, 20)),
    batch=256,
    seq_len=128,
    precision="bf16",
    rounds=20,
    large_rounds=10,
    warmup=3,
    slice_s=20.0,
    trainer={"steps": 80, "log_every": 5},
)
SMOKE = Scale(
    ModelSpec("smoke 12x64", 12, 64, 1, 1000, (6, 8, 10)),
    ModelSpec("smoke 24x64", 24, 64, 1, 1000, (12, 16, 20)),
    batch=4,
    seq_len=32,
    precision="fp32",
    rounds=3,
    large_rounds=2,
    warmup=1,
    slice_s=5.0,
    trainer={
        "steps": 8,
        "log_every": 1,
        "vocab_size": 1000,
        "n_words": 8000,
        "model": {"hidden_size": 64, "num_heads": 1, "intermediate_size": 256},
    },
)


def device_name(cuda: bool) -> str:
    if cuda:
        return torch.cuda.get_device_name()
    return f"CPU smoke ({platform.machine()}, {os.cpu_count()} cores): not GPU figures"


def run(a: argparse.Namespace, log=print) -> dict:
    cuda = torch.cuda.is_available() and not a.cpu_smoke
    s = GPU if cuda else SMOKE
    if a.batch:
        s = replace(s, batch=a.batch)
    device = "cuda" if cuda else "cpu"
    t_start = time.perf_counter()
    deadline = t_start + a.budget_s
    notes: list[str] = []
    if not cuda:
        notes.append("CPU smoke: a tiny scale that exercises the code paths; targets apply on a GPU only")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = a.peak * 1e12 if a.peak else device_peak(torch.device(device), s.precision)
    if peak is None:
        notes.append("no dense peak known for this device: MFU left out (pass --peak TFLOPS)")
    modes = [m for m in a.modes.split(",") if m] if a.modes else (["eager", "compiled"] if cuda else ["eager"])
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
        notes.append(
            "transformers is not installed: the raptr/HF rows are skipped "
            "(install it, or carry its wheel: docs/benchmarks.md)"
        )
    only = set(a.only.split(",")) if a.only else {"base", "trainer", "large"}
    doc = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(cuda),
        "cuda": cuda,
        "cpu_smoke": not cuda,
        "torch": torch.__version__,
        "transformers": hf_version,
        "command": "python bench/gpu.py " + " ".join(a.argv),
        "config": asdict(s),
        "peak_tflops": peak / 1e12 if peak else None,
        "budget_s": a.budget_s,
        "base": {},
        "large": {},
        "trainer": None,
        "notes": notes,
    }
    log(
        f"{doc['device']}, torch {torch.__version__}, {s.precision}, batch {s.batch} x {s.seq_len}, "
        f"modes {', '.join(modes)}, budget {a.budget_s:.0f} s"
    )

    def left() -> float:
        return deadline - time.perf_counter()

    def phase(name: str, need_s: float) -> bool:
        if name.split()[0] not in only:
            return False
        if left() < need_s:
            notes.append(
                f"{name}: skipped, {left():.0f} s left of the {a.budget_s:.0f} s budget (it needs about {need_s:.0f} s)"
            )
            log(f"== {name}: skipped (deadline)")
            return False
        log(f"== {name}")
        return True

    def guarded(name: str, fn):
        """A failing phase (out of memory, a missing kernel) is reported and the others still run:
        one device session must not lose every figure to one error."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 (reported in the table's notes and on stderr)
            traceback.print_exc()
            notes.append(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            if cuda:
                torch.cuda.empty_cache()
            return None

    need = lambda gpu_s: gpu_s if cuda else 0.5  # rough minimum of a phase; CPU smoke: always run
    for i, mode in enumerate(modes):
        if phase(f"base {mode}", need(15 if mode == "eager" else 45)):
            res = guarded(
                f"base {mode}",
                lambda mode=mode, i=i: measure(
                    s.base,
                    mode == "compiled",
                    s,
                    device,
                    s.rounds,
                    deadline,
                    peak,
                    with_hf=i == 0 and hf_version is not None,
                    log=log,
                ),
            )
            if res:
                doc["base"][mode] = res
    rec = recommended(doc["base"], s)
    doc["recommended_mode"] = rec
    if phase("trainer", need(35)):
        from gpu_trainer import trainer_run

        with tempfile.TemporaryDirectory(prefix="raptr-gpu-bench-") as tmp:
            doc["trainer"] = guarded(
                "trainer",
                lambda: trainer_run(
                    Path(tmp),
                    cuda=cuda,
                    batch=s.batch,
                    micro=a.micro or s.batch,
                    seq_len=s.seq_len,
                    compiled=rec == "compiled",
                    log=log,
                    **s.trainer,
                ),
            )
        if doc["trainer"]:
            notes += doc["trainer"].pop("notes")
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    for mode in modes:
        if phase(f"large {mode}", need(15 if mode == "eager" else 45)):
            res = guarded(
                f"large {mode}",
                lambda mode=mode: measure(
                    s.large, mode == "compiled", s, device, s.large_rounds, deadline, peak, with_hf=False, log=log
                ),
            )
            if res:
                doc["large"][mode] = res
    doc.update(summary(doc, s))
    doc["table"] = table(doc, s, cuda)
    doc["elapsed_s"] = time.perf_counter() - t_start
    return doc


def recommended(base: dict, s: Scale) -> str | None:
    """The faster mode on the full model (compiled pays on GPUs, not on the CPU box)."""
    if not base:
        return None
    return min(base, key=lambda m: base[m]["paths"][str(s.base.layers)]["step_s"])


def summary(doc: dict, s: Scale) -> dict:
    """The headline keys of docs/gpu-results.json."""
    out: dict = {}
    for key, spec in (("", s.base), ("_large", s.large)):
        res = doc["base" if not key else "large"]
        mode = doc["recommended_mode"] if doc["recommended_mode"] in res else next(iter(res), None)
        r = res.get(mode)
        out[f"mode{key}"] = mode
        out[f"mfu_full{key}"] = r["paths"][str(spec.layers)]["mfu"] if r else None
        out[f"path_ratio_vs_flops{key}"] = {str(k): r["paths"][str(k)]["ratio_vs_flops"] for k in spec.ks} if r else {}
    hf_res = next((r for r in doc["base"].values() if "hf" in r), None)
    out["vs_hf"] = hf_res["hf"]["raptr_over_hf"] if hf_res else None
    rec = doc["base"].get(doc["recommended_mode"])
    out["vs_hf_recommended"] = (
        hf_res["hf"]["step_s"] / rec["paths"][str(s.base.layers)]["step_s"] if hf_res and rec else None
    )
    tr = doc["trainer"] or {}
    out["data_share"] = tr.get("data_share")
    out["peak_memory_gib"] = tr.get("peak_memory_gib")
    out["memory_estimate_gib"] = tr.get("estimate_gib")
    out["memory_estimate_over_peak"] = tr["estimate_gib"] / tr["peak_memory_gib"] if tr.get("peak_memory_gib") else None
    return out


def _finite_or_none(x):
    """NaN/inf -> None (JSON has neither), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def output_path(json_flag: bool, json_out: str | None, cuda: bool) -> str | None:
    """Where the JSON goes: --json-out; else with --json docs/gpu-results.json on a GPU and stdout
    ("-") on the CPU, so CPU figures never land in the committed GPU results by default."""
    if json_out:
        return json_out
    if not json_flag:
        return None
    return str(RESULTS) if cuda else "-"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--json",
        action="store_true",
        help=f"write the results as JSON: {RESULTS.relative_to(REPO)} on a GPU, stdout on the CPU",
    )
    ap.add_argument("--json-out", default=None, help="write the JSON here instead ('-' = stdout)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the tiny CPU scale even where CUDA is available")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=220.0,
        help="global deadline in seconds (default 220: with start-up and the last phase's overrun, ~4 minutes)",
    )
    ap.add_argument(
        "--modes", default=None, help="comma list of eager, compiled (default: both on a GPU, eager on CPU)"
    )
    ap.add_argument("--only", default=None, help="comma list of phases: base, trainer, large (default: all)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 256; CPU smoke 4)")
    ap.add_argument("--micro", type=int, default=None, help="trainer micro-batch (default: the whole batch)")
    ap.add_argument("--peak", type=float, default=None, help="dense peak TFLOP/s for MFU (default: the table's)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    a = ap.parse_args(argv)
    a.argv = argv
    cuda = torch.cuda.is_available() and not a.cpu_smoke
    out = output_path(a.json, a.json_out, cuda)
    if out not in (None, "-") and not cuda and Path(out).resolve() == RESULTS.resolve():
        print(
            f"bench/gpu.py: refusing to write CPU figures to {RESULTS.relative_to(REPO)} (it holds GPU "
            "results only); give another --json-out path",
            file=sys.stderr,
        )
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    quiet = out == "-"
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if quiet else (lambda m: print(m, flush=True))
    doc = run(a, log)
    print_table(doc, file=sys.stderr if quiet else sys.stdout)
    text = json.dumps(_finite_or_none(doc), indent=2, allow_nan=False)
    if out == "-":
        print(text)
    elif out:
        Path(out).write_text(text + "\n")
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
