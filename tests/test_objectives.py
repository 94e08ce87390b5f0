"""One objective interface for MLM and UL2: built from the recipe through the architecture's
registry entry, each yields (batch, groups) from (rows, seed, step), names its groups, and expects
the head share that planning counts FLOPs with."""

from __future__ import annotations

import torch

from raptr_cli.models.registry import objective_for, objective_spec_for
from raptr_cli.objectives.mlm import MLMObjective, mask_tokens
from raptr_cli.objectives.ul2 import UL2Objective
from raptr_cli.objectives.ul2_tokenizer import train_bpe, ul2_special_ids
from raptr_cli.planning import head_fraction
from raptr_cli.recipe import parse_recipe


def test_mlm_objective_is_the_masking_of_objectives_mlm() -> None:
    recipe = parse_recipe({"objective": {"mlm_probability": 0.2}})
    specials = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    obj = objective_for(recipe, specials, 40)
    assert isinstance(obj, MLMObjective) and obj.group_names == []
    assert obj.head_fraction == head_fraction(recipe) == 0.2
    rows = torch.randint(5, 40, (3, 16), generator=torch.Generator().manual_seed(0)).int()
    batch, groups = obj.batch(rows, seed=7, step=5)
    want = mask_tokens(
        rows.long(), seed=7, step=5, mlm_probability=0.2, mask_id=4, vocab_size=40, special_ids=[0, 1, 2, 3, 4]
    )
    assert groups is None and set(batch) == {"input_ids", "labels"}
    assert torch.equal(batch["input_ids"], want[0]) and torch.equal(batch["labels"], want[1])


def test_ul2_objective_groups_rows_by_denoiser() -> None:
    recipe = parse_recipe({"model": {"arch": "ul2"}, "tokenizer": {"vocab_size": 600}, "train": {"seq_len": 32}})
    text = ["the quick brown fox jumps over the lazy dog " * 3, "a stitch in time saves nine " * 4] * 20
    tok = train_bpe(text, vocab_size=600, n_sentinels=8)
    obj = objective_for(recipe, ul2_special_ids(tok), tok.get_vocab_size())
    assert isinstance(obj, UL2Objective)
    assert objective_spec_for(recipe).name == "ul2"
    assert obj.group_names == [d.name for d in recipe.objective.denoisers]
    assert obj.head_fraction == head_fraction(recipe)
    ids = [tok.encode(t).ids[:32] for t in text[:4]]
    rows = torch.full((4, 32), -1, dtype=torch.int32)
    for r, x in enumerate(ids):
        rows[r, : len(x)] = torch.tensor(x)
    batch, groups = obj.batch(rows, seed=0, step=3)
    assert set(batch) == {"input_ids", "labels", "prefix_len"} and batch["input_ids"].shape == (4, 32)
    assert groups.shape == (4,) and int(groups.max()) < len(obj.group_names)
    again, _ = obj.batch(rows, seed=0, step=3)  # a pure function of (rows, seed, step)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
