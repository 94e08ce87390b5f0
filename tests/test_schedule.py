"""Golden tests for schedules and path sampling (method.md): stage lists, sampler masks for a seed,
fixed layers, exact/expected path lengths, purity in (seed, step), PLD, stochastic depth, validation."""

from __future__ import annotations

import math
import random

import pytest
import torch

from raptr_cli.errors import UserError
from raptr_cli.schedule import ScheduleConfig, build_plan, describe, growth_sources, step_generator
from raptr_cli.schedule import StageConfig as S


def raptr(*ks: int, steps: int = 2, **kw) -> ScheduleConfig:
    return ScheduleConfig(method="raptr", stages=[S(steps=steps, path_length=k) for k in ks], **kw)


def tiny_plan(seed: int = 0, **kw):
    """The tiny preset: L = 6, 8 steps, stages 3-4-5-6 of 2 steps each, fixed {0, 5}."""
    return build_plan(raptr(3, 4, 5, 6, **kw), n_layers=6, total_steps=8, tokens_per_step=16, seed=seed)


def test_golden_stage_list():
    plan = tiny_plan()
    got = [(plan.stage_at(t).index, plan.stage_at(t).path_length) for t in range(8)]
    assert got == [(0, 3), (0, 3), (1, 4), (1, 4), (2, 5), (2, 5), (3, 6), (3, 6)]
    assert [plan.expected_active(t) for t in range(8)] == [3, 3, 4, 4, 5, 5, 6, 6]
    assert [(s.start, s.end, s.keep_prob) for s in plan.stages] == [
        (0, 2, 0.25),
        (2, 4, 0.5),
        (4, 6, 0.75),
        (6, 8, 1.0),
    ]
    assert plan.fixed == [0, 5] and plan.warnings == []
    with pytest.raises(ValueError):
        plan.stage_at(8)


def test_golden_subset_masks_seed0():
    plan = tiny_plan(seed=0)
    assert [plan.active_layers(t) for t in range(8)] == [
        [0, 1, 5],
        [0, 2, 5],
        [0, 1, 2, 5],
        [0, 1, 4, 5],
        [0, 1, 2, 4, 5],
        [0, 1, 3, 4, 5],
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3, 4, 5],
    ]


def test_golden_bernoulli_masks_seed0():
    cfg = ScheduleConfig(method="raptr", sampler="bernoulli", stages=[S(steps=8, keep_prob=0.5)])
    plan = build_plan(cfg, 6, 8, 16, seed=0)
    assert [plan.active_layers(t) for t in range(8)] == [
        [0, 1, 4, 5],
        [0, 2, 3, 5],
        [0, 2, 5],
        [0, 1, 3, 5],
        [0, 5],
        [0, 1, 4, 5],
        [0, 1, 2, 4, 5],
        [0, 2, 4, 5],
    ]
    assert plan.stages[0].path_length == 4.0  # 2 fixed + 0.5 * 4 free
    assert any("never trained" in w for w in plan.warnings)


def test_golden_pld_masks_seed0():
    plan = build_plan(ScheduleConfig(method="pld", pld_gamma=0.5), 6, 8, 16, seed=0)
    assert plan.fixed == []  # pld: no fixed layers unless given
    assert [plan.active_layers(t) for t in range(8)] == [
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 3],
        [0, 2, 3],
        [0, 2, 3],
        [0, 1, 2, 3],
        [0, 1, 2, 3],
    ]


@pytest.mark.parametrize("sampler", ["subset", "bernoulli"])
@pytest.mark.parametrize("fixed", [[0, -1], [1, -2, 3]])
def test_fixed_layers_always_on(sampler, fixed):
    L = 12
    cfg = ScheduleConfig(
        method="raptr",
        sampler=sampler,
        fixed_layers=fixed,
        stages=[S(steps=300, path_length=k) for k in (4, 6, 8)] + [S(steps=100, path_length=12)],
    )
    plan = build_plan(cfg, L, 1000, 16, seed=3)
    want = sorted(i % L for i in fixed)
    assert plan.fixed == want
    for t in range(1000):
        layers = plan.active_layers(t)
        assert set(want) <= set(layers)
        assert layers == sorted(set(layers)) and all(0 <= i < L for i in layers)


def test_subset_exact_length_and_uniform():
    plan = build_plan(raptr(5, 12, steps=2000), 12, 4000, 16, seed=1)
    counts = [0] * 12
    for t in range(2000):
        layers = plan.active_layers(t)
        assert len(layers) == 5
        for i in layers:
            counts[i] += 1
    assert counts[0] == counts[11] == 2000
    # each of the 10 free layers is kept with p = 3/10: 600 expected, sd ~ 20
    assert all(abs(c - 600) < 100 for c in counts[1:11]), counts


