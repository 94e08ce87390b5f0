"""Width subnetworks in the models: a subnet's dropped heads and MLP units are not computed (sliced
weights), yet the output is what the full block gives with those heads' and units' contributions
removed; inverse_fraction scales the kept ones; the full subnet is the plain model, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.bert.model import BertForMaskedLM
from raptr_cli.models.ul2.config import DecoderConfig
from raptr_cli.models.ul2.model import DecoderForPrefixLM
from raptr_cli.subnet import Subnet


def bert(norm: str = "pre") -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_layers=3,
            num_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            norm=norm,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        )
    ).eval()


def decoder() -> DecoderForPrefixLM:
    torch.manual_seed(0)
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
    ).eval()


SUBNET = Subnet(layers=(0, 2), heads=((1, 3), (0, 1)), units=(tuple(range(0, 64, 2)), tuple(range(16, 48))))


def zeroed_reference(model, subnet: Subnet, inverse: bool):
    """The full model with every dropped head's and unit's output-projection columns zeroed (and the
    kept ones scaled for inverse_fraction): mathematically the width subnet, computed the slow way."""
    ref = copy.deepcopy(model)
    hs = 32 // 4
    with torch.no_grad():
        for j, i in enumerate(subnet.layers):
            cols = ref.blocks[i].width_parts()
            o, down = cols["heads"][1][0], cols["units"][1][0]
            keep_h = torch.zeros(32)
            for h in subnet.heads[j]:
                keep_h[h * hs : (h + 1) * hs] = 4 / len(subnet.heads[j]) if inverse else 1.0
            keep_u = torch.zeros(64)
            keep_u[list(subnet.units[j])] = 64 / len(subnet.units[j]) if inverse else 1.0
            o.mul_(keep_h)
            down.mul_(keep_u)
    return ref


@pytest.mark.parametrize("make", [bert, lambda: bert("post"), decoder])
@pytest.mark.parametrize("scale", ["none", "inverse_fraction"])
def test_width_subnet_equals_the_zeroed_full_blocks(make, scale) -> None:
    model = make()
    sub = Subnet(SUBNET.layers, None, SUBNET.heads, SUBNET.units, scale)
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        narrow = model(ids, subnet=sub).logits
        ref = zeroed_reference(model, sub, scale == "inverse_fraction")(ids, layers=list(sub.layers)).logits
        depth_only = model(ids, layers=list(sub.layers)).logits
    torch.testing.assert_close(narrow, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(narrow, depth_only, atol=1e-4)


@pytest.mark.parametrize("make", [bert, decoder])
def test_full_subnet_and_eval_are_the_plain_model(make) -> None:
    model = make()
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(ids).logits
        model(ids, subnet=SUBNET)  # a narrow step leaves nothing behind
        torch.testing.assert_close(model(ids).logits, plain, rtol=0, atol=0)
        torch.testing.assert_close(model(ids, subnet=Subnet()).logits, plain, rtol=0, atol=0)


@pytest.mark.parametrize("make", [bert, decoder])
def test_dropped_parts_are_not_computed_and_get_zero_grad(make) -> None:
    """The matmuls are smaller (no full-width projection runs), and the gather gives the dropped
    rows and columns an exactly zero gradient."""
    model = make().train()
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    shapes: list[tuple] = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.linear:
                shapes.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    with Spy():
        out = model(ids, labels=ids, subnet=SUBNET)
    out.loss.backward()
    # 2 of 4 heads: q/k/v are 16 of 32 rows, the output projection 16 of 32 columns; 32 of 64 units
    n_mlp = 2 if isinstance(model, BertForMaskedLM) else 3  # GELU MLP vs SwiGLU
    assert shapes[: 4 + n_mlp] == [(16, 32)] * 3 + [(32, 16)] + [(32, 32)] * n_mlp
    assert (64, 32) not in shapes and (32, 64) not in shapes  # no full-width MLP matmul anywhere
    parts = model.blocks[0].width_parts()
    q, o = parts["heads"][0][0], parts["heads"][1][0]
    dropped = [r for h in (0, 2) for r in range(h * 8, (h + 1) * 8)]
    assert torch.count_nonzero(q.grad[dropped]) == 0 and torch.count_nonzero(o.grad[:, dropped]) == 0
    kept = [r for h in (1, 3) for r in range(h * 8, (h + 1) * 8)]
    assert torch.count_nonzero(q.grad[kept]) > 0
    up, down = parts["units"][0][0], parts["units"][1][0]
    assert torch.count_nonzero(up.grad[1::2]) == 0 and torch.count_nonzero(down.grad[:, 1::2]) == 0
    assert model.blocks[1].width_parts()["heads"][0][0].grad is None  # a skipped block: no grad at all
