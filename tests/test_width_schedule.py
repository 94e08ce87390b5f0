"""Random Part Training's width axis in the schedule: per-stage head and MLP-unit fractions, the
per-(seed, step, block) draws (pinned), and the messages that name the offending key."""

from __future__ import annotations

import pytest

from raptr_cli.errors import UserError
from raptr_cli.schedule import ScheduleConfig, build_plan, describe, rescaled_schedule
from raptr_cli.schedule import StageConfig as S
from raptr_cli.schedule.rng import sample_parts, step_generator, stream

WIDTHS = (4, 16)  # num_heads, intermediate_size


def width_plan(seed: int = 0, **kw) -> object:
    cfg = ScheduleConfig(
        method="raptr",
        stages=[
            S(fraction=0.5, path_length=4, heads_fraction=0.5, mlp_fraction=0.25),
            S(fraction=0.5, mlp_fraction=0.5),
        ],
        **kw,
    )
    return build_plan(cfg, 6, 10, 100, seed, widths=WIDTHS)


def test_stages_resolve_width_and_width_only_runs_every_layer() -> None:
    plan = width_plan()
    a, b = plan.stages
    assert (a.path_length, a.heads_fraction, a.mlp_fraction) == (4, 0.5, 0.25)
    assert (b.path_length, b.keep_prob, b.heads_fraction, b.mlp_fraction) == (6, 1.0, 1.0, 0.5)
    rows = describe(plan)
    assert [(r["heads_fraction"], r["mlp_fraction"]) for r in rows] == [(0.5, 0.25), (1.0, 0.5)]


def test_golden_parts_seed_0() -> None:
    """Pinned: a change here changes every width run's draws."""
    plan = width_plan()
    s0 = plan.subnet(0)
    assert s0.layers == (0, 1, 3, 5)
    assert s0.heads == ((0, 3), (0, 1), (2, 3), (2, 3))
    assert s0.units == ((0, 2, 6, 13), (0, 10, 12, 14), (3, 4, 7, 10), (1, 7, 10, 12))
    s6 = plan.subnet(6)
    assert s6.layers is None and s6.heads is None
    assert s6.units[0] == (2, 3, 7, 9, 10, 12, 14, 15)
    assert s6.units[5] == (0, 2, 3, 8, 10, 11, 12, 15)


def test_parts_are_a_function_of_seed_step_block_only() -> None:
    plan = width_plan(seed=7)
    for step in range(5):
        sub = plan.subnet(step)
        for j, b in enumerate(sub.layers):
            assert sub.heads[j] == sample_parts(4, 2, stream(7, step, "heads", b))
            assert sub.units[j] == sample_parts(16, 4, stream(7, step, "units", b))
    # block 0's stream is the plain stream of the tag: the existing paths stream is unchanged
    assert stream(3, 5, "paths", 0).initial_seed() == step_generator(3, 5).initial_seed()
    assert (
        width_plan(seed=1).subnet(0).heads != width_plan(seed=2).subnet(0).heads
        or width_plan(seed=1).subnet(0).units != width_plan(seed=2).subnet(0).units
    )


def test_width_scale_travels_in_the_subnet() -> None:
    assert width_plan(width_scale="inverse_fraction").subnet(0).width_scale == "inverse_fraction"
    assert width_plan().subnet(0).width_scale == "none"
    full = build_plan(ScheduleConfig(method="raptr", stages=[S(fraction=1, path_length=6)]), 6, 10, 100, 0, WIDTHS)
    assert full.subnet(0).full and not full.narrow


@pytest.mark.parametrize(
    "stage, method, message",
    [
        (
            S(fraction=1, heads_fraction=0.3),
            "raptr",
            "schedule.stages[0].heads_fraction = 0.3 gives 1.2 of model.num_heads = 4, not a whole number",
        ),
        (S(fraction=1, mlp_fraction=1.5), "raptr", "schedule.stages[0].mlp_fraction = 1.5 must be in (0, 1]"),
        (S(fraction=1, mlp_fraction=0.0), "raptr", "schedule.stages[0].mlp_fraction = 0.0 must be in (0, 1]"),
        (
            S(fraction=1, depth=6, heads_fraction=0.5),
            "stacking",
            "schedule.stages[0].heads_fraction is not for method 'stacking'",
        ),
    ],
)
def test_width_problems_name_the_key(stage, method, message) -> None:
    errors, _ = ScheduleConfig(method=method, stages=[stage]).problems(6, 10, 100, WIDTHS)
    assert any(e.startswith(message) for e in errors), errors


def test_bad_width_scale_and_missing_widths() -> None:
    errors, _ = ScheduleConfig(method="raptr", width_scale="half", stages=[S(fraction=1, heads_fraction=0.5)]).problems(
        6, 10, 100, WIDTHS
    )
    assert any(e.startswith("schedule.width_scale = 'half' is not one of none, inverse_fraction") for e in errors)
    with pytest.raises(UserError):
        build_plan(ScheduleConfig(method="raptr", stages=[S(fraction=1, heads_fraction=0.5)]), 6, 10, 100, 0)


def test_rescaled_schedule_keeps_width_keys() -> None:
    cfg = ScheduleConfig(method="raptr", stages=[S(steps=5, heads_fraction=0.5), S(steps=5, path_length=6)])
    out = rescaled_schedule(cfg, 10, 100, 20)
    assert out["stages"] == [{"steps": 10, "heads_fraction": 0.5}, {"steps": 10, "path_length": 6}]


def test_compare_labels_width_stages() -> None:
    """compare's schedule column names each stage's width, and a width-only stage runs all layers
    (it printed "?-?-?-?" for the width-only reproduction run and hid the depth+width run's widths)."""
    from pathlib import Path

    from raptr_cli.comparison import stage_label, summarize

    assert stage_label({"path_length": 8}, "path_length") == "8"
    assert stage_label({"depth": 6}, "depth") == "6"
    assert stage_label({"keep_prob": 0.5}, "path_length") == "0.5"
    assert stage_label({"path_length": 8, "heads_fraction": 0.5, "mlp_fraction": 0.75}, "path_length") == "8 h0.5 m0.75"
    assert stage_label({"heads_fraction": 1.0, "mlp_fraction": 0.75}, "path_length") == "all m0.75"
    runs = Path(__file__).resolve().parents[1] / "docs" / "repro-1000" / "runs" / "seed0"
    assert summarize(runs / "bert-tiny-ctx-raptr-width")["schedule"] == "all h0.5 m0.5-all h0.5 m0.75-all m0.75-all"
    assert summarize(runs / "bert-tiny-ctx-raptr-depth-width")["schedule"] == "8 h0.5 m0.75-10 m0.75-12 m0.75-12"
