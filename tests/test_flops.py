"""The analytic FLOPs model: golden per-token counts, the paper's schedule ratios, and agreement
with torch.utils.flop_counter.FlopCounterMode on tiny BERTs (forward + backward)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from raptr_cli.flops import (
    Dims,
    head_flops_per_token,
    layer_flops_per_token,
    plan_flops,
    step_flops,
    train_flops_per_token,
)
from raptr_cli.schedule import ScheduleConfig, build_plan
from raptr_cli.schedule import StageConfig as S

BERT_BASE = Dims(hidden=768, ffn=3072, vocab=30522, n_layers=12, seq_len=512)


def test_bert_base_per_token_golden():
    # 8 h^2 + 4 n h + 4 h d_ff = 4718592 + 1572864 + 9437184
    assert layer_flops_per_token(BERT_BASE) == 15_728_640
    # 2 h V + 2 h^2 (MLM transform)
    assert head_flops_per_token(BERT_BASE) == 46_881_792 + 1_179_648
    assert train_flops_per_token(BERT_BASE, 12, 0.15) == 3 * (12 * 15_728_640 + 0.15 * 48_061_440)
    swiglu = Dims(hidden=8, ffn=16, vocab=10, n_layers=2, seq_len=4, ffn_matrices=3, head_transform=False)
    assert layer_flops_per_token(swiglu) == 8 * 64 + 4 * 4 * 8 + 6 * 8 * 16
    assert head_flops_per_token(swiglu) == 2 * 8 * 10
    assert step_flops(swiglu, 2, 100, 15) == pytest.approx(100 * train_flops_per_token(swiglu, 2, 0.15))


def test_bert_base_raptr_6_8_10_12_is_4_3_layers_only():
    cfg = ScheduleConfig(method="raptr", stages=[S(fraction=0.25, path_length=k) for k in (6, 8, 10, 12)])
    plan = build_plan(cfg, 12, 100_000, 128 * 512, seed=0)
    out = plan_flops(plan, BERT_BASE, tokens_per_step=128 * 512, head_fraction=0.15)
    lo = out["layers_only"]
    assert lo["ratio"] == pytest.approx(9 / 12, rel=1e-12)
    assert lo["speedup"] == pytest.approx(4 / 3, rel=1e-12)
    # whole model: the head runs every step, so the saving is a bit smaller than 4/3
    layer, head = 15_728_640, 0.15 * 48_061_440
    assert out["ratio"] == pytest.approx((9 * layer + head) / (12 * layer + head), rel=1e-12)
    assert 1 < out["speedup"] < 4 / 3
    assert [r["path_length"] for r in out["stages"]] == [6, 8, 10, 12]
    assert [r["tokens"] for r in out["stages"]] == [25_000 * 128 * 512] * 4
    assert sum(r["flops"] for r in out["stages"]) == pytest.approx(out["total_flops"])
    assert out["baseline_flops"] == pytest.approx(100_000 * 128 * 512 * out["flops_per_token_full"])
    assert not any(r["expected"] for r in out["stages"])  # subset paths have an exact length


def test_stacking_6_9_12_layers_only_ratio():
    cfg = ScheduleConfig(method="stacking", stages=[S(steps=1000, depth=d) for d in (6, 9, 12)])
    out = plan_flops(build_plan(cfg, 12, 3000, 4096, seed=0), BERT_BASE, 4096, 0.15)
    assert out["layers_only"]["ratio"] == pytest.approx((6 + 9 + 12) / 36, rel=1e-12)
    assert [r["depth"] for r in out["stages"]] == [6, 9, 12]


def test_pld_and_stochastic_depth_use_expectations():
    d = Dims(hidden=32, ffn=128, vocab=50, n_layers=6, seq_len=16)
    pld = build_plan(ScheduleConfig(method="pld", pld_gamma=0.01), 6, 3000, 64, seed=0)
    out = plan_flops(pld, d, 64, 1.0)
    loop = sum(pld.expected_active(t) for t in range(3000)) * 64 * 3 * layer_flops_per_token(d)
    assert out["layers_only"]["total"] == pytest.approx(loop, rel=1e-12)
    assert out["stages"][0]["expected"]
    sd = build_plan(
        ScheduleConfig(method="stochastic_depth", sd_match_path_lengths=[6, 8, 10, 12]), 12, 4000, 64, seed=0
    )
    rp = build_plan(
        ScheduleConfig(method="raptr", stages=[S(steps=1000, path_length=k) for k in (6, 8, 10, 12)]),
        12,
        4000,
        64,
        seed=0,
    )
    d12 = Dims(hidden=32, ffn=128, vocab=50, n_layers=12, seq_len=16)
    assert plan_flops(sd, d12, 64, 0.15)["total_flops"] == pytest.approx(plan_flops(rp, d12, 64, 0.15)["total_flops"])
    with pytest.raises(ValueError):
        plan_flops(sd, d, 64, 0.15)  # depth mismatch


@pytest.mark.parametrize("seq_len,layers", [(16, [0, 3]), (32, [0, 1, 2, 3]), (48, [0, 2, 3]), (64, [1])])
def test_analytic_matches_flop_counter(seq_len, layers):
    bert = pytest.importorskip("raptr_cli.models.bert.model")
    torch.manual_seed(0)
    h, ffn, V, L, B, n_masked = 64, 256, 96, 4, 2, 7
    cfg = bert.BertConfig(
        vocab_size=V,
        hidden_size=h,
        num_layers=L,
        num_heads=4,
        intermediate_size=ffn,
        max_position_embeddings=128,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = bert.BertForMaskedLM(cfg)
    ids = torch.randint(1, V, (B, seq_len))
    labels = torch.full((B, seq_len), -100)
    labels.view(-1)[torch.arange(n_masked) * 3] = 5  # exactly n_masked predicted positions
    # FlopCounterMode has no formula for CPU's fused SDPA kernel; the math backend decomposes
    # attention into the bmm calls it does count.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, labels=labels, layers=layers).loss.backward()
    d = Dims(hidden=h, ffn=ffn, vocab=V, n_layers=L, seq_len=seq_len)
    analytic = step_flops(d, len(layers), B * seq_len, n_masked)
    assert counter.get_total_flops() == pytest.approx(analytic, rel=0.02)
    # the same count through the per-token formula with head_fraction = share of masked positions
    per_token = train_flops_per_token(d, len(layers), n_masked / (B * seq_len))
    assert counter.get_total_flops() == pytest.approx(per_token * B * seq_len, rel=0.02)
