"""Export a run's model (final/ or any checkpoint) to a directory Hugging Face transformers loads.

- BERT (post-LN) -> `BertForMaskedLM`: raptr's state-dict names are HF's, so the weights go over
  unchanged and `AutoModelForMaskedLM.from_pretrained(out)` gives the same logits.
- UL2 decoder -> `LlamaForCausalLM`: same names and block math. Llama has no prefix-LM mask, so
  the exported model reproduces raptr's logits for fully causal input (prefix_len=None) only;
  a UL2 prompt whose prefix raptr attended to bidirectionally is seen causally by Llama.
- Pre-LN BERT has no HF architecture (its extra final LayerNorm and the moved LayerNorms would
  load with `strict=False` and silently compute something else), so it is refused.

Output, written by `atomic.atomic_dir` (a temporary sibling directory renamed into place: a
directory that exists under OUT is complete; an existing OUT is replaced only then): model.safetensors (HF key names, tied copies left out so HF re-ties them),
config.json, tokenizer.json (copied byte for byte), tokenizer_config.json, special_tokens_map.json.
Nothing here imports transformers: it is only a dev dependency, and the files are plain JSON.
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
from tokenizers import Tokenizer

from .atomic import atomic_dir
from .errors import UserError
from .evaluation import locate
from .models.presets import BertConfig, DecoderConfig
from .train import checkpoint as ckpt
from .train.rundir import refuse_if_running

TARGETS = ("hf",)
"""Export formats `raptr export --to` accepts."""

# Keys HF drops from a checkpoint because `tie_weights()` re-creates them from the embedding
# (HF's `_tied_weights_keys`; BERT is always tied, UL2 only with `tie_embeddings`). Saving the
# embedding and omitting these is HF's own convention, so every transformers version re-ties in
# the right direction (embedding -> head).
_TIED_KEYS = {
    "bert": ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
    "ul2": ("lm_head.weight",),
}


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
    tok = _load_tokenizer(tok_file)
    if arch == "bert":
        cfg: Any = _config(BertConfig, conf, model_dir)
        if cfg.norm != "post" or not cfg.residual:
            what = {"pre": "a pre-LN BERT", "none": "a BERT without LayerNorm"}.get(cfg.norm, "a BERT without residuals")
            raise UserError(
                f"{model_dir} holds {what} (norm = {cfg.norm!r}, residual = {cfg.residual}), which has no "
                "transformers equivalent",
                hint="Only post-LN BERT with residuals (the default) exports to "
                     "BertForMaskedLM; HF's BERT would load these weights but compute a different "
                     "function.")
        from .data.tokenizer import special_ids
        from .models.bert import BertForMaskedLM

        specials: dict[str, Any] = _with_file(special_ids, tok, tok_file)
        model: torch.nn.Module = BertForMaskedLM(cfg)
        hf_config = {**cfg.to_hf_dict(), "pad_token_id": specials["pad"]}
        tok_config = _bert_tokenizer_config(tok, cfg)
    elif arch == "ul2":
        cfg = _config(DecoderConfig, conf, model_dir)
        from .models.decoder import DecoderForPrefixLM
        from .objectives.ul2_tokenizer import ul2_special_ids

        specials = _with_file(ul2_special_ids, tok, tok_file)
        model = DecoderForPrefixLM(cfg)
        hf_config = {**cfg.to_hf_dict(), "pad_token_id": specials["pad"],
                     "bos_token_id": specials["bos"], "eos_token_id": specials["eos"]}
        tok_config = _ul2_tokenizer_config(tok, cfg)
    else:
        raise UserError(f"{model_dir / 'config.json'}: unknown arch {arch!r}",
                        hint='raptr exports "bert" and "ul2" models.')
    if tok.get_vocab_size() > cfg.vocab_size:
        raise UserError(
            f"{tok_file} has {tok.get_vocab_size()} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}",
            hint="Export with the tokenizer.json of the run the checkpoint came from.")
    ckpt.load_weights(model_dir, model)  # strict: a truncated or mismatched file is a UserError

    hf_config["torch_dtype"] = "float32"
    # Tensors are copied out (contiguous, fp32): HF loads fp32 and the logits match raptr's.
    drop = set(_TIED_KEYS[arch]) if arch == "bert" or cfg.tie_embeddings else set()
    tensors = {k: v.detach().to(torch.float32).contiguous().clone()
               for k, v in model.state_dict().items() if k not in drop}

    with atomic_dir(out_dir, out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}") as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", hf_config)
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        _write_json(tmp / "tokenizer_config.json", tok_config)
        _write_json(tmp / "special_tokens_map.json",
                    {k: v for k, v in tok_config.items()  # not add_bos_token/add_eos_token
                     if (k.endswith("_token") and not k.startswith("add_"))
                     or k == "additional_special_tokens"})
    return out_dir


# --- checks -------------------------------------------------------------------------------------


def _check_out_dir(out_dir: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse an OUT that would clobber user files or the run being exported."""
    out = out_dir.resolve()
    for src in sources:
        s = src.resolve()
        if out == s or out in s.parents:
            raise UserError(f"the export directory {out_dir} contains the model being exported ({src})",
                            hint="Choose an OUT_DIR outside the run's final/ and checkpoints/, "
                                 "e.g. runs/<name>-hf.")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory",
                        hint="Choose another OUT_DIR or remove that file.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} already exists and is not empty",
                        hint="Pass --overwrite to replace its contents, or choose another OUT_DIR.")


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        conf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {model_dir / 'config.json'} ({e})",
                        hint="Is this a raptr run or checkpoint directory?") from None
    if not isinstance(conf, dict):
        raise UserError(f"{model_dir / 'config.json'} is not a JSON object",
                        hint="Is this a raptr run or checkpoint directory?")
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
        raise UserError(f"{model_dir / 'config.json'} is not a valid {cls.__name__}: {e}",
                        hint="Is this a raptr run or checkpoint directory?") from None


