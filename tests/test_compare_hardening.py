"""`raptr compare` hardening (issue 14): run names that cannot escape --out, a finished run reused only
when it is the same resolved recipe, no two recipes or one run counted twice, BERT next to UL2 only on
request, `--runs A B` as well as repeated `--runs`, and --out at a file answered with exit 2."""

from __future__ import annotations

import glob
import json
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY, merged, run_ok, to_toml

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]
UL2 = {
    "model": {"arch": "ul2", "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
    "tokenizer": {"vocab_size": 600},
}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its content: 'nothing on disk changed' is then one comparison."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_recipe(folder: Path, file: str, changes: dict) -> Path:
    path = folder / file
    path.write_text(to_toml(merged(TINY, changes)))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, corpus_dir) -> dict[str, Path]:
    """Two finished tiny runs, cmp/a and cmp/b, written by `raptr compare a.toml b.toml --out cmp`
    (so cmp also holds compare.json, compare.md and loss_vs_flops.png, as after a real comparison)."""
    from raptr_cli.cli.main import app

    w = tmp_path_factory.mktemp("cmphard")
    shutil.copytree(corpus_dir, w / "data")
    a = write_recipe(w, "a.toml", {"run": {"name": "a"}})
    b = write_recipe(w, "b.toml", {"run": {"name": "b"}, "optim": {"lr": 1e-3}})
    a_lr = write_recipe(w, "a-lr.toml", {"run": {"name": "a"}, "optim": {"lr": 1e-2}})  # same name, another lr
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(w / "cmp"), "--json"])
    assert res.exit_code == 0, res.output
    return {"root": w, "a": a, "b": b, "a_lr": a_lr, "cmp": w / "cmp"}


def refused(res, *expect: str) -> str:
    """Assert exit 2 with a message and no traceback; return stderr on one line."""
    assert res.exit_code == 2, f"exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    err = " ".join(res.stderr.split())
    for s in expect:
        assert s in err, f"{s!r} not in:\n{res.stderr}"
    return err


# --- 2: run.name is one path component ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../victim", "../../x", "/tmp/abs", "a/b", "", ".", "..", "two words", "été", "a\\b", "x\n"]
)
def test_a_run_name_that_is_not_one_path_component_is_refused_at_validation(name) -> None:
    from raptr_cli.errors import UserError
    from raptr_cli.recipe import parse_recipe

    data = merged(TINY, {"run": {"name": name}, "train": {"steps": 0}})
    with pytest.raises(UserError) as e:
        parse_recipe(data)
    # collected with the other problems, naming the key
    assert any(p.startswith(f"run.name = {name!r}") for p in e.value.problems), e.value.problems
    assert any(p.startswith("train.steps") for p in e.value.problems)


def test_good_run_names_and_every_bundled_recipes_name_pass() -> None:
    from raptr_cli.recipe import parse_recipe

    names = ["a", "bert-tiny-raptr", "ul2_1b6.v2", "2024", "..x", "x.."]
    names += [tomllib.loads(p.read_text())["run"]["name"] for p in sorted((REPO / "recipes").glob("*.toml"))]
    assert len(names) > 10
    for name in names:
        assert parse_recipe(merged(TINY, {"run": {"name": name}})).run.name == name


def test_pretrain_without_out_cannot_write_outside_runs(world, cli, tmp_path, monkeypatch) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    shutil.copytree(world["root"] / "data", cwd / "data")
    recipe = write_recipe(cwd, "escape.toml", {"run": {"name": "../../x"}})
    monkeypatch.chdir(cwd)
    refused(cli("pretrain", recipe), "run.name = '../../x'", "one path component")
    refused(cli("pretrain", recipe, "--set", f"run.name={tmp_path / 'abs'}"), "run.name")
    assert sorted(p.name for p in tmp_path.rglob("*") if "data" not in p.parts) == ["a", "b", "escape.toml"]


def test_compare_with_an_escaping_run_name_leaves_the_run_next_to_out_alone(world, cli, tmp_path) -> None:
    victim = tmp_path / "victim"  # an unrelated, unfinished run: what --overwrite used to wipe
    shutil.copytree(world["cmp"] / "a", victim)
    shutil.rmtree(victim / "final")
    before = snapshot(tmp_path)
    refused(cli("compare", world["a"], "--set", "run.name=../victim", "--out", tmp_path / "cmp"), "run.name")
    assert snapshot(tmp_path) == before


# --- 3: reuse only the same resolved recipe; one run directory per name --------------------------------


