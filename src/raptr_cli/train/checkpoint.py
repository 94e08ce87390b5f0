"""Checkpoints: a directory that exists is complete.

Layout of checkpoints/step-NNNNNNN/: model.safetensors (weights; safetensors' save_model handles
BERT's tied embedding/decoder), config.json (architecture), optimizer.pt (AdamW state, loaded with
weights_only=True), trainer_state.json (step, depth, counters, world size). Everything else a
resume needs (data order, masks, layer paths, dropout seeds) is a pure function of (seed, step).

Written to a hidden temporary directory, fsynced, then renamed: a kill mid-save leaves the
previous checkpoint untouched and no half-written directory under a real name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..data.corpus import sha256_file
from ..errors import UserError

PREFIX = "step-"


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_model_dir(path: Path, model: torch.nn.Module, arch: str, extra: dict | None = None) -> None:
    """model.safetensors + config.json into an existing directory."""
    save_model(model, str(path / "model.safetensors"))
    config = {"arch": arch, **dataclasses.asdict(model.config), **(extra or {})}
    (path / "config.json").write_text(json.dumps(config, indent=2))


def save_checkpoint(root: Path, step: int, model, optimizer_state: dict, state: dict, arch: str, keep: int) -> Path:
    """Atomically write checkpoint `step` under root/checkpoints; prune to the newest `keep`.
    `optimizer_state`: `optimizer.state_dict()`, or a sharded run's gathered full state dict."""
    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"{PREFIX}{step:07d}"
    tmp = ckpts / f".tmp-{PREFIX}{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_model_dir(tmp, model, arch)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    # size and sha256 of every file: truncation (a full disk, a partial rsync) and silent corruption
    # are caught at load (hashing costs about 1 s per GB)
    manifest = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)} for f in tmp.iterdir()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it atomically enough
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpts)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            # rename first: a kill mid-delete must not leave a half-deleted dir under a real name
            doomed = ckpts / f".tmp-delete-{old.name}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
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


def read_state(ckpt: Path) -> dict:
    """trainer_state.json and config.json of a checkpoint, validated; UserError names what is wrong."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(
            f"checkpoint {ckpt} is incomplete or corrupted ({e.__class__.__name__}: {e})",
            hint="Delete that directory to resume from the previous checkpoint.",
        ) from None
    for name in ("model.safetensors", "optimizer.pt"):
        if not (ckpt / name).is_file():
            raise UserError(f"checkpoint {ckpt} has no {name}", hint="Delete that directory to resume from the previous one.")
    manifest = ckpt / "manifest.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text())
        except ValueError:
            raise UserError(f"checkpoint {ckpt}: manifest.json is corrupted",
                            hint="Delete that directory to resume from the previous one.") from None
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
            raise UserError(f"checkpoint {ckpt} is truncated or corrupted: {f} {why}",
                            hint="Delete that checkpoint directory to resume from the previous one.")
    return {"state": state, "config": config}


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
