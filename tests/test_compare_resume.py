"""`raptr compare` continues an interrupted run of the same recipe from its newest checkpoint instead of
training it again (so docs/reproduce.sh can be run in pieces), with the same result as one sitting."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import read_rows, run_ok, train_rows

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_compare_resumes_an_interrupted_run_exactly(make_recipe, cli, tmp_path) -> None:
    recipe = make_recipe({"run": {"name": "a"}, "train": {"checkpoint_every": 4, "keep_checkpoints": 2}})
    whole = tmp_path / "whole"
    run_ok(cli, "compare", recipe, "--out", whole, "--json")
    # an interruption after the step-4 checkpoint: no final model, no step-8 checkpoint
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "a" / "final")
    shutil.rmtree(cut / "a" / "checkpoints" / "step-0000008")
    kept = cut / "a" / "checkpoints" / "step-0000004" / "model.safetensors"
    stamp = kept.stat().st_mtime_ns
    doc = json.loads(run_ok(cli, "compare", recipe, "--out", cut, "--json").stdout)
    assert [r["name"] for r in doc["runs"]] == ["a"] and (cut / "a" / "final").is_dir()
    assert kept.stat().st_mtime_ns == stamp  # resumed: the run directory was not replaced
    timing = ("elapsed_s", "tokens_per_s", "tflops_per_s", "data_share")
    rows = [
        [{k: v for k, v in r.items() if k not in timing} for r in train_rows(read_rows(d / "a"))] for d in (cut, whole)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 8
    from safetensors.torch import load_file

    got, want = (load_file(d / "a" / "final" / "model.safetensors") for d in (cut, whole))
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)
