"""The objective interface and its registry, torch-free.

An objective turns token rows into one step's model inputs, a pure function of (rows, seed, step)
so every rank and a resumed run agree. What planning needs before any tokenizer exists (its recipe
keys, their validation, the share of positions the output head runs on) is in its `ObjectiveSpec`;
`load` imports the torch implementation only when a run builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UserError

if TYPE_CHECKING:
    import torch


class Objective(Protocol):
    """What the trainer and the evaluator ask of an objective."""

    group_names: list[str]
    """Names of the row groups reported with their own loss (UL2: one per denoiser; MLM: none)."""
    head_fraction: float
    """Expected share of positions the output head runs on (the FLOPs count's head term)."""

    def batch(self, rows: torch.Tensor, seed: int, step: int) -> tuple[dict, torch.Tensor | None]:
        """(model inputs: input_ids, labels and what else the model takes; each row's group index
        into `group_names`, or None without groups) for token rows (B, seq_len) of one step."""
        ...


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    keys: tuple[str, ...]
    """The recipe [objective] keys it reads (a resolved recipe shows only these)."""
    head_fraction: Callable[[Any], float]
    """Recipe [objective] section -> `Objective.head_fraction`, without building the objective."""
    load: Callable[[], Callable[..., Objective]]
    """-> the class, called as cls(section, specials, vocab_size, seq_len) (imports torch)."""
    problems: Callable[[Any], list[str]] = field(default=lambda section: [])
    """Recipe [objective] section -> problems with its keys, each naming it."""


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"objective {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def objective_spec(name: str) -> ObjectiveSpec:
    if name not in _REGISTRY:
        raise UserError(f"unknown objective {name!r}", hint=f"Choose one of: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]
