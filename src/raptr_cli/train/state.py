"""What a run counts as it trains, saved in every checkpoint's trainer_state.json.

The JSON keys are the field names in field order, the order runs have always written them
(`checkpoint.state_problems` validates them on load); `skipped_steps` appears, last, once a step
was skipped (the dict this replaced put it before last_loss when the very first step was skipped).
A checkpoint of an older run may lack any key but `step`: the trainer keeps its start value for
those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class TrainState:
    tokens: int = 0
    flops: float = 0.0
    elapsed_s: float = 0.0
    """Wall time of the run, evals and checkpoints included, as of the last logged step."""
    world_size: int
    stage_stats: dict[str, dict] = field(default_factory=dict)
    """Per stage (str(index)): its start counters and losses (stage_stats.StageTracker)."""
    depth: int
    """Blocks the model has now (fewer than the recipe's n_layers while stacking grows it)."""
    sharded: bool
    data_blocks: list[int]
    """Train and eval block counts: a resume refuses data that packs into others."""
    data_fingerprint: str
    """fingerprint.data_fingerprint of those blocks."""
    tokenizer_sha256: str | None
    """The tokenizer.json the weights pair with, for `raptr eval` (None on ranks that write nothing)."""
    data_s: float = 0.0
    """Time the loop waited for its batches."""
    last_loss: float | None = None
    """The previous step's loss when it was logged, else None: a stage switch's loss jump."""
    train_s: float = 0.0
    """Time in training steps (batch waits included), evals and checkpoints excluded."""
    skipped_steps: int | None = None
    """Non-finite steps skipped under train.nan_policy = "skip" (None: none yet)."""

    def to_json(self) -> dict:
        """The trainer_state.json object, less the `step` that the checkpoint adds."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "skipped_steps" or self.skipped_steps is not None
        }

    def update(self, saved: dict) -> None:
        """Take the counters of a checkpoint's state (validated by checkpoint.read_state)."""
        for f in dataclasses.fields(self):
            if f.name in saved:
                setattr(self, f.name, saved[f.name])
