"""Stability across depth: how much worse is a random (L-1)-block path
than the full model, and does the loss at a stage switch move by about the gap between the two
path lengths?

Every path loss here comes from `evaluation.run_eval` (what `raptr eval --path-lengths` runs), so a
gap reported by `raptr analyze stability` is computed from exactly the paths, batches and masks of
`raptr eval RUN --path-lengths ...` with the same `--paths`: one code path, no second copy.

The sweep (`--sweep depth=4,8,16`) writes one small recipe per (variant, depth) for the normal
`raptr pretrain` machinery (the CLI runs them): a 32-wide BERT on a generated corpus, RaPTr with
path lengths L/2, 3L/4, L in equal stages and a checkpoint at each stage boundary, so each switch
can be compared with the gap the model had at that moment.
"""

from __future__ import annotations

import json
import math
import random
import tomllib
from pathlib import Path

from ..config import dumps
from ..errors import UserError
from ..evaluation import locate, run_eval
from ..recipe import load_recipe
from ..schedule import ScheduleConfig, size_key
from ..train.metrics import read_metrics

# variant -> [model] keys; the theory: O(1/sqrt(L)) gap with residuals + LayerNorm, Omega(1) without
VARIANTS: dict[str, dict] = {
    "post": {"norm": "post"},
    "pre": {"norm": "pre"},
    "none": {"norm": "none"},
    "post-nores": {"norm": "post", "residual": False},
}


def _path_loss(res: dict, k: int, L: int) -> float:
    return res["eval_loss"] if k == L else res["by_path_length"][str(k)]


def analyze_run(target: Path, drops: list[int] = (1, 2), n_paths: int = 4, batches: int | None = None) -> dict:
    """Full-model loss, mean loss of random (L-d)-block paths (fixed layers on), the gaps, and the
    loss jumps at the run's stage switches beside the gap the model had there."""
    run_dir, model_dir = locate(Path(target))
    try:
        conf = json.loads((model_dir / "config.json").read_text())
        L = int(conf["num_layers"])
        recipe = tomllib.loads((run_dir / "recipe.toml").read_text())
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"{run_dir}: cannot read the run's recipe.toml or {model_dir / 'config.json'} ({e})",
            hint="Pass a run directory written by `raptr pretrain`.",
        ) from None
    method = recipe.get("schedule", {}).get("method", ScheduleConfig.method)
    by_path = size_key(method) == "path_length"
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    stage_k = {r["stage"]: r.get("path_length") for r in rows if r.get("event") == "stage_end"}
    n_fixed = len(load_recipe(run_dir / "recipe.toml").schedule.fixed_for(L) or [0, L - 1])  # as run_eval
    ks = {L - d for d in drops if L - d >= n_fixed}
    if by_path:  # a growing method's stages are depths, not path lengths of this model
        ks |= {int(round(k)) for k in stage_k.values() if k is not None and n_fixed <= round(k) < L}
    res = run_eval(model_dir, None, path_lengths=sorted(ks, reverse=True), n_paths=n_paths, batches=batches)
    by_k = {int(k): v for k, v in res.get("by_path_length", {}).items()}
    switches = []
    for ev in (r for r in rows if r.get("event") == "transition"):
        k0, k1 = stage_k.get(ev["from_stage"]), stage_k.get(ev["to_stage"])
        sw = {
            "step": ev["step"],
            "from_path_length": k0,
            "to_path_length": k1,
            "measured_jump": ev["loss_after"] - ev["loss_before"],
            "gap_final_model": None,
            "gap_at_switch": None,
        }
        if by_path and k0 is not None and k1 is not None:
            k0, k1 = int(round(k0)), int(round(k1))
            if {k0, k1} <= set(by_k) | {L}:
                sw["gap_final_model"] = _path_loss(res, k1, L) - _path_loss(res, k0, L)
            # the checkpoint written at the boundary (the transition is stamped one step later)
            at = run_dir / "checkpoints" / f"step-{ev['step'] - 1:07d}"
            if (at / "model.safetensors").is_file():
                r = run_eval(
                    at, None, path_lengths=sorted({k0, k1} - {L}, reverse=True), n_paths=n_paths, batches=batches
                )
                sw["gap_at_switch"] = _path_loss(r, k1, L) - _path_loss(r, k0, L)
        switches.append(sw)
    return {
        "run": str(run_dir),
        "checkpoint": str(model_dir),
        "name": recipe.get("run", {}).get("name", run_dir.name),
        "method": method,
        "n_layers": L,
        "norm": conf.get("norm"),
        "residual": conf.get("residual", True),
        "eval_loss": res["eval_loss"],
        "by_path_length": {str(k): v for k, v in sorted(by_k.items(), reverse=True)},
        "gaps": {str(L - d): by_k[L - d] - res["eval_loss"] for d in drops if L - d in by_k},
        "gap": by_k[L - 1] - res["eval_loss"] if L - 1 in by_k else None,
        "paths_per_length": n_paths,
        "switches": switches,
    }


def parse_sweep(spec: str) -> list[int]:
    """ "depth=4,8,16" -> [4, 8, 16]; depths >= 4 (a path must drop a non-fixed block), distinct."""
    key, _, values = spec.partition("=")
    try:
        depths = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        depths = []
    if key.strip() != "depth" or not depths or min(depths) < 4 or len(set(depths)) != len(depths):
        raise UserError(
            f"--sweep {spec!r}: expected depth=L1,L2,... with distinct depths >= 4",
            hint="For example --sweep depth=4,8,16.",
        )
    return sorted(depths)