def test_compare_reuses_a_finished_run_of_the_same_recipe(world, cli) -> None:
    runs = {n: snapshot(world["cmp"] / n) for n in ("a", "b")}
    # log_every changes what is logged, not the run: the rule --resume uses lets it differ
    doc = json.loads(
        run_ok(
            cli, "compare", world["a"], world["b"], "--out", world["cmp"], "--json", "--set", "train.log_every=2"
        ).stdout
    )
    assert sorted(r["name"] for r in doc["runs"]) == ["a", "b"]
    assert {n: snapshot(world["cmp"] / n) for n in ("a", "b")} == runs  # nothing retrained


def test_compare_refuses_a_finished_run_of_another_recipe_under_the_same_name(world, cli) -> None:
    before = snapshot(world["cmp"])
    saved = world["cmp"] / "a" / "recipe.toml"
    err = refused(
        cli("compare", world["a_lr"], world["b"], "--out", world["cmp"]),
        str(world["a_lr"]),
        str(saved),
        "optim.lr (0.01 here, 0.003 there)",
    )
    assert "another --out" in err
    refused(cli("compare", world["a"], "--set", "optim.lr=0.01", "--out", world["cmp"]), str(saved), "optim.lr")
    assert snapshot(world["cmp"]) == before


def test_compare_never_overwrites_an_unfinished_run_of_another_recipe(world, cli, tmp_path) -> None:
    shutil.copytree(world["cmp"] / "a", tmp_path / "cmp" / "a")
    shutil.rmtree(tmp_path / "cmp" / "a" / "final")
    before = snapshot(tmp_path)
    refused(cli("compare", world["a_lr"], "--out", tmp_path / "cmp"), str(world["a_lr"]), "optim.lr")
    assert snapshot(tmp_path) == before
    # no recipe.toml: whose run it is cannot be told, so it is not overwritten either
    (tmp_path / "cmp" / "a" / "recipe.toml").unlink()
    refused(cli("compare", world["a"], "--out", tmp_path / "cmp"), f"{tmp_path / 'cmp' / 'a'} holds run files")
    assert (tmp_path / "cmp" / "a" / "metrics.jsonl").read_bytes() == before["cmp/a/metrics.jsonl"]


def test_compare_retrains_an_unfinished_run_of_the_same_recipe(world, cli, tmp_path) -> None:
    shutil.copytree(world["cmp"] / "a", tmp_path / "cmp" / "a")
    shutil.rmtree(tmp_path / "cmp" / "a" / "final")
    doc = json.loads(run_ok(cli, "compare", world["a"], "--out", tmp_path / "cmp", "--json").stdout)
    assert [r["name"] for r in doc["runs"]] == ["a"] and (tmp_path / "cmp" / "a" / "final").is_dir()


def test_two_recipes_of_one_run_name_in_one_compare_are_refused_before_training(world, cli, tmp_path) -> None:
    out = tmp_path / "cmp"
    refused(
        cli("compare", world["a"], world["a_lr"], "--out", out),
        f"same run directory {out / 'a'}",
        str(world["a"]),
        str(world["a_lr"]),
        "run.name = 'a'",
    )
    refused(cli("compare", world["a"], world["a"], "--out", out), "run.name = 'a'")
    assert not out.exists()


# --- 13: incomparable runs ----------------------------------------------------------------------


def test_bert_next_to_ul2_is_refused_before_training_unless_allowed(world, cli, tmp_path) -> None:
    ul2 = write_recipe(world["root"], "u.toml", merged(UL2, {"run": {"name": "u"}}))
    out = tmp_path / "cmp"
    refused(
        cli("compare", world["a"], ul2, "--out", out),
        "different objectives",
        f"{world['a']}: model.arch = 'bert'",
        f"{ul2}: model.arch = 'ul2'",
        "--allow-mixed",
    )
    assert not out.exists()
    # finished runs too: a stand-in UL2 run (run a's files, its recipe.toml saying ul2; only the recipe is read)
    fake = tmp_path / "u"
    shutil.copytree(world["cmp"] / "a", fake)
    text = (fake / "recipe.toml").read_text()
    assert 'arch = "bert"' in text and 'name = "a"' in text
    (fake / "recipe.toml").write_text(text.replace('arch = "bert"', 'arch = "ul2"').replace('name = "a"', 'name = "u"'))
    refused(cli("compare", "--runs", world["cmp"] / "a", fake, "--out", out), "model.arch = 'ul2'", "--allow-mixed")
    doc = json.loads(
        run_ok(cli, "compare", "--runs", world["cmp"] / "a", fake, "--out", out, "--allow-mixed", "--json").stdout
    )
    assert sorted(r["name"] for r in doc["runs"]) == ["a", "u"]


