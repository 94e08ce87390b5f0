"""Checkpoints: a directory that exists is complete.

Layout of checkpoints/step-NNNNNNN/: model.safetensors (weights; safetensors' save_model handles
BERT's tied embedding/decoder), config.json (architecture), optimizer.pt (AdamW state, loaded with
weights_only=True), trainer_state.json (step, depth, counters, world size). Everything else a
resume needs (data order, masks, layer paths, dropout seeds) is a pure function of (seed, step).

Written by `atomic.atomic_dir` (a hidden temporary directory, fsynced, then renamed), as final/ is:
a kill mid-save leaves the previous checkpoint untouched and no half-written directory under a real
name. A save that fails removes its temporary; on a full disk it raises `DiskFull`, saying which
checkpoint is intact.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..atomic import Translate, atomic_dir
from ..data.corpus import sha256_file
from ..errors import UserError

PREFIX = "step-"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A checkpoint or final/ could not be written for lack of space (its temporary is removed)."""


def is_disk_full(e: BaseException, where: Path) -> bool:
    """Whether a failed write ran out of space. Python's own writes raise OSError(ENOSPC/EDQUOT);
    safetensors names the OS error in its message; torch.save to a path only reports "unexpected
    pos" (nothing chained), so for it the free space left at `where` decides."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    if any(f"os error {n})" in text for n in DISK_FULL):
        return True
    if "unexpected pos" in text or "file write failed" in text:
        try:
            return shutil.disk_usage(where).free < 64 * 2**20
        except OSError:
            return False
    return False


def intact_checkpoint(root: Path) -> str:
    """'previous checkpoint step N is intact (PATH)', or that there is none, for a failed save's message."""
    found = list_checkpoints(root)
    if not found:
        return "no previous checkpoint exists"
    return f"previous checkpoint step {int(found[-1].name[len(PREFIX) :])} is intact ({found[-1]})"


def _disk_full_at(target: Path, root: Path) -> Translate:
    """For `atomic_dir`: a write of `target` that ran out of space becomes DiskFull, naming the
    newest complete checkpoint of the run at `root`."""

    def translate(e: BaseException, tmp: Path) -> BaseException | None:
        if not is_disk_full(e, tmp if tmp.exists() else root):
            return None
        return DiskFull(
            f"disk full at {target}, {intact_checkpoint(root)}; the partial copy was removed. "
            "Free space, then continue the run with --resume."
        )

    return translate


def write_model_dir(path: Path, model: torch.nn.Module, arch: str, extra: dict | None = None) -> None:
    """model.safetensors + config.json into an existing directory."""
    save_model(model, str(path / "model.safetensors"))
    config = {"arch": arch, **dataclasses.asdict(model.config), **(extra or {})}
    (path / "config.json").write_text(json.dumps(config, indent=2))


def save_checkpoint(root: Path, step: int, model, optimizer_state: dict, state: dict, arch: str, keep: int) -> Path:
    """Atomically write checkpoint `step` under root/checkpoints; prune to the newest `keep`.
    `optimizer_state`: `optimizer.state_dict()`, or a sharded run's gathered full state dict."""
    ckpts = root / "checkpoints"
    final = ckpts / f"{PREFIX}{step:07d}"
    tmp = ckpts / f".tmp-{PREFIX}{step:07d}-{os.getpid()}"
    with atomic_dir(final, tmp, _disk_full_at(final, root)):  # re-saving a step (after a resume) replaces it
        write_model_dir(tmp, model, arch)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        # size and sha256 of every file: truncation (a full disk, a partial rsync) and silent corruption
        # are caught at load (hashing costs about 1 s per GB)
        manifest = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)} for f in tmp.iterdir()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            # rename first: a kill mid-delete must not leave a half-deleted dir under a real name
            doomed = ckpts / f".tmp-delete-{old.name}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def save_final(root: Path, model: torch.nn.Module, arch: str) -> Path:
    """root/final: the finished model with the run's tokenizer.json, what `raptr eval`, `export` and
    `finetune` read."""
    final = root / "final"
    with atomic_dir(final, root / ".final.tmp", _disk_full_at(final, root)) as tmp:
        write_model_dir(tmp, model, arch)
        shutil.copyfile(root / "tokenizer.json", tmp / "tokenizer.json")
    return final


def remove_stale_temporaries(root: Path) -> None:
    """Half-written checkpoint directories of a killed save are never loaded; clear them away."""
    d = root / "checkpoints"
    if d.is_dir():
        for p in d.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    d = root / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def pick_resume_checkpoint(out: Path) -> Path:
    """The newest complete checkpoint; a corrupted one is reported with the previous one offered."""
    found = list_checkpoints(out)
    try:
        read_state(found[-1])
    except UserError as e:
        if len(found) > 1:
            e.hint = (
                f"The previous complete checkpoint is {found[-2]}: move {found[-1]} out of "
                f"{out / 'checkpoints'} and run with --resume again."
            )
        raise
    return found[-1]