def _tokenizer_file(run_dir: Path, model_dir: Path) -> Path:
    """final/ carries its tokenizer; checkpoints use the run's (the same file, copied at the end)."""
    for p in (model_dir / "tokenizer.json", run_dir / "tokenizer.json"):
        if p.is_file():
            return p
    raise UserError(f"no tokenizer.json in {model_dir} or {run_dir}",
                    hint="Export from the run directory `raptr pretrain` wrote: the tokenizer is "
                         "part of the exported model.")


def _load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise UserError(f"cannot read the tokenizer {path}: {e}",
                        hint="The file is corrupted; copy it from the run directory.") from None


def _with_file(fn: Any, tok: Tokenizer, path: Path) -> Any:
    """Call a special-id lookup, naming the tokenizer file in its UserError."""
    try:
        return fn(tok)
    except UserError as e:
        e.message = f"{path}: {e.message}"
        raise


# --- tokenizer files -----------------------------------------------------------------------------


def _bert_tokenizer_config(tok: Tokenizer, cfg: BertConfig) -> dict[str, Any]:
    """tokenizer_config.json for a raptr WordPiece tokenizer.

    `BertTokenizerFast` (transformers 4) and `BertTokenizer` (5) re-apply `do_lower_case`,
    `strip_accents` and `tokenize_chinese_chars` to the normaliser (v5 rebuilds the whole
    pipeline from the vocabulary), and both default to lowercasing: the flags must be copied from
    tokenizer.json or a cased tokenizer would come back uncased. A tokenizer.json that is not the
    standard BERT pipeline is declared as `PreTrainedTokenizerFast`, which uses the file verbatim.
    """
    spec = json.loads(tok.to_str())
    norm = spec.get("normalizer") or {}
    model = spec.get("model") or {}
    bert_like = (model.get("type") == "WordPiece"
                 and model.get("continuing_subword_prefix") == "##"
                 and model.get("max_input_chars_per_word", 100) == 100
                 and norm.get("type") == "BertNormalizer" and norm.get("clean_text", True)
                 and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer")
    out: dict[str, Any] = {
        "tokenizer_class": "BertTokenizerFast" if bert_like else "PreTrainedTokenizerFast",
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]", "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": True,
    }
    if bert_like:
        out.update(do_lower_case=bool(norm.get("lowercase", False)),
                   strip_accents=norm.get("strip_accents"),
                   tokenize_chinese_chars=bool(norm.get("handle_chinese_chars", True)))
    else:
        out["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    return out


def _ul2_tokenizer_config(tok: Tokenizer, cfg: DecoderConfig) -> dict[str, Any]:
    """tokenizer_config.json for the UL2 byte-level BPE: loaded verbatim as a
    `PreTrainedTokenizerFast`. No BOS/EOS is added on encode, as in raptr's own tokenizer (the UL2
    objective places [BOS]/paradigm tokens itself); callers prepend them when they want them."""
    from .objectives.ul2_tokenizer import BASE_SPECIALS, sentinel_token

    extras = [t for k, t in BASE_SPECIALS.items() if k.startswith("[")]
    n = 0
    while tok.token_to_id(sentinel_token(n)) is not None:
        n += 1
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BASE_SPECIALS["bos"], "eos_token": BASE_SPECIALS["eos"],
        "unk_token": BASE_SPECIALS["unk"], "pad_token": BASE_SPECIALS["pad"],
        "additional_special_tokens": extras + [sentinel_token(i) for i in range(n)],
        "add_bos_token": False, "add_eos_token": False,
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": False,  # byte-level decoding is already lossless
        "model_input_names": ["input_ids", "attention_mask"],
    }


# --- writing -------------------------------------------------------------------------------------


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


__all__ = ["TARGETS", "export_hf"]
