"""What the trainer writes and reads back: checkpoints (gathered from the shards when the run is
sharded) and a resume's checks against the checkpoint it continues."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from ..errors import UserError
from ..models import build_model
from . import checkpoint as ckpt
from .fingerprint import check_same_data
from .sharding import full_state, load_full_state


class Persistence:
    """Checkpoint save and load for `Trainer` (train/loop.py), which provides what these read: the
    recipe `r`, `out`, the accelerator `acc`, `cfg`, `state`, `step`, `model`, `opt`, `sharded`,
    `world`, the metrics `log` and `_build(depth)`."""

    def _load(self, path: Path) -> None:
        info = ckpt.read_state(path)
        st, conf = info["state"], info["config"]
        if st.get("sharded", False) != self.sharded:
            how = {True: "sharded (FSDP)", False: "replicated"}
            raise UserError(
                f"{path} was written by a {how[st.get('sharded', False)]} run, this run is {how[self.sharded]}",
                hint="Resume with the launch configuration the run was started with.",
            )
        if st.get("world_size", 1) != self.world:
            raise UserError(
                f"{path} was written by {st.get('world_size')} processes, this run has {self.world}",
                hint="Resume with the same number of processes (exact resume replays each rank's data).",
            )
        if conf.get("vocab_size") != self.cfg.vocab_size or conf.get("hidden_size") != self.cfg.hidden_size:
            raise UserError(
                f"{path} belongs to another model configuration",
                hint="Resume with the recipe the run was started with (OUT/recipe.toml).",
            )
        note = check_same_data(path, st, self.state, self.r)
        if note and self.acc.is_main_process:
            print(f"raptr: note: {note}", file=sys.stderr, flush=True)
        if st.get("depth", 0) > self.cfg.num_layers or "depth" not in st:  # (its type: read_state)
            raise UserError(
                f"{path / 'trainer_state.json'}: depth = {st.get('depth')} does not fit the "
                f"model's {self.cfg.num_layers} layers",
                hint="Delete that checkpoint to resume from the previous one.",
            )
        if st["depth"] != self.state.depth:
            self._build(st["depth"])
        if self.sharded:  # every rank reads the full tensors, then keeps its shards
            plain = self._plain_model()
            ckpt.load_weights(path, plain)
            load_full_state(self.model, plain.state_dict(), self.opt, ckpt.read_optimizer(path))
        else:
            ckpt.load_weights(path, self.model)
            ckpt.load_optimizer(path, self.opt)
        self.step = st["step"]
        self.state.update(st)

    def _plain_model(self) -> torch.nn.Module:
        """An unsharded CPU model of the current depth (for saving and loading a sharded run)."""
        cfg = copy.deepcopy(self.cfg)
        cfg.num_layers = self.state.depth
        with torch.random.fork_rng(devices=[]):  # its random init must not move the run's RNG
            return build_model(cfg)

    def _gathered(self) -> tuple[torch.nn.Module | None, dict | None]:
        """Sharded runs: the full model (as a plain CPU model) and optimizer state on rank 0, None
        elsewhere. A collective: every rank calls it."""
        msd, osd = full_state(self.model, self.opt)
        if not self.acc.is_main_process:
            return None, None
        plain = self._plain_model()
        plain.load_state_dict(msd)
        return plain, osd

    def _full(self) -> tuple[torch.nn.Module | None, dict | None]:
        """The full model and optimizer state to save (rank 0; a collective when sharded)."""
        if self.sharded:
            return self._gathered()
        return self.model, self.opt.state_dict() if self.acc.is_main_process else None

    def _checkpoint(self, full: tuple | None = None) -> Path | None:
        model, opt_state = full or self._full()
        if not self.acc.is_main_process:
            self.acc.wait_for_everyone()
            return None
        path = ckpt.save_checkpoint(
            self.out,
            self.step,
            model,
            opt_state,
            self.state.to_json(),
            self.r.model.arch,
            self.r.train.keep_checkpoints,
        )
        self.log.log({"event": "checkpoint", "step": self.step, "path": str(path.relative_to(self.out))})
        self.acc.wait_for_everyone()
        return path
