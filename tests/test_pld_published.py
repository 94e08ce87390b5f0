"""PLD as published (Zhang & He 2020) on a pre-LN BERT: keep probabilities, 1/p branch scales, and a
gamma solved so PLD's expected FLOPs equal RaPTr 6-8-10-12's (issue 15, item 5)."""

import math

import pytest
import torch

from raptr_cli.errors import UserError
from raptr_cli.planning import describe_run
from raptr_cli.recipe import load_recipe
from raptr_cli.schedule import ScheduleConfig, StageConfig, build_plan

L, STEPS = 12, 900


def test_keep_probs_and_scales_follow_the_published_formula():
    cfg = ScheduleConfig(method="pld", pld_theta_bar=0.5, pld_gamma=0.01)
    plan = build_plan(cfg, L, STEPS, 4096, seed=3)
    for t in (0, 1, 50, 400, 899):
        theta = (1 - 0.5) * math.exp(-0.01 * t) + 0.5
        want = [1 - (i / L) * (1 - theta) for i in range(1, L + 1)]  # layer i = 1..L
        assert plan.keep_probs(t) == pytest.approx(want, abs=1e-12)
        layers = plan.active_layers(t)
        assert plan.layer_scales(t, layers) == pytest.approx([1 / want[i] for i in layers], abs=1e-12)


def test_matched_gamma_gives_raptr_flops():
    ks = [6, 8, 10, 12]
    plan = build_plan(ScheduleConfig(method="pld", pld_match_path_lengths=ks), L, STEPS, 4096, seed=0)
    raptr = build_plan(
        ScheduleConfig(method="raptr", stages=[StageConfig(fraction=0.25, path_length=k) for k in ks]),
        L,
        STEPS,
        4096,
        seed=0,
    )
    pld_layer_steps = sum(plan.expected_layer_steps(s) for s in plan.stages)
    raptr_layer_steps = sum(s.path_length * s.steps for s in raptr.stages)
    assert pld_layer_steps == pytest.approx(raptr_layer_steps, rel=1e-9)
    assert 0.005 < plan.pld_gamma < 0.05  # ~13 / 900: theta falls to its floor early in the run
    # the empirical mean of the sampled paths agrees with the expectation
    drawn = sum(len(plan.active_layers(t)) for t in range(STEPS)) / STEPS
    assert drawn == pytest.approx(9.0, abs=0.1)


def test_matched_gamma_errors_name_the_key():
    with pytest.raises(UserError, match="pld_match_path_lengths"):  # 6 layers is below PLD's reach
        build_plan(ScheduleConfig(method="pld", pld_match_path_lengths=[6]), L, STEPS, 4096, seed=0)
    with pytest.raises(UserError) as e:
        build_plan(ScheduleConfig(method="pld", pld_gamma=0.02, pld_match_path_lengths=[9]), L, STEPS, 4096, 0)
    assert "pld_gamma" in str(e.value.problems)


def test_reproduction_pld_recipe_matches_raptr_flops():
    pld = load_recipe("recipes/bert-tiny-ctx-pld.toml")
    raptr = load_recipe("recipes/bert-tiny-ctx-raptr.toml")
    assert pld.model.norm == "pre"
    assert describe_run(pld)["total_flops"] == pytest.approx(describe_run(raptr)["total_flops"], rel=1e-6)


def test_pre_ln_forward_scales_each_branch():
    from raptr_cli.models.bert.model import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    m = BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            norm="pre",
        )
    ).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        blk = m.bert.encoder.layer[0]
        att, mlp = blk.attention.output, blk.output
        p = 0.8
        h = x + (1 / p) * att.dense(blk.attention.self(att.LayerNorm(x), None))
        out = h + (1 / p) * mlp.dense(blk.intermediate(mlp.LayerNorm(h)))
        got = m.bert.encoder(x, None, [0], [1 / p])
        torch.testing.assert_close(got, m.bert.encoder.final_layer_norm(out))
