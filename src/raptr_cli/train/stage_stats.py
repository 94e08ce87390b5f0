"""Per-stage statistics: the counters each stage starts from, its losses, the loss jump at a stage
switch (the `transition` event) and the `stage_end` summary row.

They live in TrainState.stage_stats (trainer_state.json), so a resumed run still summarises a stage
it began before the interruption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import floor
from .metrics import MetricsLogger
from .state import TrainState

if TYPE_CHECKING:
    from ..schedule import Stage


class StageTracker:
    def __init__(self, state: TrainState, log: MetricsLogger):
        self.state, self.log = state, log

    def logged(self, step: int, stage: Stage, loss: float, start: dict) -> None:
        """Step `step` (0-based) of `stage` was logged with `loss`; `start`: the run's counters when
        it began (Throughput.at_step_start), kept when it is the stage's first logged step."""
        s = self.state.stage_stats.setdefault(str(stage.index), {"start_step": step, "loss_start": loss, **start})
        last_loss = self.state.last_loss
        if step == stage.start and stage.index > 0 and last_loss is not None:
            # stamped like the training row of the same step (step + 1), so a resume from the
            # boundary checkpoint (which keeps rows <= its step) logs it exactly once
            self.log.log(
                {
                    "event": "transition",
                    "step": step + 1,
                    "from_stage": stage.index - 1,
                    "to_stage": stage.index,
                    "loss_before": last_loss,
                    "loss_after": loss,
                }
            )
            s["loss_after_transition"], s["loss_before_transition"] = loss, last_loss
        s["loss_end"] = loss

    def step_done(self, loss: float | None) -> None:
        """The step's logged loss, or None when it was not logged."""
        self.state.last_loss = loss

    def stage_end(self, step: int, stage: Stage, method: str, ev: dict) -> None:
        """Log the summary of `stage`, which ended at `step` with the eval row `ev`."""
        st, s = self.state, self.state.stage_stats[str(stage.index)]
        elapsed = st.elapsed_s - s["elapsed_start"]  # wall time, evals included
        train_s = st.train_s - s.get("train_start", 0.0)  # training steps only
        tokens = st.tokens - s["tokens_start"]
        self.log.log(
            {
                "event": "stage_end",
                "step": step,
                "stage": stage.index,
                "method": method,
                "path_length": stage.path_length,
                "keep_prob": stage.keep_prob,
                "depth": stage.depth,
                "steps": stage.end - stage.start,
                "tokens": tokens,
                "flops": st.flops,
                "loss_start": s.get("loss_start"),
                "loss_end": s.get("loss_end"),
                "loss_before_transition": s.get("loss_before_transition"),
                "loss_after_transition": s.get("loss_after_transition"),
                "eval_loss": ev["eval_loss"],
                "eval_full_model": ev["eval_full_model"],
                **floor.floor_keys(ev),
                "tokens_per_s": tokens / max(train_s, 1e-9),
                "wall_s": round(elapsed, 3),
                "tflops_per_s": (st.flops - s["flops_start"]) / max(train_s, 1e-9) / 1e12,
                "data_share": (st.data_s - s["data_start"]) / max(train_s, 1e-9),
            }
        )
