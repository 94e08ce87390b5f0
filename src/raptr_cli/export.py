"""Export a run's model (final/ or any checkpoint) to a directory Hugging Face transformers loads.

What each architecture becomes is its registry entry's `HFExport` (models/<arch>/hf.py): BERT
(post-LN) -> `BertForMaskedLM` with the same logits, pre-LN BERT refused; the UL2 decoder ->
`LlamaForCausalLM`, the same logits for fully causal input only (Llama has no prefix-LM mask).
Tied copies are left out of the weights, as HF saves them (HF's `_tied_weights_keys`), so every
transformers version re-ties them in the right direction (embedding -> head).

Output, written by `atomic.atomic_dir` (a temporary sibling directory renamed into place: a
directory that exists under OUT is complete; an existing OUT is replaced only then):
model.safetensors (HF key names, tied copies left out so HF re-ties them), config.json,
tokenizer.json (copied byte for byte), tokenizer_config.json, special_tokens_map.json. Nothing
here imports transformers: it is only a dev dependency, and the files are plain JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .atomic import atomic_dir
from .data.tokenizer import load_tokenizer, named_specials
from .errors import UserError
from .evaluation import locate
from .models.registry import arch_names, arch_spec
from .train import checkpoint as ckpt
from .train.rundir import refuse_if_running

TARGETS = ("hf",)
"""Export formats `raptr export --to` accepts."""


def export_hf(target: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Export the model at `target` (a run directory or a checkpoint / final directory) to
    `out_dir` in transformers' layout; returns `out_dir`.

    Refuses (UserError) a non-empty `out_dir` unless `overwrite`, an `out_dir` that holds the
    source run, a source run still being written (its lock is held), a pre-LN BERT, and a tokenizer
    that does not fit the model.
    """
    run_dir, model_dir = locate(Path(target))
    refuse_if_running(run_dir)  # a run in progress may replace final/ or prune this checkpoint meanwhile
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, [run_dir, model_dir], overwrite)

    conf = _read_config(model_dir)
    arch = conf.get("arch", "bert")
    tok_file = _tokenizer_file(run_dir, model_dir)
    tok = load_tokenizer(tok_file, specials=None)
    exportable = [n for n in arch_names() if arch_spec(n).export is not None]
    spec = arch_spec(arch) if arch in exportable else None
    if spec is None:
        names = " and ".join(f'"{n}"' for n in exportable)
        raise UserError(f"{model_dir / 'config.json'}: unknown arch {arch!r}", hint=f"raptr exports {names} models.")
    cfg = _config(spec.config, conf, model_dir)
    if spec.export.check is not None:
        spec.export.check(cfg, model_dir)
    specials = named_specials(tok, tok_file, spec.tokenizer.specials)
    model = spec.build(cfg)
    hf_config, tok_config = spec.export.configs(cfg, tok, specials)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise UserError(
            f"{tok_file} has {tok.get_vocab_size()} tokens but the model's vocab_size is {cfg.vocab_size}",
            hint="Export with the tokenizer.json of the run the checkpoint came from.",
        )
    ckpt.load_weights(model_dir, model)  # strict: a truncated or mismatched file is a UserError

    hf_config["torch_dtype"] = "float32"
    # Tensors are copied out (contiguous, fp32): HF loads fp32 and the logits match raptr's.
    drop = set(spec.export.tied_keys(cfg))
    tensors = {
        k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items() if k not in drop
    }

    with atomic_dir(out_dir, out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", hf_config)
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        _write_json(tmp / "tokenizer_config.json", tok_config)
        _write_json(
            tmp / "special_tokens_map.json",
            {
                k: v
                for k, v in tok_config.items()  # not add_bos_token/add_eos_token
                if (k.endswith("_token") and not k.startswith("add_")) or k == "additional_special_tokens"
            },
        )
    return out_dir


def hf_loader(architecture: str) -> str:
    """The transformers `Auto*` class that opens an export whose config.json names `architecture`."""
    for name in arch_names():
        export = arch_spec(name).export
        if export is not None and export.architecture == architecture:
            return export.auto_class
    return "AutoModel"


# --- checks -------------------------------------------------------------------------------------


def _check_out_dir(out_dir: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse an OUT that would clobber user files or the run being exported."""
    out = out_dir.resolve()
    for src in sources:
        s = src.resolve()
        if out == s or out in s.parents:
            raise UserError(
                f"the export directory {out_dir} contains the model being exported ({src})",
                hint="Choose an OUT_DIR outside the run's final/ and checkpoints/, e.g. runs/<name>-hf.",
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory", hint="Choose another OUT_DIR or remove that file.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{out_dir} already exists and is not empty",
            hint="Pass --overwrite to replace its contents, or choose another OUT_DIR.",
        )


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        conf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {model_dir / 'config.json'} ({e})", hint="Is this a raptr run or checkpoint directory?"
        ) from None
    if not isinstance(conf, dict):
        raise UserError(
            f"{model_dir / 'config.json'} is not a JSON object", hint="Is this a raptr run or checkpoint directory?"
        )
    return conf


def _config(cls: type, conf: dict[str, Any], model_dir: Path) -> Any:
    """The architecture dataclass from config.json; extra keys (e.g. "arch") are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in conf.items() if k in names})
    except UserError as e:
        e.message = f"{model_dir / 'config.json'}: {e.message}"
        raise
    except TypeError as e:  # a field of the wrong JSON type
        raise UserError(
            f"{model_dir / 'config.json'} is not a valid {cls.__name__}: {e}",
            hint="Is this a raptr run or checkpoint directory?",
        ) from None


def _tokenizer_file(run_dir: Path, model_dir: Path) -> Path:
    """final/ carries its tokenizer; checkpoints use the run's (the same file, copied at the end)."""
    for p in (model_dir / "tokenizer.json", run_dir / "tokenizer.json"):
        if p.is_file():
            return p
    raise UserError(
        f"no tokenizer.json in {model_dir} or {run_dir}",
        hint="Export from the run directory `raptr pretrain` wrote: the tokenizer is part of the exported model.",
    )


# --- writing -------------------------------------------------------------------------------------


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


__all__ = ["TARGETS", "export_hf", "hf_loader"]
