"""Score a run's final model or any checkpoint: full-model loss, and loss by path length.

Loss by path length is the quantity the RaPTr theory is about: how much worse a random k-layer
subnetwork (fixed layers on) is than the full model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import floor
from .errors import UserError
from .models import build_model, config_from_dict, resolve_model_config
from .models.registry import objective_for
from .recipe import Recipe, load_recipe
from .schedule import method_class, sample_subset, stream
from .train import checkpoint as ckpt
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
    raise UserError(
        f"{path} is neither a run directory nor a checkpoint",
        hint="Pass runs/<name> (with final/ or checkpoints/) or runs/<name>/checkpoints/step-NNNNNNN.",
    )


# Config fields that do not change the function an eval computes (eval mode has no dropout).
_NOT_ARCHITECTURE = {"vocab_size", "num_layers", "hidden_dropout", "attention_dropout", "dropout", "initializer_range"}


def _check_against_recipe(cfg, recipe: Recipe, model_dir: Path, recipe_path: Path) -> None:
    """The checkpoint's architecture must be the one the run's recipe.toml resolves to (a stacking
    checkpoint may be shallower: the model grows during the run)."""
    import dataclasses

    want = resolve_model_config(recipe.model, cfg.vocab_size, recipe.train.seq_len)
    diffs = [
        f"{f.name}: {getattr(cfg, f.name)!r} in config.json, {getattr(want, f.name)!r} from the recipe"
        for f in dataclasses.fields(cfg)
        if f.name not in _NOT_ARCHITECTURE and getattr(cfg, f.name) != getattr(want, f.name)
    ]
    growing = method_class(recipe.schedule.method).grows
    if cfg.num_layers > want.num_layers or (cfg.num_layers != want.num_layers and not growing):
        diffs.append(f"num_layers: {cfg.num_layers} in config.json, {want.num_layers} from the recipe")
    if diffs:
        raise UserError(
            f"{model_dir / 'config.json'} does not match the run's {recipe_path}",
            problems=diffs,
            hint="Evaluate the checkpoint in the run directory it came from, with that run's recipe.toml.",
        )


def check_tokenizer(model_dir: Path, tok_file: Path, run_dir: Path) -> None:
    """`tok_file` must be the tokenizer the weights were trained with: its sha256 is in each
    checkpoint's trainer_state.json; final/ is judged by the run's newest checkpoint (saved with it at
    the last step). Without that record (older runs, checkpoints deleted) the check goes as far as it
    can: final/tokenizer.json must equal the run's tokenizer.json."""
    from .data.corpus import sha256_file

    states = [model_dir] if model_dir.parent.name == "checkpoints" else ckpt.list_checkpoints(run_dir)[-1:]
    recorded = None
    for d in states:
        try:
            recorded = json.loads((d / "trainer_state.json").read_text()).get("tokenizer_sha256")
        except (OSError, ValueError, AttributeError):
            pass
    have = sha256_file(tok_file)
    hint = (
        "Put back the run's own tokenizer.json (final/tokenizer.json is a copy of it), or evaluate the run "
        "that tokenizer came from."
    )
    if recorded and have != recorded:
        raise UserError(
            f"{tok_file} is not the tokenizer {model_dir} was trained with (sha256 {have[:16]}..., "
            f"the run recorded {recorded[:16]}...)",
            hint=hint,
        )
    other = run_dir / "tokenizer.json"
    if not recorded and other != tok_file and other.is_file() and sha256_file(other) != have:
        raise UserError(f"{tok_file} and {other} differ: one of them is not the run's tokenizer", hint=hint)