def sweep_stages(L: int) -> list[int]:
    """RaPTr path lengths L/2, 3L/4, L (rounded up; at least the 2 fixed layers)."""
    return sorted({max(2, math.ceil(L / 2)), max(2, math.ceil(3 * L / 4)), L})


def write_corpus(folder: Path, seed: int = 0) -> None:
    """A generated corpus of templated sentences (as the tests' fixture): learnable in ~100 steps."""
    subj = ["the cat", "a dog", "the king", "my friend", "the queen", "a bird", "the old man", "our horse"]
    verb = ["sees", "likes", "finds", "calls", "loves", "follows", "hears", "keeps", "brings", "wants"]
    obj = ["the ball", "a fish", "the crown", "an apple", "the river", "a song", "the tree", "some bread"]
    tail = ["in the morning", "at night", "by the sea", "with joy", "every day", "in the rain"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n_docs, s in (("train.txt", 40, seed), ("eval.txt", 8, seed + 1)):
        rng = random.Random(s)
        docs = [
            " ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)} {rng.choice(tail)} ." for _ in range(40))
            for _ in range(n_docs)
        ]
        (folder / name).write_text("\n".join(docs) + "\n")


def sweep_recipes(
    out: Path, depths: list[int], variants: list[str], steps: int, data: list[str] | None, seed: int = 0
) -> list[dict]:
    """Write OUT/recipes/<variant>-L<depth>.toml for each pair (and OUT/data/ unless `data`); returns
    [{variant, n_layers, name, recipe}] in training order."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)}", hint=f"Choose from {', '.join(VARIANTS)}.")
    if steps < 30:
        raise UserError(f"--steps {steps}: the sweep needs at least 30 steps (three stages)")
    rdir = out / "recipes"
    rdir.mkdir(parents=True, exist_ok=True)
    if data is None:
        write_corpus(out / "data", seed)
        train, ev = [str((out / "data" / "train.txt").resolve())], [str((out / "data" / "eval.txt").resolve())]
    else:
        train, ev = data, []
    third = steps // 3
    jobs = []
    for variant in variants:
        for L in depths:
            name = f"{variant}-L{L}"
            ks = sweep_stages(L)
            stage_steps = [third] * (len(ks) - 1) + [steps - third * (len(ks) - 1)]
            recipe = {
                "run": {"name": name, "seed": seed},
                "model": {
                    "arch": "bert",
                    "preset": "tiny",
                    "n_layers": L,
                    "hidden_size": 32,
                    "num_heads": 2,
                    "intermediate_size": 64,
                    "dropout": 0.0,
                    "attention_dropout": 0.0,
                    **VARIANTS[variant],
                },
                "data": {"train": train, "eval": ev, "eval_fraction": 0.1},
                "tokenizer": {"vocab_size": 200 if data is None else 2048},
                "optim": {"lr": 3e-3, "warmup_steps": min(10, steps // 10), "decay": "linear"},
                "train": {
                    "steps": steps,
                    "batch_size": 16,
                    "seq_len": 32,
                    "eval_every": third,
                    "eval_batches": 8,
                    "checkpoint_every": third,
                    "keep_checkpoints": 0,
                    "log_every": 1,
                },  # log_every 1: every switch gets its jump
                "log": {"console": "none"},
                "schedule": {
                    "method": "raptr",
                    "stages": [{"steps": n, "path_length": k} for n, k in zip(stage_steps, ks)],
                },
            }
            path = rdir / f"{name}.toml"
            path.write_text(dumps(recipe))
            jobs.append({"variant": variant, "n_layers": L, "name": name, "recipe": path})
    return jobs


def sweep_table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the depth sweep: one row per run."""
    header = [
        "variant",
        "L",
        "full loss",
        "L-1 loss",
        "gap L-1",
        "gap L-2",
        "gap*sqrt(L)",
        "switch jumps (measured / gap at switch)",
    ]
    rows = []
    for r in results:
        L = r["n_layers"]
        g2 = r["gaps"].get(str(L - 2))
        jumps = "; ".join(
            f"{s['from_path_length']:.0f}->{s['to_path_length']:.0f}: {s['measured_jump']:+.3f} / "
            + ("-" if s["gap_at_switch"] is None else f"{s['gap_at_switch']:+.3f}")
            for s in r["switches"]
        )
        rows.append(
            [
                r.get("variant", r["name"]),
                str(L),
                f"{r['eval_loss']:.4f}",
                "-" if r["gap"] is None else f"{r['by_path_length'][str(L - 1)]:.4f}",
                "-" if r["gap"] is None else f"{r['gap']:+.4f}",
                "-" if g2 is None else f"{g2:+.4f}",
                "-" if r["gap"] is None else f"{r['gap'] * math.sqrt(L):+.3f}",
                jumps or "-",
            ]
        )
    return header, rows


def write_sweep(results: list[dict], out: Path) -> list[Path]:
    """stability.json, stability.md and stability.png (gap vs L, log-log) in OUT."""
    from .plots import plot_stability

    (out / "stability.json").write_text(json.dumps({"runs": results}, indent=1))
    header, rows = sweep_table(results)
    md = [
        "# stability gap vs depth",
        "",
        "gap = mean eval loss of random (L-1)-block paths (first and last block fixed) minus the full model's.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ] + ["| " + " | ".join(r) + " |" for r in rows]
    (out / "stability.md").write_text("\n".join(md) + "\n")
    png = plot_stability(results, out / "stability.png")
    return [out / "stability.json", out / "stability.md"] + ([png] if png else [])
