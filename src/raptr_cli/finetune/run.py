"""`raptr finetune`'s work: load a run's model (final/ or a checkpoint), fine-tune it per seed,
optionally the same architecture from random init, aggregate, write OUT/finetune.json.

The model is loaded the way `raptr eval` loads it (`evaluation.locate` / `load_model_dir`, the
run's recipe and tokenizer), so a checkpoint that eval refuses is refused here too.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import UserError
from ..models.registry import arch_spec
from .config import FinetuneConfig, config_dict
from .heads import classifier_for, encode
from .loop import Data, Progress, finetune, main_metric
from .metrics import CLASSIFICATION, REGRESSION, mean_std
from .task import Task

INITS = ("pretrained", "scratch")


@dataclass
class Pretrained:
    run_dir: Path
    model_dir: Path
    arch: str
    model_config: Any
    state: dict
    """The checkpoint's weights (copied into a fresh model per seed)."""
    tokenizer: Any
    specials: dict
    tokenizer_file: Path
    step: int | None


def load_pretrained(target: Path) -> Pretrained:
    """The model at `target` (run dir -> final/ or its newest checkpoint; or a checkpoint dir)."""
    from ..evaluation import load_model_dir, locate
    from ..recipe import load_recipe
    from ..train.data_setup import load_run_tokenizer, specials_of

    run_dir, model_dir = locate(Path(target))
    recipe_path = run_dir / "recipe.toml"
    if not recipe_path.is_file():
        raise UserError(f"{recipe_path} is missing", hint="raptr finetune needs the run directory pretrain wrote.")
    recipe = load_recipe(recipe_path)
    tok_file = model_dir / "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else run_dir / "tokenizer.json"
    tok = load_run_tokenizer(recipe, tok_file)
    model = load_model_dir(model_dir, recipe, tok.get_vocab_size())
    m = re.fullmatch(r"step-(\d+)", model_dir.name)
    step = int(m.group(1)) if m else recipe.train.steps
    return Pretrained(
        run_dir,
        model_dir,
        recipe.model.arch,
        model.config,
        model.state_dict(),
        tok,
        specials_of(recipe, tok),
        tok_file,
        step,
    )


def build_classifier(p: Pretrained, init: str, num_labels: int, seed: int) -> torch.nn.Module:
    """A fresh classifier for one seed: pretrained weights, or the same architecture at random init."""
    import copy

    from ..models import build_model

    torch.manual_seed(seed)  # scratch init and the new head's init depend on the seed only
    backbone = build_model(copy.deepcopy(p.model_config))
    if init == "pretrained":
        backbone.load_state_dict(p.state)
    return classifier_for(p.arch, backbone, num_labels)


def _data(task: Task, p: Pretrained, cfg: FinetuneConfig) -> Data:
    max_len = min(cfg.max_seq_len, p.model_config.max_position_embeddings)
    enc = lambda s: encode(p.tokenizer, p.arch, p.specials, s.a, s.b, max_len)  # noqa: E731
    return Data(
        enc(task.train), task.y_train, enc(task.dev), task.y_dev, task.kind, task.num_labels, int(p.specials["pad"])
    )


def _aggregate(runs: list[dict], names: tuple[str, ...]) -> dict:
    stats = {m: mean_std([r[m] for r in runs]) for m in names}
    return {"runs": runs, "mean": {m: v[0] for m, v in stats.items()}, "std": {m: v[1] for m, v in stats.items()}}


