"""Stage schedules and per-step subnetworks for progressive subnetwork training.

config.py holds the `[schedule]` section, stages.py the stage arithmetic, rng.py the keyed random
streams, methods/ one Method per schedule method (and the registry), plan.py the resolved Plan."""

from __future__ import annotations

from .config import ScheduleConfig, StageConfig
from .methods import METHODS, Method, is_full_model, method_class, size_key
from .methods.pld import solve_pld_gamma
from .methods.stacking import growth_sources
from .plan import Plan, build_plan, describe, rescaled_schedule
from .rng import TAGS, sample_subset, step_generator, stream
from .stages import Stage, stage_bounds

__all__ = [
    "METHODS",
    "TAGS",
    "Method",
    "Plan",
    "ScheduleConfig",
    "Stage",
    "StageConfig",
    "build_plan",
    "describe",
    "growth_sources",
    "is_full_model",
    "method_class",
    "rescaled_schedule",
    "sample_subset",
    "size_key",
    "solve_pld_gamma",
    "stage_bounds",
    "step_generator",
    "stream",
]
