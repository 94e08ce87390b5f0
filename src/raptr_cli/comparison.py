"""Side-by-side evidence from finished runs: FLOPs, time, eval loss, eval loss at equal FLOPs,
loss jumps at stage switches, the context-free floor (floor.py) and how far below it each run
ends; written as compare.json, compare.md and loss_vs_flops.png."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .errors import UserError
from .finetune.metrics import mean_std
from .schedule import ScheduleConfig, is_full_model, size_key
from .train.metrics import read_metrics


def summarize(run_dir: Path) -> dict:
    """One run's row, from its recipe.toml and metrics.jsonl alone."""
    mpath, rpath = run_dir / "metrics.jsonl", run_dir / "recipe.toml"
    if not mpath.is_file() or not rpath.is_file():
        raise UserError(
            f"{run_dir} is not a finished raptr run (needs metrics.jsonl and recipe.toml)",
            hint="Pass directories written by `raptr pretrain`.",
        )
    rows = read_metrics(mpath)
    recipe = tomllib.loads(rpath.read_text())
    sched = recipe.get("schedule", {})
    evals = [r for r in rows if "eval_loss" in r and "event" not in r]
    train = [r for r in rows if "loss" in r and "event" not in r]
    end = next((r for r in rows if r.get("event") == "run_end"), None)
    if not evals or end is None:
        raise UserError(
            f"{run_dir} has not finished (no run_end event in metrics.jsonl)",
            hint="Resume it with `raptr pretrain ... --resume`, or leave it out.",
        )
    stages = sched.get("stages", [])
    key = size_key(sched.get("method"))
    schedule = "-".join(stage_label(s, key) for s in stages) or "full"
    jumps = [r["loss_after"] - r["loss_before"] for r in rows if r.get("event") == "transition"]
    full_evals = [r for r in evals if r.get("eval_full_model", True)]
    return {
        "run": str(run_dir),
        "name": recipe.get("run", {}).get("name", run_dir.name),
        "method": sched.get("method", ScheduleConfig.method),
        "schedule": schedule,
        "seed": recipe.get("run", {}).get("seed", 0),
        "steps": end["step"],
        "tokens": end["tokens"],
        "flops": end["flops"],
        "wall_s": end["elapsed_s"],
        "tokens_per_s": end["tokens"] / max(end["elapsed_s"], 1e-9),
        "final_eval_loss": evals[-1]["eval_loss"],
        # the context-free floor of the final eval (floor.py); None for runs from before it existed
        "unigram_loss": evals[-1].get("unigram_loss"),
        "loss_below_unigram": evals[-1].get("loss_below_unigram"),
        "best_eval_loss": min(r["eval_loss"] for r in full_evals) if full_evals else None,
        "transition_jumps": jumps,
        "curve": [(r["flops"], r["eval_loss"], r.get("eval_full_model", True)) for r in evals],
        "stage_flops": [r["flops"] for r in rows if r.get("event") == "stage_end"][:-1],
        "final_train_loss": train[-1]["loss"] if train else None,
    }


def loss_at(curve: list[tuple], flops: float) -> float | None:
    """Eval loss at `flops` by linear interpolation of a run's (flops, eval_loss) curve."""
    pts = [(f, loss) for f, loss, full in curve if full]
    for (f0, l0), (f1, l1) in zip(pts, pts[1:]):
        if f0 <= flops <= f1:
            return l0 + (l1 - l0) * (flops - f0) / max(f1 - f0, 1e-30)
    return None


def compare_runs(run_dirs: list[Path], allow_mixed: bool = False, paired_against: str | None = None) -> dict:
    """The comparison of finished runs; refuses a run listed twice, runs of different objectives
    (unless `allow_mixed`) and runs of one name that are not one recipe over distinct seeds. With
    `paired_against` (a run.name), adds each other run's per-seed difference to it (`paired`)."""
    refuse_duplicates(run_dirs)
    runs = [summarize(Path(d)) for d in run_dirs]
    check_comparable(runs, allow_mixed)
    # the reference is the full baseline: the baseline run with the most FLOPs, not a shortened one
    base = max((r for r in runs if is_full_model(r["method"])), key=lambda r: r["flops"], default=None)
    ref_flops = base["flops"] if base else max(r["flops"] for r in runs)
    equal = min(r["flops"] for r in runs)  # every curve reaches this point
    for r in runs:
        r["relative_flops"] = r["flops"] / ref_flops
        r["eval_loss_at_equal_flops"] = loss_at(r["curve"], equal)
    result = {"equal_flops": equal, "reference": base["run"] if base else None, "runs": runs}
    groups = by_name(runs)
    if any(len(g["seeds"]) > 1 for g in groups):
        result["by_name"] = groups
    if paired_against is not None:
        result["paired"] = paired(runs, paired_against)
    return result


