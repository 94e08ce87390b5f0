"""The masked update of width subnetworks: after a step, the weights and AdamW moments of the heads
and MLP units that did not run are exactly what they were (no moment decay, no weight decay), while
the kept ones moved."""

from __future__ import annotations

import pytest
import torch

from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.bert.model import BertForMaskedLM
from raptr_cli.models.ul2.config import DecoderConfig
from raptr_cli.models.ul2.model import DecoderForPrefixLM
from raptr_cli.recipe import OptimConfig
from raptr_cli.subnet import Subnet
from raptr_cli.train.optim import build_optimizer
from raptr_cli.train.width import dropped_slices, masked_update


def bert():
    return BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_layers=3,
            num_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            norm="pre",
            hidden_dropout=0.0,
            attention_dropout=0.0,
        )
    )


def decoder():
    return DecoderForPrefixLM(
        DecoderConfig(
            vocab_size=50,
            hidden_size=32,
            num_layers=3,
            num_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            dropout=0.0,
        )
    )


FULL_WIDTH = Subnet(layers=(0, 1, 2))
NARROW = Subnet(layers=(0, 2), heads=((1, 3), (0, 1)), units=(tuple(range(0, 64, 2)), tuple(range(16, 48))))


def step(model, opt, subnet: Subnet) -> None:
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(len(opt.state)))
    model(ids, labels=ids, subnet=subnet).loss.backward()
    with masked_update(opt, model, subnet):
        opt.step()
    opt.zero_grad(set_to_none=True)


def snapshot(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


@pytest.mark.parametrize("make", [bert, decoder])
def test_dropped_weights_and_moments_are_untouched_kept_ones_move(make) -> None:
    torch.manual_seed(0)
    model = make().train()
    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    step(model, opt, FULL_WIDTH)  # moments everywhere are now nonzero
    slices = dropped_slices(model, NARROW)
    assert slices
    before = [
        (snapshot(p), snapshot(opt.state[p]["exp_avg"]), snapshot(opt.state[p]["exp_avg_sq"])) for p, _, _ in slices
    ]
    step(model, opt, NARROW)
    for (p, dim, idx), (w0, m0, v0) in zip(slices, before):
        st = opt.state[p]
        for now, was in ((p, w0), (st["exp_avg"], m0), (st["exp_avg_sq"], v0)):
            assert torch.equal(now.index_select(dim, idx), was.index_select(dim, idx))  # dropped: bit for bit
        keep = torch.tensor([i for i in range(p.shape[dim]) if i not in set(idx.tolist())])
        for now, was in ((p, w0), (st["exp_avg"], m0), (st["exp_avg_sq"], v0)):
            assert not torch.equal(now.index_select(dim, keep), was.index_select(dim, keep))  # kept: moved


def test_dropped_slices_cover_rows_and_columns_of_every_width_parameter() -> None:
    model = bert()
    by_param = {id(p): (dim, idx.tolist()) for p, dim, idx in dropped_slices(model, NARROW)}
    blk = model.blocks[0]
    dropped_heads = [r for h in (0, 2) for r in range(h * 8, (h + 1) * 8)]
    assert by_param[id(blk.attention.self.query.weight)] == (0, dropped_heads)
    assert by_param[id(blk.attention.self.value.bias)] == (0, dropped_heads)
    assert by_param[id(blk.attention.output.dense.weight)] == (1, dropped_heads)
    assert by_param[id(blk.intermediate.dense.weight)] == (0, list(range(1, 64, 2)))
    assert by_param[id(blk.output.dense.weight)] == (1, list(range(1, 64, 2)))
    assert id(blk.attention.output.dense.bias) not in by_param  # always trained: it is not per head
    assert all(id(p) not in by_param for p in model.blocks[1].parameters())  # a skipped block: AdamW skips it


def test_first_step_moments_of_dropped_parts_are_zero() -> None:
    torch.manual_seed(0)
    model = bert().train()
    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    w0 = {id(p): snapshot(p) for p, _, _ in dropped_slices(model, NARROW)}
    step(model, opt, NARROW)
    for p, dim, idx in dropped_slices(model, NARROW):
        assert torch.equal(p.index_select(dim, idx), w0[id(p)].index_select(dim, idx))  # no weight decay
        assert torch.count_nonzero(opt.state[p]["exp_avg"].index_select(dim, idx)) == 0
        assert torch.count_nonzero(opt.state[p]["exp_avg_sq"].index_select(dim, idx)) == 0


def test_without_the_mask_adamw_would_move_the_dropped_parts() -> None:
    """Why the mask exists: a plain AdamW step decays the moments and weights a zero grad leaves."""
    torch.manual_seed(0)
    model = bert().train()
    opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    step(model, opt, FULL_WIDTH)
    p, dim, idx = dropped_slices(model, NARROW)[0]
    w0, m0 = snapshot(p), snapshot(opt.state[p]["exp_avg"])
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(5))
    model(ids, labels=ids, subnet=NARROW).loss.backward()
    opt.step()
    assert not torch.equal(p.index_select(dim, idx), w0.index_select(dim, idx))
    assert not torch.equal(opt.state[p]["exp_avg"].index_select(dim, idx), m0.index_select(dim, idx))
