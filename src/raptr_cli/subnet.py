"""The subnetwork one training step runs: which blocks, at what training-time scale, and within each
block which attention heads and MLP units (Random Part Training's width axis). Torch-free, so the
schedule (which draws it), the models (which run it) and the masked optimizer step share it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subnet:
    """layers: ascending block indices to run (None = every block); scales: one per entry of
    `layers` (None = all 1.0), the residual-branch scale of each (1/p for stochastic depth and PLD).

    heads / units: one entry per block that runs (in `layers` order, or every block when `layers` is
    None): the ascending attention heads, or MLP intermediate units, that block computes; None = all
    of them. width_scale: "inverse_fraction" scales the kept heads' (units') output by
    n_heads / kept (d_ff / kept) before the output projection, "none" leaves it."""

    layers: tuple[int, ...] | None = None
    scales: tuple[float, ...] | None = None
    heads: tuple[tuple[int, ...], ...] | None = None
    units: tuple[tuple[int, ...], ...] | None = None
    width_scale: str = "none"

    @property
    def narrow(self) -> bool:
        """True when some block runs only part of its heads or MLP units."""
        return self.heads is not None or self.units is not None

    @property
    def full(self) -> bool:
        """True when this is the whole model at scale 1 (what evaluation runs)."""
        return self.layers is None and not self.narrow and (self.scales is None or all(s == 1.0 for s in self.scales))


FULL = Subnet()
