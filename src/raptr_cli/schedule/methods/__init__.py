"""The registry of schedule methods: `schedule.method` names a class here. Adding a method is one
module with a `Method` subclass and one line below."""

from __future__ import annotations

from ..config import METHODS, method_class
from .base import Checks, Method
from .baseline import Baseline
from .pld import PLD
from .raptr import RaPTr
from .stacking import Stacking
from .stochastic_depth import StochasticDepth

METHODS.update(
    {
        "baseline": Baseline,
        "raptr": RaPTr,
        "stacking": Stacking,
        "pld": PLD,
        "stochastic_depth": StochasticDepth,
    }
)


def size_key(name: str | None) -> str:
    """The stage column of a method named in a run's files ("path_length" for a name not registered)."""
    return METHODS[name].size_key if name in METHODS else Method.size_key


def is_full_model(name: str | None) -> bool:
    """Whether the method named in a run's files trains the whole model at every step (compare's reference)."""
    return name in METHODS and METHODS[name].full_model


__all__ = ["METHODS", "Checks", "Method", "is_full_model", "method_class", "size_key"]
