"""Pretraining objectives: token rows -> (input_ids, labels, ...) batches, one registry entry each.

`mlm`: BERT's dynamic 80/10/10 masking over packed [CLS] ... [SEP] blocks;
`ul2`: UL2's mixture of denoisers for the decoder-only prefix LM (`models/ul2`);
`ul2_tokenizer`: the byte-level BPE with UL2's paradigm and sentinel tokens.
An architecture names its default objective (`models.registry.ArchSpec.objective`); a recipe's
objective is looked up there (`models.registry.objective_for`), above this package.
"""

from __future__ import annotations

from typing import Any

from .base import Objective, ObjectiveSpec, objective_spec, register_objective
from .config import mixture_head_fraction, mixture_problems


def _mlm() -> Any:
    from .mlm import MLMObjective

    return MLMObjective


def _ul2() -> Any:
    from .ul2 import UL2Objective

    return UL2Objective


# mlm_probability and the 80/10/10 fractions are range-checked by the recipe for every recipe,
# as they always were; the mixture is checked only where it is used.
MLM = register_objective(
    ObjectiveSpec(
        "mlm",
        keys=("mlm_probability", "mask_token_frac", "random_token_frac"),
        head_fraction=lambda o: o.mlm_probability,
        load=_mlm,
    )
)
UL2 = register_objective(
    ObjectiveSpec(
        "ul2",
        keys=("denoisers",),
        head_fraction=lambda o: mixture_head_fraction(o.denoisers),
        load=_ul2,
        problems=lambda o: mixture_problems(o.denoisers, "objective.denoisers"),
    )
)


__all__ = ["MLM", "UL2", "Objective", "ObjectiveSpec", "objective_spec"]
