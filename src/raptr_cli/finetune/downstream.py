"""`raptr compare --downstream TASK`: each run's downstream score (mean +- std over fine-tuning
seeds) and its pretraining gain, added to the comparison.

Each run is fine-tuned with `run_finetune` (pretrained and from scratch, default settings) into
RUN/finetune/TASK/final/; a finetune.json already there with the same task, settings and seeds is
reused, so a second `compare` (or one after `raptr finetune`) costs nothing. The from-scratch
fine-tunes depend only on the architecture, tokenizer, task, settings and seeds (`scratch_key`), so
runs that share those (every full-size model of one comparison) share one scratch result, computed
once and named in the others' finetune.json (`scratch_from`). Runs of one name over several
pretraining seeds are also pooled (`downstream_by_name`), as `compare` pools their losses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .config import FinetuneConfig, config_dict
from .metrics import mean_std


def _cached(doc_path: Path, cfg: FinetuneConfig, seeds: list[int], task_name: str) -> dict | None:
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError):
        return None
    same = (
        doc.get("settings") == config_dict(cfg)
        and doc.get("seeds") == seeds
        and "scratch" in doc
        and doc.get("task", {}).get("name") == task_name
    )
    return doc if same else None


def add_downstream(
    result: dict, run_dirs: list[Path], task_spec: str, seeds: list[int], progress_for: Callable | None = None
) -> None:
    """Fine-tune every run of a `compare_runs` result and add `downstream` to each row (in place)."""
    import re

    from .run import run_finetune
    from .tasks import load_task

    cfg = FinetuneConfig()
    task = load_task(task_spec, cfg)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", task.name)
    outs = [Path(d) / "finetune" / safe / "final" for d in run_dirs]
    cached = [_cached(out / "finetune.json", cfg, seeds, task.name) for out in outs]
    scratch: dict[str, dict] = {}  # scratch_key -> the document that computed it (run_finetune)
    for doc in cached:  # reused documents serve the runs still to fine-tune, wherever they are listed
        if doc is not None and doc.get("scratch_key"):
            scratch.setdefault(doc["scratch_key"], doc)
    for row, run_dir, out, doc in zip(result["runs"], run_dirs, outs, cached):
        if doc is None:
            label = (lambda name: lambda what, total: progress_for(f"{name}: {what}", total))(row["name"])
            doc = run_finetune(Path(run_dir), task, cfg, seeds, True, out, label if progress_for else None, scratch)
        m = doc["metric"]
        row["downstream"] = {
            "task": task.name,
            "metric": m,
            "seeds": seeds,
            "mean": doc["pretrained"]["mean"][m],
            "std": doc["pretrained"]["std"][m],
            "scratch_mean": doc["scratch"]["mean"][m],
            "scratch_std": doc["scratch"]["std"][m],
            "gain": doc["gain"][m],
            "scratch_from": doc.get("scratch_from"),
            "finetune_json": str(out / "finetune.json"),
        }
    result["downstream_task"] = task.summary()
    groups = by_name([r for r in result["runs"] if "downstream" in r])
    if any(len(g["seeds"]) > 1 for g in groups):
        result["downstream_by_name"] = groups


def by_name(rows: list[dict]) -> list[dict]:
    """Runs of one name over several pretraining seeds: the mean +- sample std, over those seeds, of
    each seed's downstream mean (itself over fine-tuning seeds), and the mean pretraining gain."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in groups.items():
        means = [r["downstream"]["mean"] for r in rs]
        mean, std = mean_std(means)
        out.append(
            {
                "name": name,
                "seeds": [r["seed"] for r in rs],
                "metric": rs[0]["downstream"]["metric"],
                "mean": mean,
                "std": std,
                "min": min(means),
                "max": max(means),
                "gain": mean_std([r["downstream"]["gain"] for r in rs])[0],
            }
        )
    return out


def markdown(result: dict) -> list[str]:
    """The downstream table for compare.md."""
    rows = [r for r in result["runs"] if "downstream" in r]
    if not rows:
        return []
    d0 = rows[0]["downstream"]
    chance = result.get("downstream_task", {}).get("chance", {}).get("accuracy")
    seeded = len({r["seed"] for r in rows}) > 1  # several pretraining seeds: say which row is which
    lines = [
        "",
        f"Downstream: {d0['task']}, dev {d0['metric']} (mean +- std over fine-tuning seeds "
        f"{', '.join(map(str, d0['seeds']))}){'' if chance is None else f'; chance {chance:.3f}'}:",
        "",
        "| run |" + (" seed |" if seeded else "") + " pretrained | from scratch | pretraining gain |",
        "|---|" + ("---|" if seeded else "") + "---|---|---|",
    ]
    for r in rows:
        d = r["downstream"]
        lines.append(
            f"| {r['name']} |" + (f" {r['seed']} |" if seeded else "") + f" {d['mean']:.4f} +- {d['std']:.4f} | "
            f"{d['scratch_mean']:.4f} +- {d['scratch_std']:.4f} | {d['gain']:+.4f} |"
        )
    if "downstream_by_name" in result:
        lines += [
            "",
            f"Per run name, over pretraining seeds: the mean +- sample std (min - max) of each seed's {d0['metric']} "
            "(itself the mean over fine-tuning seeds), and the mean pretraining gain:",
            "",
            "| run | pretraining seeds | pretrained | pretraining gain |",
            "|---|---|---|---|",
        ]
        for g in result["downstream_by_name"]:
            lines.append(
                f"| {g['name']} | {', '.join(map(str, g['seeds']))} | {g['mean']:.4f} +- {g['std']:.4f} "
                f"({g['min']:.4f} - {g['max']:.4f}) | {g['gain']:+.4f} |"
            )
    return lines


__all__ = ["add_downstream", "by_name", "markdown"]