def test_one_run_passed_twice_is_not_two_seeds(world, cli, tmp_path) -> None:
    a = world["cmp"] / "a"
    (tmp_path / "link").symlink_to(a)
    for other in (a, world["cmp"] / ".." / "cmp" / "a", tmp_path / "link"):
        refused(cli("compare", "--runs", a, other, "--out", tmp_path / "out"), "listed twice", str(a.resolve()))
    copy = tmp_path / "copy"  # another directory, but the same recipe and the same seed: one run twice
    shutil.copytree(a, copy)
    refused(cli("compare", "--runs", a, copy, "--out", tmp_path / "out"), "run.seed = 0", "not two seeds")
    # the same name over another recipe is not a second seed either
    text = (copy / "recipe.toml").read_text()
    (copy / "recipe.toml").write_text(text.replace("seed = 0", "seed = 1").replace("lr = 0.003", "lr = 0.01"))
    refused(
        cli("compare", "--runs", a, copy, "--out", tmp_path / "out"), "share run.name = 'a'", "optim.lr (0.003 vs 0.01)"
    )
    assert not (tmp_path / "out").exists()


# --- 17: --runs takes several directories and repeats ---------------------------------------------


def test_runs_takes_several_directories_after_one_flag_and_repeats(world, cli, tmp_path) -> None:
    a, b, cmp = world["cmp"] / "a", world["cmp"] / "b", world["cmp"]
    assert (cmp / "compare.json").is_file()  # a glob over cmp picks up the comparison files too
    for args in (["--runs", a, b], ["--runs", a, "--runs", b], ["--runs", *sorted(cmp.iterdir())], [b, "--runs", a]):
        doc = json.loads(run_ok(cli, "compare", *args, "--out", tmp_path / "o", "--json").stdout)
        assert sorted(r["name"] for r in doc["runs"]) == ["a", "b"], args
    refused(
        cli("compare", "--runs", a, tmp_path / "nope", "--out", tmp_path / "o"),
        f"--runs {tmp_path / 'nope'}: no such run directory",
    )


def test_the_runs_examples_in_help_work_as_written(world, cli, tmp_path, monkeypatch) -> None:
    from raptr_cli.cli.compare_cmd import HELP

    for folder in ("runs", "runs/cmp"):  # the run directories the examples name
        for name, run in (("bert-tiny-baseline", "a"), ("bert-tiny-raptr", "b")):
            shutil.copytree(world["cmp"] / run, tmp_path / folder / name)
    monkeypatch.chdir(tmp_path)
    # (the --downstream example fine-tunes: test_finetune runs compare --downstream)
    examples = [
        line.strip()
        for line in HELP.splitlines()
        if line.strip().startswith("raptr compare --runs")
        and "--downstream" not in line
        and "--paired-against" not in line  # (test_the_paired_example_in_help_works_as_written)
    ]
    assert len(examples) == 2
    for line in examples:  # as a shell runs it: words split, globs expanded
        words = [w2 for w in shlex.split(line)[2:] for w2 in (sorted(glob.glob(w)) if "*" in w else [w])]
        run_ok(cli, "compare", *words)
        doc = json.loads((tmp_path / "runs" / "cmp" / "compare.json").read_text())
        assert sorted(r["name"] for r in doc["runs"]) == ["a", "b"], line


def test_the_paired_example_in_help_works_as_written(world, cli, tmp_path, monkeypatch) -> None:
    from raptr_cli.cli.compare_cmd import HELP

    (line,) = [x.strip() for x in HELP.splitlines() if "--paired-against" in x and x.strip().startswith("raptr")]
    for seed in (0, 1):  # two seeds of two recipes, named as the example names them
        for name, run in (("bert-tiny-baseline", "a"), ("bert-tiny-raptr", "b")):
            d = tmp_path / "runs" / f"s{seed}" / name
            shutil.copytree(world["cmp"] / run, d)
            recipe = (d / "recipe.toml").read_text()
            recipe = recipe.replace(f'name = "{run}"', f'name = "{name}"', 1).replace("seed = 0", f"seed = {seed}", 1)
            (d / "recipe.toml").write_text(recipe)
    monkeypatch.chdir(tmp_path)
    words = [w2 for w in shlex.split(line)[2:] for w2 in (sorted(glob.glob(w)) if "*" in w else [w])]
    out = run_ok(cli, "compare", *words).stdout
    doc = json.loads((tmp_path / "runs" / "seeds" / "compare.json").read_text())
    (p,) = doc["paired"]
    assert p["name"] == "bert-tiny-raptr" and p["seeds"] == [0, 1] and "seed by seed" in out


# --- 11 (part): --out at a file ---------------------------------------------------------------------


def test_compare_out_at_a_file_exits_2_naming_out(world, cli, tmp_path) -> None:
    file = tmp_path / "taken.txt"
    file.write_text("mine")
    refused(cli("compare", "--runs", world["cmp"] / "a", world["cmp"] / "b", "--out", file), f"--out {file} is a file")
    refused(cli("compare", world["a"], "--out", file), f"--out {file} is a file")
    assert file.read_text() == "mine" and sorted(tmp_path.iterdir()) == [file]
