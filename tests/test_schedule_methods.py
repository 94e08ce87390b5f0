"""The Method registry (issue 17): a method defined and registered here, in the test file, plans,
costs and trains with no other change to the house; and `raptr flops --budget` plans the stages that
build_plan then resolves (its rescaling shares the loader's stage arithmetic)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import TINY, merged, read_rows, run_ok, to_toml, train_rows
from raptr_cli.schedule import METHODS, Method, ScheduleConfig, StageConfig, build_plan, describe, rescaled_schedule


class DropOne(Method):
    """Toy method: every step skips one free layer, round robin; an exact count, so not random. Its LR
    hook halves the recipe's learning rate, so a run shows the trainer asks the method."""

    default_fixed = (0,)

    def resolve(self, plan, warmup, total_steps, tokens_per_step):
        n_free = self.n_layers - len(plan.fixed)
        return [(total_steps, self.n_layers - 1, (n_free - 1) / n_free, self.n_layers)]

    def active_layers(self, plan, step):
        free = [i for i in range(plan.n_layers) if i not in plan.fixed]
        return [i for i in range(plan.n_layers) if i != free[step % len(free)]]

    def lr_factor(self, plan, stage, step):
        return 0.5


@pytest.fixture
def drop_one(monkeypatch):
    monkeypatch.setitem(METHODS, "drop_one", DropOne)  # the one registry line, undone after the test


def test_a_registered_method_validates_and_plans(drop_one):
    cfg = ScheduleConfig(method="drop_one")
    assert cfg.problems(4, 8, 16) == ([], [])
    plan = build_plan(cfg, 4, 8, 16, seed=0)
    assert plan.fixed == [0]
    assert [plan.active_layers(t) for t in range(4)] == [[0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 2, 3]]
    assert describe(plan) == [
        {"index": 0, "start": 0, "end": 8, "steps": 8, "path_length": 3.0, "keep_prob": 2 / 3, "expected": False}
    ]
    assert plan.expected_layer_steps(plan.stages[0]) == 24
    # the keys every method shares are checked for it too, and it joins the list of valid methods
    assert ScheduleConfig(method="drop_one", sampler="x").problems(4, 8, 16)[0] == [
        "schedule.sampler = 'x' is not one of subset, bernoulli"
    ]
    assert "stochastic_depth, drop_one" in ScheduleConfig(method="nope").problems(4, 8, 16)[0][0]


def test_a_registered_method_costs_and_trains(drop_one, cli, make_recipe, tmp_path, torch_one_thread):
    model = {"model": {"n_layers": 4}}
    toy = make_recipe(merged(model, {"schedule": {"method": "drop_one"}}), name="toy.toml")
    base = make_recipe(model, name="base.toml")
    doc = json.loads(run_ok(cli, "flops", toy, "--json").stdout)
    assert doc["method"] == "drop_one"
    assert [(s["path_length"], s["expected"]) for s in doc["stages"]] == [(3.0, False)]
    assert doc["layers_only"]["speedup"] == pytest.approx(4 / 3, rel=1e-12)

    run_ok(cli, "pretrain", toy, "--out", tmp_path / "toy")
    run_ok(cli, "pretrain", base, "--out", tmp_path / "base")
    rows, ref = train_rows(read_rows(tmp_path / "toy")), train_rows(read_rows(tmp_path / "base"))
    assert [r["path_length"] for r in rows] == [3] * TINY["train"]["steps"]
    assert [r["lr"] for r in rows] == [0.5 * r["lr"] for r in ref]  # its LR hook, applied by the trainer


# --- flops --budget: the planned stages are build_plan's -----------------------------------------

# a warm-up fraction that rounds to 0 steps at the recipe's 40 but to 1 step at the budget's 100
WARMUP_ROUNDS_UP = ScheduleConfig(
    method="raptr",
    fixed_layers=[0, -1],
    full_warmup_fraction=0.01,
    stages=[StageConfig(steps=20, path_length=2), StageConfig(fraction=0.5, path_length=4)],
)


def _apply(cfg: ScheduleConfig, keys: dict) -> ScheduleConfig:
    """The schedule the budget's --set lines give."""
    stages = [StageConfig(**row) for row in keys.get("stages", [])] or cfg.stages
    return dataclasses.replace(cfg, stages=stages, **{k: v for k, v in keys.items() if k != "stages"})


def test_rescaled_stages_are_build_plans_stages_when_the_warmup_share_rounds_up():
    """The rescaling kept the old run's 0 warm-up steps and tiled all 100 steps with stages, while
    the loader gives the warm-up 1 of 100: the planned --set line did not load (stages add up to 100,
    not 99). Now the staged span is the loader's."""
    assert [s.steps for s in build_plan(WARMUP_ROUNDS_UP, 4, 40, 256, 0).stages] == [20, 20]
    keys = rescaled_schedule(WARMUP_ROUNDS_UP, 40, 256, 100)
    assert keys == {"stages": [{"steps": 50, "path_length": 2}, {"steps": 49, "path_length": 4}]}
    plan = build_plan(_apply(WARMUP_ROUNDS_UP, keys), 4, 100, 256, 0)
    assert [(s.start, s.end) for s in plan.stages] == [(0, 1), (1, 51), (51, 100)]


@pytest.mark.parametrize(
    "warmup", [{"full_warmup_fraction": 0.01}, {"full_warmup_fraction": 0.1}, {"full_warmup_steps": 3}, {}]
)
@pytest.mark.parametrize("total, new", [(40, 100), (40, 7), (37, 1000), (100, 399)])
def test_rescaled_stages_tile_what_the_loader_computes(warmup: dict, total: int, new: int):
    cfg = ScheduleConfig(method="raptr", **warmup)
    quarter, w = total // 4, cfg.full_warmup_for(total)
    cfg.stages = [
        StageConfig(steps=quarter, path_length=2),
        StageConfig(tokens=256 * quarter, path_length=3),
        StageConfig(steps=total - w - 2 * quarter, path_length=4),
    ]
    solved = _apply(cfg, rescaled_schedule(cfg, total, 256, new))
    plan = build_plan(solved, 4, new, 256, 0)
    new_w = solved.full_warmup_for(new)
    assert [s.steps for s in plan.stages] == [new_w] * (new_w > 0) + [s.steps for s in solved.stages]


def test_flops_budget_plans_the_stages_its_set_line_loads(cli, tmp_path):
    from raptr_cli.planning import describe_run
    from raptr_cli.recipe import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        to_toml(
            merged(
                TINY,
                {
                    "model": {"n_layers": 4},
                    "train": {"steps": 40},
                    "schedule": {
                        "method": "raptr",
                        "fixed_layers": [0, -1],
                        "full_warmup_fraction": 0.01,
                        "stages": [{"steps": 20, "path_length": 2}, {"fraction": 0.5, "path_length": 4}],
                    },
                },
            )
        )
    )
    full = describe_run(load_recipe(recipe))["total_flops"]
    b = json.loads(run_ok(cli, "flops", recipe, "--budget", repr(2.5 * full), "--json").stdout)["budget"]
    assert b["steps"] == 100
    solved = load_recipe(recipe, b["set"])
    plan = build_plan(solved.schedule, 4, solved.train.steps, solved.tokens_per_step, 0)
    assert [s["steps"] for s in b["stages"]] == [s.steps for s in plan.stages] == [1, 50, 49]