def stage_label(stage: dict, key: str) -> str:
    """A recipe stage in the schedule column: its layer count (or keep probability; "all" for a
    width-only stage, which runs every layer), then its width fractions where it narrows, e.g. "8 h0.5 m0.75"."""
    size = stage.get(key, stage.get("keep_prob", "all"))
    width = [f"{c}{stage[k]:g}" for c, k in (("h", "heads_fraction"), ("m", "mlp_fraction")) if stage.get(k, 1.0) < 1.0]
    return " ".join([str(size), *width])


def refuse_duplicates(run_dirs: list[Path]) -> None:
    """One run passed twice (by another spelling, a trailing slash, a symlink) is not two seeds."""
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            spellings = f" (as {seen[key]} and {d})" if str(seen[key]) != str(d) else ""
            raise UserError(
                f"the run {key} is listed twice{spellings}",
                hint="Pass each run directory once (a second seed is a run of its own, with another run.seed).",
            )
        seen[key] = Path(d)


def refuse_mixed_objectives(arch_of: dict[str, str]) -> None:
    """BERT's masked-LM loss (over ~15% of tokens, WordPiece) and UL2's denoiser-mixture loss (byte-level
    BPE) measure different things: side by side, their eval losses and curves would invite a wrong
    conclusion, so mixing them needs an explicit --allow-mixed. `arch_of`: recipe or run -> model.arch."""
    if len(set(arch_of.values())) > 1:
        raise UserError(
            "these runs train different objectives, so their losses are not comparable:",
            problems=[f"{label}: model.arch = {arch!r}" for label, arch in arch_of.items()],
            hint="Compare runs of one architecture, or add --allow-mixed to tabulate them anyway.",
        )


def check_comparable(runs: list[dict], allow_mixed: bool = False) -> None:
    """Refuse mixed objectives (unless allowed), and runs of one name that are not one recipe (the
    same resolved recipe as `--resume` compares, but for run.seed) over distinct seeds: `by_name`
    aggregates them as seeds."""
    from .recipe import TRAJECTORY_FREE, recipe_differences

    recipes = [tomllib.loads((Path(r["run"]) / "recipe.toml").read_text()) for r in runs]
    if not allow_mixed:
        refuse_mixed_objectives({r["run"]: rec.get("model", {}).get("arch", "bert") for r, rec in zip(runs, recipes)})
    first: dict[str, tuple[dict, dict]] = {}
    seeds: dict[tuple[str, object], dict] = {}
    for r, rec in zip(runs, recipes):
        r0, rec0 = first.setdefault(r["name"], (r, rec))
        diff = recipe_differences(rec0, rec, (*TRAJECTORY_FREE, "run.seed"))
        if diff:
            raise UserError(
                f"{r0['run']} and {r['run']} share run.name = {r['name']!r} but are different recipes, "
                f"so they are not seeds of one run; they differ in: "
                + ", ".join(f"{k} ({a!r} vs {b!r})" for k, (a, b) in diff.items()),
                hint="Runs of one name are read as seeds of one recipe: give different recipes different run names.",
            )
        twin = seeds.setdefault((r["name"], r["seed"]), r)
        if twin is not r:
            raise UserError(
                f"{twin['run']} and {r['run']} are the same recipe with the same run.seed = {r['seed']}: "
                "one run twice, not two seeds",
                hint="Pass one of them, or train the second seed with another run.seed.",
            )


AGGREGATED = ("relative_flops", "final_eval_loss", "best_eval_loss", "eval_loss_at_equal_flops", "loss_below_unigram")


