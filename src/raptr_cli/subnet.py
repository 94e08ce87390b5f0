"""The subnetwork one training step runs: which blocks, at what training-time scale. Torch-free, so
the schedule (which draws it) and the models (which run it) share it without importing each other.
Width fields (heads, MLP units per block) join here for Random Part Training."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subnet:
    """layers: ascending block indices to run (None = every block); scales: one per entry of
    `layers` (None = all 1.0), the residual-branch scale of each (1/p for stochastic depth and PLD)."""

    layers: tuple[int, ...] | None = None
    scales: tuple[float, ...] | None = None

    @property
    def full(self) -> bool:
        """True when this is the whole model at scale 1 (what evaluation runs)."""
        return self.layers is None and (self.scales is None or all(s == 1.0 for s in self.scales))


FULL = Subnet()