def load_model_dir(model_dir: Path, recipe: Recipe, vocab_size: int, recipe_path: Path | None = None):
    """Build the model a checkpoint's config.json describes and load its weights, refusing mismatches
    (with `recipe_path`: also an architecture other than the one that recipe resolves to)."""
    try:
        conf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {model_dir / 'config.json'} ({e})", hint="Is this a raptr checkpoint?") from None
    if conf.get("arch", "bert") != recipe.model.arch:
        raise UserError(
            f"{model_dir} holds a {conf.get('arch')} model but the run's recipe says model.arch = "
            f"{recipe.model.arch!r}",
            hint="Evaluate it with the run directory it came from.",
        )
    cfg = config_from_dict(recipe.model.arch, conf)
    if cfg.vocab_size != vocab_size:
        raise UserError(
            f"{model_dir} has vocab_size {cfg.vocab_size} but the tokenizer has {vocab_size}",
            hint="Evaluate with the tokenizer.json of the run the checkpoint came from.",
        )
    model = build_model(cfg)
    ckpt.load_weights(model_dir, model)  # first: weights that do not fit their own config.json are named as such
    if recipe_path is not None:
        _check_against_recipe(cfg, recipe, model_dir, recipe_path)
    return model.eval()


def run_eval(
    target: Path,
    data: list[str] | None = None,
    path_lengths: list[int] = (),
    n_paths: int = 4,
    batches: int | None = None,
) -> dict:
    from .train.data_setup import prepare_data

    run_dir, model_dir = locate(target)
    recipe_path = run_dir / "recipe.toml"
    if not recipe_path.is_file():
        raise UserError(f"{recipe_path} is missing", hint="raptr eval needs the run directory pretrain wrote.")
    recipe = load_recipe(recipe_path, [f"data.eval={json.dumps(data)}"] if data else [])
    tok_file = model_dir / "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else run_dir / "tokenizer.json"
    if batches is not None and batches < 1:
        raise UserError(f"--batches {batches}: must be >= 1")
    rd = prepare_data(recipe, None, tok_file, eval_only=bool(data))  # also: a missing or unusable tokenizer.json
    check_tokenizer(model_dir, tok_file, run_dir)
    model = load_model_dir(model_dir, recipe, rd.vocab_size, recipe_path)
    import torch

    cuda = torch.cuda.is_available()
    model.to("cuda" if cuda else "cpu")
    precision = "bf16" if cuda and recipe.train.precision != "fp32" else "fp32"
    objective = objective_for(recipe, rd.specials, rd.vocab_size)
    t = recipe.train
    n_batches = batches or t.eval_batches
    unigram = run_unigram(run_dir, recipe_path, rd, tok_file, eval_only=bool(data))
    base = evaluate(
        model, rd.eval, t.batch_size, n_batches, objective, recipe.run.seed, precision, unigram=unigram.log_probs()
    )
    if base["eval_tokens"] == 0:
        raise UserError(
            "the eval data yields no scored tokens", hint="Give more eval text (--data) or check the run's eval split."
        )
    out = {
        "checkpoint": str(model_dir),
        "eval_loss": base["eval_loss"],
        "perplexity": math.exp(min(base["eval_loss"], 50)),
        "accuracy": base["eval_accuracy"],
        "tokens": base["eval_tokens"],
        **{k: base[k] for k in (*floor.KEYS, "unigram_tokens", floor.AT_FLOOR_POSITIONS) if k in base},
    }
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
                layers = sample_subset(L, fixed, k, stream(recipe.run.seed, i, "eval_paths"))
                r = evaluate(
                    model, rd.eval, t.batch_size, n_batches, objective, recipe.run.seed, precision, layers=layers
                )
                losses.append(r["eval_loss"])
            by_k[str(k)] = sum(losses) / len(losses)
        out["by_path_length"] = by_k
        out["paths_per_length"] = n_paths
    return out


def run_unigram(run_dir: Path, recipe_path: Path, rd, tok_file: Path, eval_only: bool):
    """The run's train-split unigram (floor.py): its cached counts, or a count of its train split.

    With `raptr eval --data` (`eval_only`), `rd` holds only the given files, so the train split is read only when
    the run has no usable cache (a run from before the floor existed): the counts always come from
    the run's own train split, never from the files being scored.
    """
    from .train.data_setup import prepare_data

    if not eval_only:
        return floor.for_run(run_dir, rd.train, rd.tokenizer, rd.specials)
    cached = floor.load_cached(run_dir, rd.tokenizer, rd.specials)
    if cached is not None:
        return cached
    own = prepare_data(load_recipe(recipe_path), None, tok_file)  # the run's split, without --data
    return floor.fit(own.train, own.tokenizer, own.specials)


__all__ = ["locate", "load_model_dir", "run_eval", "run_unigram"]