def scratch_key(p: Pretrained, task: Task, cfg: FinetuneConfig, seeds: list[int]) -> str:
    """What a from-scratch fine-tune depends on: the architecture and its configuration, the
    tokenizer (the encoded examples), the task, the settings and the seeds; not the pretrained
    weights. Runs that share it (every full-size model of one comparison) share one scratch result."""
    import hashlib

    from ..data.corpus import sha256_file

    what = {
        "arch": p.arch,
        "config": asdict(p.model_config),
        "tokenizer": sha256_file(p.tokenizer_file),
        "task": task.summary(),
        "settings": config_dict(cfg),
        "seeds": list(seeds),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def run_finetune(
    target: Path,
    task: Task,
    cfg: FinetuneConfig,
    seeds: list[int],
    from_scratch: bool,
    out_dir: Path | None,
    progress_for: Callable[[str, int], Progress | None] | None = None,
    scratch_cache: dict[str, dict] | None = None,
) -> dict:
    """Fine-tune per seed (and from scratch too with `from_scratch`); returns the finetune.json document.

    `scratch_cache` (scratch_key -> a finetune.json document) lets several runs share one
    from-scratch result: a hit is copied in (with `scratch_from` naming where it was computed)
    instead of fine-tuned again, and a miss is added to it."""
    from .loop import plan_steps

    t0 = time.perf_counter()
    p = load_pretrained(target)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", task.name)  # a hub name like glue/rte is one path component
    out_dir = Path(out_dir) if out_dir else p.run_dir / "finetune" / safe / p.model_dir.name
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a directory", hint="Choose another --out.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = _data(task, p, cfg)
    names = CLASSIFICATION if task.kind == "classification" else REGRESSION
    doc: dict[str, Any] = {
        "checkpoint": str(p.model_dir),
        "run": str(p.run_dir),
        "arch": p.arch,
        "step": p.step,
        "task": task.summary(),
        "settings": config_dict(cfg),
        "metric": main_metric(task.kind),
        "metrics": list(names),
        "seeds": list(seeds),
        "device": device.type,
        "steps_per_seed": plan_steps(len(task.y_train), cfg),
    }
    key = scratch_key(p, task, cfg, seeds) if from_scratch else None
    shared = (scratch_cache or {}).get(key) if key else None
    if key is not None:
        doc["scratch_key"] = key
    if shared is not None:
        doc["scratch"] = shared["scratch"]
        doc["scratch_from"] = shared.get("scratch_from", shared["out"])
    inits = INITS if from_scratch and shared is None else INITS[:1]
    for init in inits:
        runs = []
        for seed in seeds:
            model = build_classifier(p, init, task.num_labels, seed).to(device)
            cb = progress_for(f"{init} seed {seed}", doc["steps_per_seed"]) if progress_for else None
            res, model = finetune(model, data, cfg, seed, cb)
            runs.append({"seed": seed, **res})
            if cfg.save_model:
                save_classifier(model, p, task, out_dir / f"{init}-seed-{seed}")
        doc[init] = _aggregate(runs, names)
    if from_scratch:
        doc["gain"] = {m: doc["pretrained"]["mean"][m] - doc["scratch"]["mean"][m] for m in names}
    doc["seconds"] = time.perf_counter() - t0
    doc["out"] = str(out_dir)
    if key is not None and scratch_cache is not None and shared is None:
        scratch_cache[key] = doc
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".finetune.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out_dir / "finetune.json")  # a finetune.json that exists is complete
    return doc


def save_classifier(model: torch.nn.Module, p: Pretrained, task: Task, path: Path) -> None:
    """The fine-tuned model. Post-LN BERT: a transformers BertForSequenceClassification directory
    (weights under HF's names, config.json with the labels, the tokenizer files); otherwise
    raptr's format (model.safetensors + config.json with the head's size and labels)."""
    import shutil

    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    labels = task.label_names or ["score"]
    meta = {
        "num_labels": task.num_labels,
        "id2label": dict(enumerate(labels)),
        "label2id": {n: i for i, n in enumerate(labels)},
        "problem_type": "regression" if task.kind == "regression" else "single_label_classification",
    }
    cfg, spec = p.model_config, arch_spec(p.arch).finetune
    hf = spec.hf_configs(cfg, p.tokenizer, p.specials, meta)
    if hf is not None:
        conf, tok_conf = hf
        (path / "tokenizer_config.json").write_text(json.dumps(tok_conf, indent=2) + "\n")
    else:
        conf = {"arch": p.arch, **asdict(cfg), "head": spec.head, **meta}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    shutil.copyfile(p.tokenizer_file, path / "tokenizer.json")


__all__ = [
    "INITS",
    "Pretrained",
    "build_classifier",
    "load_pretrained",
    "run_finetune",
    "save_classifier",
    "scratch_key",
]
