"""The analytic FLOPs of width subnetworks count what runs: checked against FlopCounterMode (ratio
1.0000 for the blocks, forward + backward), and carried into plan_flops, `raptr flops` and step_flops."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from raptr_cli.flops import Dims, layer_flops_per_token, plan_flops, step_flops
from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.bert.model import BertForMaskedLM
from raptr_cli.models.common import block_widths
from raptr_cli.models.ul2.config import DecoderConfig
from raptr_cli.models.ul2.model import DecoderForPrefixLM, rotary_cos_sin
from raptr_cli.schedule import ScheduleConfig, build_plan
from raptr_cli.schedule import StageConfig as S
from raptr_cli.subnet import Subnet

H, FF, NH, T, B = 64, 256, 4, 32, 2


def counted(run) -> int:
    # the math backend decomposes attention into the bmm calls FlopCounterMode counts
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("arch", ["bert", "ul2"])
@pytest.mark.parametrize(
    "heads, units",
    [
        ((0, 1, 2, 3), None),
        ((1, 2), None),
        (None, tuple(range(0, FF, 2))),
        ((3,), tuple(range(64))),
        ((0, 2, 3), tuple(range(FF - 192, FF))),
    ],
)
def test_block_flops_equal_flop_counter(arch, heads, units) -> None:
    torch.manual_seed(0)
    if arch == "bert":
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=64,
                hidden_size=H,
                num_layers=2,
                num_heads=NH,
                intermediate_size=FF,
                max_position_embeddings=T,
                norm="pre",
                hidden_dropout=0.0,
                attention_dropout=0.0,
            )
        )
    else:
        model = DecoderForPrefixLM(
            DecoderConfig(
                vocab_size=64,
                hidden_size=H,
                num_layers=2,
                num_heads=NH,
                intermediate_size=FF,
                max_position_embeddings=T,
                dropout=0.0,
            )
        )
    x = torch.randn(B, T, H, requires_grad=True)  # an input that needs its gradient, as every block but the first
    sub = Subnet(layers=(1,), heads=None if heads is None else (heads,), units=None if units is None else (units,))
    width = block_widths(sub, [1], NH, FF, x)[0]
    block = model.blocks[1]
    if arch == "bert":
        flops = counted(lambda: block(x, None, None, width))
    else:
        cos, sin = rotary_cos_sin(T, H // NH, 10000.0, x.device, x.dtype)
        flops = counted(lambda: block(x, cos, sin, None, None, width))
    d = Dims(hidden=H, ffn=FF, vocab=64, n_layers=2, seq_len=T, ffn_matrices=2 if arch == "bert" else 3)
    hf = 1.0 if heads is None else len(heads) / NH
    mf = 1.0 if units is None else len(units) / FF
    analytic = 3 * layer_flops_per_token(d, hf, mf) * B * T
    assert f"{flops / analytic:.4f}" == "1.0000"
    assert flops == analytic


def test_whole_model_width_step_matches_the_counter_as_the_depth_count_does() -> None:
    """The whole narrow model against step_flops, within the tolerance the depth-only test uses."""
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=96,
            hidden_size=H,
            num_layers=4,
            num_heads=NH,
            intermediate_size=FF,
            max_position_embeddings=T,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        )
    )
    ids = torch.randint(1, 96, (B, T))
    labels = torch.full((B, T), -100)
    labels.view(-1)[torch.arange(7) * 3] = 5
    sub = Subnet(layers=(0, 2, 3), heads=((0, 1), (2, 3), (1, 3)), units=tuple(tuple(range(128)) for _ in range(3)))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, labels=labels, subnet=sub).loss.backward()
    d = Dims(hidden=H, ffn=FF, vocab=96, n_layers=4, seq_len=T)
    assert counter.get_total_flops() == pytest.approx(step_flops(d, 3, B * T, 7, 0.5, 0.5), rel=0.02)


def test_plan_flops_counts_stage_widths() -> None:
    d = Dims(hidden=128, ffn=512, vocab=2048, n_layers=12, seq_len=128)
    cfg = ScheduleConfig(
        method="raptr",
        stages=[S(fraction=0.5, path_length=8, heads_fraction=0.5, mlp_fraction=0.5), S(fraction=0.5, path_length=12)],
    )
    plan = build_plan(cfg, 12, 100, 1000, 0, widths=(2, 512))
    out = plan_flops(plan, d, 1000, 0.15)
    a, b = out["stages"]
    assert a["flops_layers"] == 3 * 8 * layer_flops_per_token(d, 0.5, 0.5) * 50 * 1000
    assert b["flops_layers"] == 3 * 12 * layer_flops_per_token(d) * 50 * 1000
    assert layer_flops_per_token(d, 0.5, 0.5) == 8 * 128 * 64 + 4 * 128 * 64 + 4 * 128 * 256
    assert layer_flops_per_token(d) == 8 * 128 * 128 + 4 * 128 * 128 + 4 * 128 * 512