def read_state(ckpt: Path) -> dict:
    """trainer_state.json and config.json of a checkpoint, validated; UserError names what is wrong."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:  # ValueError: also bytes that are not UTF-8
        raise UserError(
            f"checkpoint {ckpt} is incomplete or corrupted ({e.__class__.__name__}: {e})",
            hint="Delete that directory to resume from the previous checkpoint.",
        ) from None
    # all of it checked before a resume acts on any of it (a bad step would truncate metrics.jsonl)
    problems = state_problems(state)
    if problems:
        raise UserError(
            f"{ckpt / 'trainer_state.json'} is malformed:",
            problems=problems,
            hint="Delete that checkpoint directory to resume from the previous one.",
        )
    if not isinstance(config, dict):
        raise UserError(
            f"{ckpt / 'config.json'} holds a {type(config).__name__}, not an object",
            hint="Delete that checkpoint directory to resume from the previous one.",
        )
    for name in ("model.safetensors", "optimizer.pt"):
        if not (ckpt / name).is_file():
            raise UserError(
                f"checkpoint {ckpt} has no {name}", hint="Delete that directory to resume from the previous one."
            )
    manifest = ckpt / "manifest.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text())
        except ValueError:
            raise UserError(
                f"checkpoint {ckpt}: manifest.json is corrupted",
                hint="Delete that directory to resume from the previous one.",
            ) from None
        for name, want in entries.items():
            want = want if isinstance(want, dict) else {"size": want}
            f = ckpt / name
            have = f.stat().st_size if f.is_file() else -1
            if have != want.get("size"):
                why = f"has {have} bytes, the manifest says {want.get('size')}"
            elif "sha256" in want and sha256_file(f) != want["sha256"]:
                why = "does not match the sha256 in the manifest"
            else:
                continue
            raise UserError(
                f"checkpoint {ckpt} is truncated or corrupted: {f} {why}",
                hint="Delete that checkpoint directory to resume from the previous one.",
            )
    return {"state": state, "config": config}


def _whole(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _amount(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# trainer_state.json: key -> (check, what it must be). Only `step` is always written; older runs'
# states may lack the others (the trainer keeps its own start values for those).
_STATE = {
    "step": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "depth": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "tokens": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "world_size": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "skipped_steps": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "flops": (_amount, "a finite number >= 0"),
    "elapsed_s": (_amount, "a finite number >= 0"),
    "data_s": (_amount, "a finite number >= 0"),
    "train_s": (_amount, "a finite number >= 0"),
    "sharded": (lambda v: isinstance(v, bool), "true or false"),
    "last_loss": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), "a number or null"),
    "data_blocks": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(x, 0) for x in v),
        "a list of two whole numbers (train and eval blocks)",
    ),
    "data_fingerprint": (lambda v: isinstance(v, str) and len(v) > 0, "a hex digest string"),
    "tokenizer_sha256": (lambda v: v is None or (isinstance(v, str) and len(v) == 64), "a sha256 hex digest or null"),
}
# per-stage counters the loop reads back at the end of a stage
_STAGE_KEYS = ("start_step", "tokens_start", "elapsed_start", "flops_start", "data_start")


def state_problems(state) -> list[str]:
    """What is wrong with a trainer_state.json's content, one line per key (empty when valid)."""
    if not isinstance(state, dict):
        return [f"it holds a {type(state).__name__}, not an object"]
    problems = [] if "step" in state else ["step is missing"]
    for key, (ok, what) in _STATE.items():
        if key in state and not ok(state[key]):
            problems.append(f"{key} = {json.dumps(state[key])}: must be {what}")
    stats = state.get("stage_stats", {})
    if not isinstance(stats, dict):
        problems.append(f"stage_stats = {json.dumps(stats)}: must be an object of per-stage counters")
    else:
        for name, s in stats.items():
            bad = (
                not name.isdigit()
                or not isinstance(s, dict)
                or any(not isinstance(s.get(k), (int, float)) or isinstance(s.get(k), bool) for k in _STAGE_KEYS)
            )
            if bad:
                problems.append(
                    f"stage_stats.{name}: must be a stage index holding the numbers {', '.join(_STAGE_KEYS)}"
                )
    return problems


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Load model.safetensors strictly; a shape or key mismatch is a UserError, not a traceback."""
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except Exception as e:  # safetensors raises plain errors on truncation and shape mismatch
        raise UserError(
            f"cannot load weights from {ckpt / 'model.safetensors'}: {e}",
            hint="The file is corrupted or belongs to another model configuration.",
        ) from None
    if missing or unexpected:
        raise UserError(
            f"{ckpt / 'model.safetensors'} does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})",
            hint="Resume with the recipe the run was started with (OUT/recipe.toml).",
        )


def read_optimizer(ckpt: Path) -> dict:
    """optimizer.pt as a state dict (tensors and plain types only: weights_only=True)."""
    try:
        return torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot load optimizer state from {ckpt / 'optimizer.pt'}: {e}",
            hint="Delete that checkpoint directory to resume from the previous one.",
        ) from None


def load_optimizer(ckpt: Path, optimizer: torch.optim.Optimizer) -> None:
    sd = read_optimizer(ckpt)
    try:
        optimizer.load_state_dict(sd)
    except Exception as e:
        raise UserError(
            f"cannot load optimizer state from {ckpt / 'optimizer.pt'}: {e}",
            hint="Delete that checkpoint directory to resume from the previous one.",
        ) from None