def test_bernoulli_mean_close_to_expected():
    cfg = ScheduleConfig(method="raptr", sampler="bernoulli", stages=[S(steps=2000, path_length=7)])
    plan = build_plan(cfg, 12, 2000, 16, seed=2)
    assert plan.stages[0].keep_prob == 0.5 and plan.expected_active(0) == 7
    lengths = [len(plan.active_layers(t)) for t in range(2000)]
    assert len(set(lengths)) > 3  # really random lengths
    assert abs(sum(lengths) / 2000 - 7) < 0.15  # sd of the mean ~ 0.035


def test_paths_pure_in_seed_and_step():
    a = build_plan(raptr(4, 6, 8, 10, 12, steps=40), 12, 200, 16, seed=7)
    forward = [a.active_layers(t) for t in range(200)]
    order = list(range(200))
    random.Random(0).shuffle(order)
    b = build_plan(raptr(4, 6, 8, 10, 12, steps=40), 12, 200, 16, seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    shuffled = {t: b.active_layers(t) for t in order}
    assert [shuffled[t] for t in range(200)] == forward
    assert torch.equal(torch.get_rng_state(), before)  # global RNG untouched
    other = build_plan(raptr(4, 6, 8, 10, 12, steps=40), 12, 200, 16, seed=8)
    assert [other.active_layers(t) for t in range(200)] != forward
    # every step of a run gets its own generator stream (torch keeps 32 bits of a seed; the key
    # is a 32-bit bijection of the step), and seeds 0 and 1 do not share streams early on
    seeds = {step_generator(0, t).initial_seed() for t in range(100_000)}
    assert len(seeds) == 100_000 and max(seeds) < 2**32
    draws = {tuple(torch.rand(4, generator=step_generator(s, t)).tolist()) for s in (0, 1) for t in range(50)}
    assert len(draws) == 100


def test_pld_keep_probs_golden():
    plan = build_plan(ScheduleConfig(method="pld"), 4, 2_000_000, 16, seed=0)
    assert plan.keep_probs(0) == [1.0, 1.0, 1.0, 1.0]
    # theta(1000) = 0.5 e^{-1} + 0.5; p_i = 1 - (i/4)(1 - theta)
    theta = 0.5 * math.exp(-1) + 0.5
    assert plan.keep_probs(1000) == pytest.approx([1 - i / 4 * (1 - theta) for i in (1, 2, 3, 4)], abs=1e-12)
    assert plan.keep_probs(1000) == pytest.approx([0.92098493, 0.84196986, 0.76295479, 0.68393972], abs=1e-8)
    assert plan.keep_probs(1_999_999) == pytest.approx([0.875, 0.75, 0.625, 0.5], abs=1e-12)
    # pld always scales kept outputs by 1/p, whatever `scale` says
    assert plan.layer_scales(1_999_999, [0, 3]) == pytest.approx([1 / 0.875, 2.0])
    assert plan.is_random(plan.stages[0])


def test_pld_expected_sum_matches_step_loop():
    cfg = ScheduleConfig(method="pld", pld_gamma=0.01, fixed_layers=[0], full_warmup_steps=50)
    plan = build_plan(cfg, 6, 1050, 16, seed=0)
    assert [s.steps for s in plan.stages] == [50, 1000] and plan.pld_start == 50
    assert plan.active_layers(10) == list(range(6))  # the full warmup stage
    loop = sum(plan.expected_active(t) for t in range(50, 1050))
    assert plan.expected_layer_steps(plan.stages[1]) == pytest.approx(loop, rel=1e-12)
    assert plan.stages[1].path_length == pytest.approx(loop / 1000, rel=1e-12)
    assert all(0 in plan.active_layers(t) for t in range(50, 1050))


def test_stochastic_depth_matches_raptr_6_8_10_12():
    sd = build_plan(
        ScheduleConfig(method="stochastic_depth", sd_match_path_lengths=[6, 8, 10, 12]), 12, 4000, 16, seed=0
    )
    rp = build_plan(raptr(6, 8, 10, 12, steps=1000), 12, 4000, 16, seed=0)
    (stage,) = sd.stages
    assert stage.keep_prob == pytest.approx(0.7)  # (9 - 2) / (12 - 2)
    assert stage.path_length == pytest.approx(9.0)
    assert stage.steps * stage.path_length == pytest.approx(sum(rp.expected_layer_steps(s) for s in rp.stages))
    assert sd.layer_scales(0, [0, 5, 11]) == [1.0, 1.0, 1.0]  # scale = "none" by default
    sd2 = build_plan(ScheduleConfig(method="stochastic_depth", sd_keep_prob=0.5, scale="inverse_p"), 12, 10, 16, 0)
    layers = sd2.active_layers(0)
    assert sd2.layer_scales(0, layers) == [1.0 if i in (0, 11) else 2.0 for i in layers]


def test_layer_scales():
    inv = tiny_plan(scale="inverse_p")
    assert inv.layer_scales(0, [0, 3, 5]) == [1.0, 4.0, 1.0]  # p = 1/4 in stage 0
    sq = tiny_plan(scale="sqrt_inverse_p")
    assert sq.layer_scales(2, [0, 2, 4, 5]) == pytest.approx([1.0, math.sqrt(2), math.sqrt(2), 1.0])
    assert sq.layer_scales(6, list(range(6))) == [1.0] * 6  # last stage is full: p = 1
    assert tiny_plan().layer_scales(0, [0, 3, 5]) == [1.0, 1.0, 1.0]


def test_stacking_and_baseline_plans():
    cfg = ScheduleConfig(method="stacking", stages=[S(fraction=1 / 3, depth=d) for d in (6, 9, 12)])
    plan = build_plan(cfg, 12, 30, 16, seed=0)
    assert [(s.start, s.end, s.depth) for s in plan.stages] == [(0, 10, 6), (10, 20, 9), (20, 30, 12)]
    assert plan.active_layers(0) == list(range(6)) and plan.active_layers(15) == list(range(9))
    assert [r["depth"] for r in describe(plan)] == [6, 9, 12]
    assert growth_sources(6, 9) == [3, 4, 5] and growth_sources(6, 12) == list(range(6))
    base = build_plan(ScheduleConfig(), 4, 5, 16, seed=0)
    assert len(base.stages) == 1 and base.active_layers(4) == [0, 1, 2, 3]


def test_full_warmup_and_mixed_units():
    plan = build_plan(raptr(3, 6, full_warmup_steps=4), 6, 8, 16, seed=0)
    assert [(s.index, s.start, s.end, s.path_length) for s in plan.stages] == [(0, 0, 4, 6), (1, 4, 6, 3), (2, 6, 8, 6)]
    assert plan.active_layers(1) == list(range(6))
    cfg = ScheduleConfig(method="raptr", stages=[S(fraction=0.25, path_length=k) for k in (3, 4, 5, 6)])
    plan = build_plan(cfg, 6, 10, 16, seed=0)  # 2.5 steps each: boundaries rounded cumulatively
    assert [r["steps"] for r in describe(plan)] == [2, 3, 3, 2]
    mixed = ScheduleConfig(
        method="raptr", stages=[S(steps=3, path_length=4), S(tokens=32, path_length=5), S(fraction=0.5, path_length=6)]
    )
    assert describe(build_plan(mixed, 6, 10, 16, 0)) == [
        {"index": 0, "start": 0, "end": 3, "steps": 3, "path_length": 4.0, "keep_prob": 0.5, "expected": False},
        {"index": 1, "start": 3, "end": 5, "steps": 2, "path_length": 5.0, "keep_prob": 0.75, "expected": False},
        {"index": 2, "start": 5, "end": 10, "steps": 5, "path_length": 6.0, "keep_prob": 1.0, "expected": False},
    ]


# (config, n_layers, total_steps, expected substring of one error)
BAD = [
    (ScheduleConfig(method="progressive"), 12, 8, "schedule.method = 'progressive' is not one of"),
    (raptr(6, 14, steps=4), 12, 8, "schedule.stages[1].path_length = 14 exceeds model.n_layers = 12"),
    (raptr(1, 12, steps=4), 12, 8, "schedule.stages[0].path_length = 1 is below the 2 fixed layers"),
    (raptr(6, 12, steps=4, fixed_layers=[0, 12]), 12, 8, "schedule.fixed_layers: 12 is out of range"),
    (raptr(6, 12, steps=4, fixed_layers=[11, -1]), 12, 8, "schedule.fixed_layers = [11, -1] names layer(s) [11] twice"),
    (raptr(6, 12, steps=3), 12, 8, "schedule.stages add up to 6 steps (stages[0] 3 + stages[1] 3) but train.steps = 8"),
    (
        raptr(6, 12, steps=2, full_warmup_steps=2),
        12,
        8,
        "schedule.stages add up to 4 steps (stages[0] 2 + stages[1] 2) but train.steps = 8 minus "
        "schedule.full_warmup_steps = 2, i.e. 6",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(path_length=6), S(steps=8, path_length=12)]),
        12,
        8,
        "schedule.stages[0] has no length key",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(steps=4, fraction=0.5, path_length=12)]),
        12,
        4,
        "schedule.stages[0] has several length keys (steps, fraction)",
    ),
    (ScheduleConfig(method="raptr", stages=[S(steps=4)]), 12, 4, "schedule.stages[0] has no size key"),
    (
        ScheduleConfig(method="raptr", stages=[S(steps=4, path_length=12, keep_prob=1.0)]),
        12,
        4,
        "schedule.stages[0] has several size keys (path_length, keep_prob)",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(steps=4, keep_prob=0.0)]),
        12,
        4,
        "schedule.stages[0].keep_prob = 0.0 must be in (0, 1]",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(steps=4, keep_prob=1.5)]),
        12,
        4,
        "schedule.stages[0].keep_prob = 1.5 must be in (0, 1]",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(steps=4, keep_prob=0.33)]),
        12,
        4,
        "schedule.stages[0].keep_prob = 0.33 gives 3.3 of 10 free layers",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(steps=4, depth=12)]),
        12,
        4,
        "schedule.stages[0].depth is not for method 'raptr'",
    ),
    (ScheduleConfig(method="raptr"), 12, 4, "schedule.stages is empty"),
    (
        ScheduleConfig(method="raptr", stages=[S(fraction=1.5, path_length=12)]),
        12,
        4,
        "schedule.stages[0].fraction = 1.5 must be in (0, 1]",
    ),
    (
        ScheduleConfig(method="raptr", stages=[S(tokens=8, path_length=12)]),
        12,
        4,
        "schedule.stages[0].tokens = 8 gives 0.5 steps",
    ),
    (
        ScheduleConfig(method="stacking", stages=[S(steps=2, depth=d) for d in (6, 6, 12)]),
        12,
        6,
        "schedule.stages[1].depth = 6 does not increase on the previous stage's 6",
    ),
    (
        ScheduleConfig(method="stacking", stages=[S(steps=2, depth=d) for d in (3, 7, 12)]),
        12,
        6,
        "schedule.stages[1].depth = 7 more than doubles the previous 3",
    ),
    (
        ScheduleConfig(method="stacking", stages=[S(steps=2, depth=d) for d in (6, 9)]),
        12,
        4,
        "schedule.stages[1].depth = 9 must equal model.n_layers = 12",
    ),
    (
        ScheduleConfig(method="stacking", stages=[S(steps=4, path_length=12)]),
        12,
        4,
        "schedule.stages[0].path_length is not for method 'stacking'",
    ),
    (
        ScheduleConfig(method="stacking", full_warmup_steps=2, stages=[S(steps=2, depth=12)]),
        12,
        4,
        "schedule.full_warmup_steps must be 0 for stacking",
    ),
    (ScheduleConfig(stages=[S(steps=4, path_length=12)]), 12, 4, "schedule.stages: method 'baseline' takes no stages"),
    (ScheduleConfig(method="pld", stages=[S(steps=4, path_length=12)]), 12, 4, "method 'pld' takes no stages"),
    (ScheduleConfig(method="pld", pld_theta_bar=0.0), 12, 4, "schedule.pld_theta_bar = 0.0 must be in (0, 1]"),
    (ScheduleConfig(method="stochastic_depth"), 12, 4, "schedule.sd_keep_prob and schedule.sd_match_path_lengths"),
    (ScheduleConfig(method="stochastic_depth", sd_keep_prob=1.2), 12, 4, "schedule.sd_keep_prob = 1.2 must be in"),
    (
        ScheduleConfig(method="stochastic_depth", sd_match_path_lengths=[6, 13]),
        12,
        4,
        "schedule.sd_match_path_lengths[1] = 13 must lie between",
    ),
    (ScheduleConfig(scale="inverse"), 12, 4, "schedule.scale = 'inverse' is not one of none, inverse_p"),
    (ScheduleConfig(sampler="uniform"), 12, 4, "schedule.sampler = 'uniform' is not one of"),
    (ScheduleConfig(skipped_grad="drop"), 12, 4, "schedule.skipped_grad = 'drop' is not one of"),
    (ScheduleConfig(full_warmup_steps=4), 12, 4, "schedule.full_warmup_steps = 4 must be >= 0 and < train.steps = 4"),
]


@pytest.mark.parametrize("cfg,L,steps,message", BAD, ids=[b[3][:40] for b in BAD])
def test_validation_errors(cfg, L, steps, message):
    errors, _ = cfg.problems(L, steps, 16)
    assert any(message in e for e in errors), errors
    with pytest.raises(UserError) as exc:
        build_plan(cfg, L, steps, 16, seed=0)
    assert any(message in p for p in exc.value.problems)


def test_all_problems_reported_at_once():
    cfg = ScheduleConfig(method="raptr", scale="x", stages=[S(steps=2, path_length=20), S(steps=2)])
    errors, _ = cfg.problems(12, 8, 16)
    assert len(errors) == 4, errors  # scale, path_length, missing size key, sum of lengths


def test_decreasing_raptr_schedule_is_a_warning():
    errors, warnings = raptr(8, 6, 12, steps=2).problems(12, 6, 16)
    assert errors == []
    assert any(w.startswith("schedule.stages[1]: path length 6 < the previous stage's 8") for w in warnings)
    assert build_plan(raptr(8, 6, 12, steps=2), 12, 6, 16, 0).warnings == warnings
