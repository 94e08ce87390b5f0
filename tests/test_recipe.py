"""Recipe loading: strict keys and types, ranges and contradictions, --set typing, path resolution,
round trips. Pure Python: no training, no tokenising."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import TINY, merged
from raptr_cli import recipe as R
from raptr_cli.config import field_docs, fields_of, parse_value
from raptr_cli.data.files import resolve_data_files
from raptr_cli.errors import UserError
from raptr_cli.recipe import Recipe, load_recipe, parse_recipe
from raptr_cli.schedule import ScheduleConfig, StageConfig
from raptr_cli.train.rundir import resolved_toml

REPO = Path(__file__).resolve().parents[1]


def problems_of(data: dict, overrides: list[str] = ()) -> list[str]:
    """The problem list of an invalid recipe (fails the test if it loads)."""
    with pytest.raises(UserError) as e:
        parse_recipe(merged(TINY, data), list(overrides))
    assert e.value.hint and "--set" in e.value.hint  # every recipe error says how to fix it
    assert e.value.message.startswith(f"the recipe has {len(e.value.problems)} problem")
    return e.value.problems


def only(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults and precedence ---------------------------------------------------------------------


def test_defaults_fill_what_the_file_omits() -> None:
    r = parse_recipe({})
    assert r == Recipe()
    assert (r.train.steps, r.train.batch_size, r.optim.lr, r.schedule.method) == (1000, 32, 1e-3, "baseline")
    assert r.data.train == ["builtin:shakespeare"] and r.log.console == "rich"


def test_precedence_set_beats_file_beats_default() -> None:
    r = parse_recipe(merged(TINY, {"train": {"steps": 50}}), ["train.steps=70"])
    assert r.train.steps == 70  # --set over file
    assert r.train.batch_size == 8  # file over default (32)
    assert r.optim.weight_decay == 0.01  # default where neither says
    assert parse_recipe(merged(TINY, {"train": {"steps": 50}})).train.steps == 50


def test_tokens_per_step() -> None:
    assert parse_recipe(merged(TINY, {})).tokens_per_step == 8 * 32


# --- strictness: unknown keys, wrong types -----------------------------------------------------


def test_unknown_key_suggests_the_closest_one() -> None:
    p = only(problems_of({"train": {"stepz": 3}}))
    assert p.startswith("train.stepz: unknown key (did you mean 'steps'?)")
    assert "valid keys: steps, batch_size" in p  # and lists the valid ones


def test_unknown_section_suggests_the_closest_one() -> None:
    p = only(problems_of({"trian": {"steps": 3}}))
    assert p.startswith("trian: unknown key (did you mean 'train'?)")


def test_unknown_key_in_a_stage_table_names_its_index() -> None:
    stages = [{"steps": 8, "path_lenght": 2}]
    p = only(problems_of({"schedule": {"method": "raptr", "stages": stages}}))
    assert p.startswith("schedule.stages[0].path_lenght: unknown key (did you mean 'path_length'?)")


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "steps", "ten", "train.steps = 'ten': expected integer"),
        ("train", "steps", 2.5, "train.steps = 2.5: expected integer"),
        ("train", "steps", True, "train.steps = True: expected integer"),  # a bool is not an int here
        ("optim", "lr", "fast", "optim.lr = 'fast': expected number"),
        ("tokenizer", "lowercase", 1, "tokenizer.lowercase = 1: expected true/false"),
        ("run", "name", 7, "run.name = 7: expected string"),
        ("model", "n_layers", "two", "model.n_layers = 'two': expected integer | none"),
        ("data", "train", [1], "data.train[0] = 1: expected string"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(section: str, key: str, value: object, expected: str) -> None:
    assert only(problems_of({section: {key: value}})) == expected


def test_choice_keys_suggest_the_closest_choice() -> None:
    p = only(problems_of({"optim": {"decay": "cosin"}}))
    assert p == "optim.decay = 'cosin': must be one of 'linear' | 'cosine' | 'constant' (did you mean 'cosine'?)"
    assert "model.arch = 'gpt': must be one of 'bert' | 'ul2'" in only(problems_of({"model": {"arch": "gpt"}}))


def test_a_section_that_is_not_a_table() -> None:
    assert only(problems_of({}, ["train=3"])).startswith("--set 'train=3': the key must be dotted")
    with pytest.raises(UserError) as e:
        parse_recipe({"train": 3})
    assert e.value.problems == ["train: expected a table, got 3"]


def test_integral_floats_are_accepted_for_integers() -> None:
    # 1e4-style step counts are common in recipes; they must be exact integers to pass
    assert parse_recipe(merged(TINY, {"train": {"steps": 1e2}})).train.steps == 100


# --- ranges and contradictions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"train": {"seq_len": 4}}, "train.seq_len = 4: must be at least 8"),
        ({"train": {"steps": 0}, "optim": {"warmup_steps": None}}, "train.steps = 0: must be > 0"),
        ({"train": {"eval_every": -1}}, "train.eval_every = -1: must be >= 0"),
        ({"optim": {"lr": -0.1}}, "optim.lr = -0.1: must be > 0"),
        ({"optim": {"beta2": 1.0}}, "optim.beta2 = 1.0: must be in [0, 1)"),
        ({"objective": {"mlm_probability": 0.0}}, "objective.mlm_probability = 0.0: must be in (0, 1)"),
        ({"tokenizer": {"vocab_size": 10}}, "tokenizer.vocab_size = 10: must be at least 64"),
    ],
)
def test_out_of_range_values(changes: dict, expected: str) -> None:
    assert only(problems_of(changes)) == expected


def test_micro_batch_size_must_divide_batch_size() -> None:
    p = only(problems_of({"train": {"micro_batch_size": 3}}))
    assert p == "train.micro_batch_size = 3 must divide train.batch_size = 8"
    assert parse_recipe(merged(TINY, {"train": {"micro_batch_size": 4}})).train.micro_batch_size == 4


def test_warmup_longer_than_the_run() -> None:
    assert only(problems_of({"optim": {"warmup_steps": 9}})) == "optim.warmup_steps = 9 exceeds train.steps = 8"


def test_schedule_problems_are_checked_against_the_model() -> None:
    stages = [{"steps": 4, "path_length": 2}, {"steps": 4, "path_length": 5}]
    p = only(problems_of({"schedule": {"method": "raptr", "stages": stages}}))
    assert p == "schedule.stages[1].path_length = 5 exceeds model.n_layers = 2"
    stages = [{"steps": 4, "path_length": 2}, {"steps": 3, "path_length": 2}]
    p = only(problems_of({"schedule": {"method": "raptr", "stages": stages}}))
    assert p.startswith("schedule.stages add up to 7 steps") and "train.steps = 8" in p


def test_model_problems_are_caught_at_load() -> None:
    assert "model.dropout = 1.5: must be in [0, 1)" in problems_of({"model": {"dropout": 1.5}})
    assert any("32" in p and "3" in p and "divisible" in p for p in problems_of({"model": {"num_heads": 3}}))


def test_heads_not_dividing_width_names_the_recipe_keys() -> None:
    p = only(problems_of({"model": {"num_heads": 3}}))
    assert "model.hidden_size = 32" in p and "model.num_heads = 3" in p


def test_bad_dropout_is_reported_once_by_its_recipe_key() -> None:
    assert only(problems_of({"model": {"dropout": 1.5}})) == "model.dropout = 1.5: must be in [0, 1)"


def test_every_range_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {"train": {"seq_len": 4, "micro_batch_size": 3, "log_every": 0}, "optim": {"lr": -1.0, "beta1": 1.0}}
    )
    assert len(problems) == 5
    for key in ("train.seq_len", "train.micro_batch_size", "train.log_every", "optim.lr", "optim.beta1"):
        assert sum(p.startswith(key) for p in problems) == 1, (key, problems)


def test_every_key_and_type_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {"train": {"stepz": 3, "batch_size": "eight"}, "optim": {"decay": "cosin"}, "bogus": {"x": 1}},
        ["model.n_layers=abc", "nonsense"],
    )
    assert len(problems) == 6, problems
    for fragment in ("train.stepz", "train.batch_size", "optim.decay", "bogus", "model.n_layers", "--set 'nonsense'"):
        assert any(fragment in p for p in problems), (fragment, problems)


def test_type_and_range_problems_are_reported_together() -> None:
    problems = problems_of({"train": {"stepz": 3, "seq_len": 4}, "optim": {"lr": -1.0}})
    assert len(problems) == 3, problems


# --- --set typing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "get", "expected"),
    [
        ("train.steps=200", lambda r: r.train.steps, 200),
        ("optim.lr=1e-3", lambda r: r.optim.lr, 0.001),
        ("optim.lr=0.0005", lambda r: r.optim.lr, 0.0005),
        ("optim.lr=1", lambda r: r.optim.lr, 1.0),  # an int where a float is expected widens
        ("tokenizer.lowercase=true", lambda r: r.tokenizer.lowercase, True),
        ("run.name=my-run", lambda r: r.run.name, "my-run"),  # a bare word is a string
        ("data.text_field=a=b", lambda r: r.data.text_field, "a=b"),  # only the first '=' separates
        ('run.name="2024"', lambda r: r.run.name, "2024"),  # quoting forces a string
        ("optim.decay=cosine", lambda r: r.optim.decay, "cosine"),
        ('data.train=["a.txt", "b/*.txt"]', lambda r: r.data.train, ["a.txt", "b/*.txt"]),
        ("data.train=one.txt", lambda r: r.data.train, ["one.txt"]),  # a single path becomes a list
        ("schedule.fixed_layers=[0, -1]", lambda r: r.schedule.fixed_layers, [0, -1]),
        (" train.steps = 12 ", lambda r: r.train.steps, 12),  # surrounding spaces are ignored
    ],
)
def test_set_is_typed_by_the_schema(assignment: str, get, expected: object) -> None:
    value = get(parse_recipe(merged(TINY, {}), [assignment]))
    assert value == expected and type(value) is type(expected)


def test_set_values_parse_as_toml() -> None:
    assert parse_value("1e-3") == 0.001 and isinstance(parse_value("1e-3"), float)
    assert parse_value("3") == 3 and parse_value("false") is False
    assert parse_value("[1, 2]") == [1, 2] and parse_value("hello world") == "hello world"


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("foo", "--set 'foo': expected section.key=value"),
        ("foo=1", "--set 'foo=1': the key must be dotted, like train.steps=200"),
        ("train..steps=1", "--set 'train..steps=1': the key must be dotted, like train.steps=200"),
        ("train.steps=abc", "train.steps = 'abc': expected integer"),
        ("train.steps=2.5", "train.steps = 2.5: expected integer"),
        ("train.steps.max=3", "--set train.steps.max: steps is not a table"),
    ],
)
def test_bad_set_assignments(assignment: str, expected: str) -> None:
    assert only(problems_of({}, [assignment])) == expected


def test_set_with_an_unknown_section_or_key() -> None:
    p = only(problems_of({}, ["bogus.key=1"]))
    assert p.startswith("bogus: unknown key; valid keys: run, model, data")
    assert only(problems_of({}, ["train.setps=1"])).startswith("train.setps: unknown key (did you mean 'steps'?)")


def test_set_a_numeric_looking_string() -> None:
    assert parse_recipe(merged(TINY, {}), ["run.name=2024"]).run.name == "2024"


# --- files and paths -------------------------------------------------------------------------------


def test_missing_and_invalid_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="recipe file not found: .*nope.toml"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = ten\n")
    with pytest.raises(UserError, match=r"bad.toml is not valid TOML.*line 2"):
        load_recipe(bad)


def test_relative_data_paths_resolve_against_the_recipe_folder(make_recipe, tmp_path, monkeypatch) -> None:
    path = make_recipe()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the recipe's folder: data/train.txt does not exist here
    r = load_recipe(Path("..") / "exp" / "recipe.toml")
    assert r.base_dir == path.parent.resolve()
    (train,) = resolve_data_files(r.data.train, r.base_dir, "data.train")
    assert train.resolve() == (path.parent / "data" / "train.txt").resolve()
    # the run directory's recipe.toml carries absolute paths, so it reruns from anywhere
    saved = tomllib.loads(resolved_toml(r))
    assert saved["data"]["train"] == [str((path.parent / "data" / "train.txt").resolve())]
    assert saved["data"]["eval"] == [str((path.parent / "data" / "eval.txt").resolve())]


def test_resolved_toml_round_trips_to_the_same_recipe(tmp_path: Path) -> None:
    data = merged(
        TINY,
        {
            "schedule": {
                "method": "raptr",
                "fixed_layers": [0],
                "stages": [{"fraction": 0.5, "path_length": 1}, {"fraction": 0.5, "path_length": 2}],
            },
            "optim": {"decay": "cosine", "eps": 1e-8},
        },
    )
    r = parse_recipe(data, ["run.name=round_trip.v2", "run.seed=3"])
    text = r.to_toml()
    again = parse_recipe(tomllib.loads(text))
    assert again == r
    assert again.schedule.stages == [StageConfig(fraction=0.5, path_length=1), StageConfig(fraction=0.5, path_length=2)]
    assert again.optim.eps == 1e-8 and again.run.name == "round_trip.v2"


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path: Path) -> None:
    r = load_recipe(path)
    assert r.run.name and r.train.steps > 0


# --- the schema documents itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        R.RunConfig,
        R.ModelConfig,
        R.DataConfig,
        R.TokenizerConfig,
        R.ObjectiveConfig,
        R.OptimConfig,
        R.TrainConfig,
        R.LogConfig,
        ScheduleConfig,
        StageConfig,
    ],
)
def test_every_recipe_key_has_an_attribute_docstring(cls: type) -> None:
    docs = field_docs(cls)
    assert [f for f in fields_of(cls) if not docs.get(f)] == []


def test_core_modules_import_without_typer_or_rich() -> None:
    code = (
        "import sys, raptr_cli.recipe, raptr_cli.planning, raptr_cli.train.loop; "
        "bad = [m for m in ('typer', 'rich') if m in sys.modules]; assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
