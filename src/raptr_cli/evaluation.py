"""Score a run's final model or any checkpoint: full-model loss, and loss by path length.

Loss by path length is the quantity the RaPTr theory is about: how much worse a random k-layer
subnetwork (fixed layers on) is than the full model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import UserError
from .models import build_model, config_from_dict
from .recipe import Recipe, load_recipe
from .schedule import sample_subset, step_generator
from .train import checkpoint as ckpt
from .train.objective import objective_for
from .train.step import evaluate


def locate(path: Path) -> tuple[Path, Path]:
    """(run_dir, model_dir): a run directory (final/ or its newest checkpoint) or a checkpoint/final dir."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run, path
    if (path / "recipe.toml").is_file():
        if (path / "final" / "model.safetensors").is_file():
            return path, path / "final"
        found = ckpt.list_checkpoints(path)
        if found:
            return path, found[-1]
    raise UserError(f"{path} is neither a run directory nor a checkpoint",
                    hint="Pass runs/<name> (with final/ or checkpoints/) or runs/<name>/checkpoints/step-NNNNNNN.")


def load_model_dir(model_dir: Path, recipe: Recipe, vocab_size: int):
    """Build the model a checkpoint's config.json describes and load its weights, refusing mismatches."""
    try:
        conf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {model_dir / 'config.json'} ({e})", hint="Is this a raptr checkpoint?") from None
    if conf.get("arch", "bert") != recipe.model.arch:
        raise UserError(f"{model_dir} holds a {conf.get('arch')} model but the run's recipe says model.arch = "
                        f"{recipe.model.arch!r}", hint="Evaluate it with the run directory it came from.")
    cfg = config_from_dict(recipe.model.arch, conf)
    if cfg.vocab_size != vocab_size:
        raise UserError(f"{model_dir} has vocab_size {cfg.vocab_size} but the tokenizer has {vocab_size}",
                        hint="Evaluate with the tokenizer.json of the run the checkpoint came from.")
    model = build_model(cfg)
    ckpt.load_weights(model_dir, model)
    return model.eval()


def run_eval(target: Path, data: list[str] | None = None, path_lengths: list[int] = (), n_paths: int = 4,
             batches: int | None = None) -> dict:
    from .train.data_setup import prepare_data

    run_dir, model_dir = locate(target)
    recipe_path = run_dir / "recipe.toml"
    if not recipe_path.is_file():
        raise UserError(f"{recipe_path} is missing", hint="raptr eval needs the run directory pretrain wrote.")
    recipe = load_recipe(recipe_path, [f"data.eval={json.dumps(data)}"] if data else [])
    tok_file = model_dir / "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else run_dir / "tokenizer.json"
    if batches is not None and batches < 1:
        raise UserError(f"--batches {batches}: must be >= 1")
    rd = prepare_data(recipe, None, tok_file, eval_only=bool(data))
    model = load_model_dir(model_dir, recipe, rd.vocab_size)
    import torch

    cuda = torch.cuda.is_available()
    model.to("cuda" if cuda else "cpu")
    precision = "bf16" if cuda and recipe.train.precision != "fp32" else "fp32"
    objective = objective_for(recipe, rd.specials, rd.vocab_size)
    t = recipe.train
    n_batches = batches or t.eval_batches
    base = evaluate(model, rd.eval, t.batch_size, n_batches, objective, recipe.run.seed, precision)
    if base["eval_tokens"] == 0:
        raise UserError("the eval data yields no scored tokens", hint="Give more eval text (--data) or check the run's eval split.")
    out = {"checkpoint": str(model_dir), "eval_loss": base["eval_loss"], "perplexity": math.exp(min(base["eval_loss"], 50)),
           "accuracy": base["eval_accuracy"], "tokens": base["eval_tokens"]}
    if rd.warnings:
        out["warnings"] = rd.warnings
    if "eval_loss_by_denoiser" in base:
        out["eval_loss_by_denoiser"] = base["eval_loss_by_denoiser"]
    if path_lengths:
        L = model.config.num_layers  # the checkpoint's depth (a stacking run may be mid-growth)
        fixed = recipe.schedule.fixed_for(L) or [0, L - 1]
        by_k = {}
        for k in path_lengths:
            if not len(fixed) <= k <= L:
                raise UserError(f"--path-lengths {k}: must be between {len(fixed)} (the fixed layers) and {L}")
            losses = []
            for i in range(n_paths if k < L else 1):
                layers = sample_subset(L, fixed, k, step_generator(recipe.run.seed ^ 0xE7A1, i))
                r = evaluate(model, rd.eval, t.batch_size, n_batches, objective, recipe.run.seed, precision, layers=layers)
                losses.append(r["eval_loss"])
            by_k[str(k)] = sum(losses) / len(losses)
        out["by_path_length"] = by_k
        out["paths_per_length"] = n_paths
    return out


__all__ = ["locate", "load_model_dir", "run_eval"]