def by_name(runs: list[dict]) -> list[dict]:
    """Runs of the same name (the same recipe) over several seeds: mean, min and max of each figure."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in groups.items():
        g = {"name": name, "method": rs[0]["method"], "schedule": rs[0]["schedule"], "seeds": [r["seed"] for r in rs]}
        for key in AGGREGATED:
            vals = [r[key] for r in rs if r[key] is not None]
            g[key] = (
                {"mean": sum(vals) / len(vals), "std": mean_std(vals)[1], "min": min(vals), "max": max(vals)}
                if len(vals) == len(rs)
                else None
            )
        out.append(g)
    return out


def paired(runs: list[dict], against: str) -> list[dict]:
    """Per seed, each run's final eval loss minus the `against` run's of the same seed (negative:
    lower loss than it), for every other run.name that shares seeds with it; mean, std, and in how
    many seeds it is lower. Seeds train on the same data order and eval set, so the paired
    difference removes what the seeds share."""
    names = sorted({r["name"] for r in runs})
    if against not in names:  # checked first: the message lists the names there are
        raise UserError(
            f"--paired-against {against}: no such run.name among the runs",
            hint="Use one of: " + ", ".join(names) + ".",
        )
    final: dict[str, dict[int, float]] = {}  # run.name -> seed -> final eval loss, in the runs' order
    for r in runs:
        final.setdefault(r["name"], {})[r["seed"]] = r["final_eval_loss"]
    ref = final[against]
    out = []
    for name, mine in final.items():
        seeds = sorted(set(mine) & set(ref))
        if name == against or not seeds:
            continue
        diffs = [mine[s] - ref[s] for s in seeds]
        mean, std = mean_std(diffs)
        out.append(
            {
                "name": name,
                "against": against,
                "seeds": seeds,
                "diffs": diffs,
                "mean": mean,
                "std": std,
                "lower_in": sum(d < 0 for d in diffs),
            }
        )
    return out


def write_outputs(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Eval loss at equal FLOPs is read at {result['equal_flops']:.3e} FLOPs (the smallest run's total).",
        "",
        "| run | method | schedule | rel. FLOPs | wall s | tokens/s | final eval | best eval | eval @ equal FLOPs "
        "| switch jumps | unigram floor | below floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f4 = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in result["runs"]:
        eq = r["eval_loss_at_equal_flops"]
        best = r["best_eval_loss"]
        lines.append(
            f"| {r['name']} | {r['method']} | {r['schedule']} | {r['relative_flops']:.3f} | {r['wall_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['final_eval_loss']:.4f} | {'-' if best is None else f'{best:.4f}'} | "
            f"{'-' if eq is None else f'{eq:.4f}'} | {', '.join(f'{j:+.3f}' for j in r['transition_jumps']) or '-'} | "
            f"{f4(r.get('unigram_loss'))} | {f4(r.get('loss_below_unigram'))} |"
        )
    if "by_name" in result:
        lines += [
            "",
            "Mean over seeds, +- sample std (min - max):",
            "",
            "| run | method | schedule | seeds | rel. FLOPs | final eval | best eval | eval @ equal FLOPs "
            "| below floor |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for g in result["by_name"]:
            cells = [spread(g[k], 3 if k == "relative_flops" else 4) for k in AGGREGATED]
            lines.append(
                f"| {g['name']} | {g['method']} | {g['schedule']} | {', '.join(map(str, g['seeds']))} | "
                + " | ".join(cells)
                + " |"
            )
    if result.get("paired"):
        ref = result["paired"][0]["against"]
        lines += [
            "",
            f"Paired difference in final eval loss against {ref}, per seed (negative: lower loss than it):",
            "",
            "| run | per seed | mean +- std | lower in |",
            "|---|---|---|---|",
        ]
        for p in result["paired"]:
            per = ", ".join(f"{s}: {d:+.4f}" for s, d in zip(p["seeds"], p["diffs"]))
            lines.append(
                f"| {p['name']} | {per} | {p['mean']:+.4f} +- {p['std']:.4f} | {p['lower_in']} of {len(p['seeds'])} |"
            )
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    written = [out / "compare.json", out / "compare.md"]
    png = plot(result, out / "loss_vs_flops.png")
    return written + ([png] if png else [])


def spread(stat: dict | None, digits: int = 4) -> str:
    """ "mean +- std (min - max)" of a `by_name` figure."""
    if stat is None:
        return "-"
    d = digits
    return f"{stat['mean']:.{d}f} +- {stat['std']:.{d}f} ({stat['min']:.{d}f} - {stat['max']:.{d}f})"


def plot(result: dict, path: Path) -> Path | None:
    """Eval loss against cumulative FLOPs, one line per run, stage boundaries marked; runs of the
    same name over several seeds share a colour (one solid line, the others dashed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours: dict[str, str] = {}
    for r in result["runs"]:
        xs = [f for f, _, _ in r["curve"]]
        ys = [loss for _, loss, _ in r["curve"]]
        first = r["name"] not in colours
        label = f"{r['name']} ({r['method']} {r['schedule']})" if first else None
        (line,) = ax.plot(
            xs, ys, marker="o", ms=3, label=label, color=colours.get(r["name"]), ls="-" if first else "--"
        )
        colours.setdefault(r["name"], line.get_color())
        for f in r["stage_flops"] if first else []:
            ax.axvline(f, color=line.get_color(), ls=":", lw=0.8)
    _floor_lines(ax, result["runs"])
    ax.set_xlabel("training FLOPs (layers that ran)")
    ax.set_ylabel("full-model eval loss")
    seeds = sorted({r["seed"] for r in result["runs"]})
    ax.set_title(
        "eval loss vs FLOPs (dotted: stage boundaries"
        + (f"; seeds {', '.join(map(str, seeds))}: first solid, others dashed)" if len(seeds) > 1 else ")")
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _floor_lines(ax, runs: list[dict]) -> None:
    """A dashed grey horizontal line at each distinct context-free floor (runs on the same eval set
    share one): a curve near or above it has learned little beyond word frequencies."""
    floors = sorted({round(r["unigram_loss"], 4) for r in runs if r.get("unigram_loss") is not None})
    for u in floors:
        ax.axhline(u, color="grey", ls="--", lw=1.2, label=f"context-free floor (train unigram) {u:.4f}")
