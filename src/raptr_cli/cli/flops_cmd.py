"""`raptr flops RECIPE.toml`: what a schedule costs, what it saves, and what fits a budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt, RecipeArg, SetOpt

HELP = """FLOPs of a recipe's schedule against the full-model baseline, and budget planning.

\b
Examples:
  raptr flops recipes/bert-base-raptr.toml            # speedup 1.333x (layers only)
  raptr flops recipes/bert-base-raptr.toml --json
  raptr flops recipes/bert-base-raptr.toml --budget 3e18
  raptr flops recipes/bert-base-raptr.toml --budget 200gpu-h --gpu h100 --mfu 0.4
  raptr flops recipes/bert-base-baseline.toml --equal-flops-to recipes/bert-base-raptr.toml
"""


def flops(
    recipe: RecipeArg,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    budget: Annotated[
        str | None, typer.Option("--budget", help="FLOPs (3e18) or GPU-hours (200gpu-h): solve the steps that fit.")
    ] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="GPU for time estimates: a100, h100, h100-pcie, h200, l4, a10g, v100.")
    ] = None,
    mfu: Annotated[float, typer.Option("--mfu", help="Model FLOPs utilisation assumed for time estimates.")] = 0.4,
    n_gpus: Annotated[int, typer.Option("--gpus", help="GPUs the run uses (time estimates).")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Peak to use: bf16, fp16, tf32, fp32.")] = "bf16",
    peak: Annotated[float | None, typer.Option("--peak", help="Override the GPU's dense peak, TFLOP/s.")] = None,
    equal_to: Annotated[
        Path | None, typer.Option("--equal-flops-to", help="Solve steps so this recipe costs what OTHER.toml costs.")
    ] = None,
) -> None:
    from ..budget import budget_flops, gpu_peak, hours, parse_budget, solve_steps
    from ..errors import UserError
    from ..planning import describe_run
    from ..recipe import load_recipe

    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: must be in (0, 1]", hint="A realistic MFU is 0.3-0.5.")
    if n_gpus < 1:
        raise UserError(f"--gpus {n_gpus}: must be >= 1")
    if budget and equal_to:
        raise UserError("--budget and --equal-flops-to are two different targets", hint="Give one.")
    r = load_recipe(recipe, set_ or [])
    plan = describe_run(r)
    peak_flops = gpu_peak(gpu, dtype, peak) if (gpu or peak) else None
    doc = _contract(plan)
    target = None
    if budget:
        target = budget_flops(parse_budget(budget), peak_flops, mfu)
    elif equal_to:
        target = describe_run(load_recipe(equal_to))["total_flops"]
    if target is not None:
        steps = solve_steps(plan["total_flops"], plan["steps"], target)
        solved = describe_run(load_recipe(recipe, [*(set_ or []), f"train.steps={steps}", *_stage_steps(r, steps)]))
        doc["budget"] = {
            "target_flops": target,
            "steps": steps,
            "total_flops": solved["total_flops"],
            "tokens": solved["tokens"],
            "stages": [{"index": s["index"], "steps": s["steps"]} for s in solved["stages"]],
            "set": [f"train.steps={steps}", *_stage_steps(r, steps)],
        }
    if peak_flops is not None:
        f = doc.get("budget", {}).get("total_flops", plan["total_flops"])
        doc["time"] = {
            "gpu": gpu or "custom",
            "dtype": dtype,
            "peak_tflops": peak_flops / 1e12,
            "mfu": mfu,
            "gpus": n_gpus,
            "hours": hours(f, peak_flops, mfu, n_gpus),
            "gpu_hours": hours(f, peak_flops, mfu, n_gpus) * n_gpus,
        }
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
        return
    _print(plan, doc)


def _stage_steps(r, steps: int) -> list[str]:
    """--set lines that rescale the warm-up and stages given in steps or tokens (fractions rescale by
    themselves); the arithmetic is schedule.rescaled_schedule, which shares the loader's stage_ends."""
    from ..schedule import rescaled_schedule

    keys = rescaled_schedule(r.schedule, r.train.steps, r.tokens_per_step, steps)
    out = []
    if "stages" in keys:
        inline = ", ".join("{" + ", ".join(f"{k} = {v}" for k, v in row.items()) + "}" for row in keys["stages"])
        out.append(f"schedule.stages=[{inline}]")
    if "full_warmup_steps" in keys:
        out.append(f"schedule.full_warmup_steps={keys['full_warmup_steps']}")
    return out


def _contract(p: dict) -> dict:
    """The `raptr flops --json` document (its keys are a contract: README, `raptr flops`) plus the layers-only figures."""
    from ..schedule import size_key

    size = size_key(p["method"])
    return {
        "recipe": p["run"],
        "method": p["method"],
        "params": p["params"],
        "params_non_embedding": p["params_non_embedding"],
        "flops_per_token_full": p["flops_per_token_full"],
        "stages": [
            {
                "index": s["index"],
                "steps": s["steps"],
                size: s[size],
                "expected": s["expected"],
                **{k: s[k] for k in ("heads_fraction", "mlp_fraction") if k in s},
                "tokens": s["tokens"],
                "flops": s["flops"],
                "share": s["share"],
            }
            for s in p["stages"]
        ],
        "total_flops": p["total_flops"],
        "baseline_flops": p["baseline_flops"],
        "ratio": p["ratio"],
        "speedup": p["speedup"],
        "layers_only": p["layers_only"],
    }


def _print(plan: dict, doc: dict) -> None:
    from .console import Console, si

    c = Console("rich")
    c.show_plan(plan)
    lo = plan["layers_only"]
    c.out.print(
        f"[bold]speedup {lo['speedup']:.3f}x (layers only)[/], {plan['speedup']:.3f}x whole model "
        f"(ratio {plan['ratio']:.4f}; head and attention included)"
    )
    if "budget" in doc:
        b = doc["budget"]
        c.out.print(
            f"budget {si(b['target_flops'])}FLOPs -> {b['steps']} steps ({si(b['tokens'])} tokens, "
            f"{si(b['total_flops'])}FLOPs); stages: {', '.join(str(s['steps']) for s in b['stages'])}"
        )
        c.out.print("  run it with: " + " ".join(f"--set '{s}'" for s in b["set"]))
    if "time" in doc:
        t = doc["time"]
        c.out.print(
            f"time on {t['gpus']} x {t['gpu']} ({t['dtype']} peak {t['peak_tflops']:.0f} TFLOP/s, "
            f"MFU {t['mfu']:.2f}): {t['hours']:.2f} h ({t['gpu_hours']:.1f} GPU-hours)"
        )
