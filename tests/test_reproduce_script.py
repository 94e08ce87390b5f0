"""docs/reproduce.sh's bookkeeping, with a stand-in `raptr` that records its calls (the script's logic is
under test here, not training): a recorded run is not trained again, except by `downstream` when its model
is not in $OUT and its fine-tuning is not recorded; then the new final loss is checked against the record,
and the record is never overwritten."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "reproduce.sh"

FAKE = r"""#!/usr/bin/env bash
# stand-in raptr: `compare RECIPE --out D --set run.name=N ...` writes D/N/{metrics.jsonl,recipe.toml,final/};
# `compare --runs DIRS... --downstream T --out D` writes each DIR/finetune/<T>/final/finetune.json
echo "$*" >> "$FAKE_LOG"
shift  # compare
if [[ "$1" == --runs ]]; then
  shift
  while [[ $# -gt 0 && "$1" != --* ]]; do
    f="$1/finetune/builtin-shakespeare-genre/final/finetune.json"  # a recorded one is read, not redone
    [[ -f "$f" ]] || { mkdir -p "$(dirname "$f")"; echo '{"task": "builtin:shakespeare-genre"}' > "$f"; }
    shift
  done
  exit 0
fi
out= name=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift ;;
    --set) [[ "$2" == run.name=* ]] && name=${2#run.name=}; shift ;;
  esac
  shift
done
mkdir -p "$out/$name/final"
echo "{\"event\": \"run_end\", \"step\": 1000, \"eval_loss\": ${FAKE_LOSS:-5.9}}" > "$out/$name/metrics.jsonl"
echo "[run]" > "$out/$name/recipe.toml"
"""

MAIN = (
    "bert-tiny-ctx-baseline",
    "bert-tiny-ctx-raptr",
    "bert-tiny-ctx-baseline-equiflop-bert-tiny-ctx-raptr",
    "bert-tiny-ctx-stacking",
)


def equiflop_steps() -> int:
    """The equi-FLOP baseline's steps as `raptr compare --equal-flops` solves them from the recipes."""
    from raptr_cli.budget import solve_steps
    from raptr_cli.planning import describe_run
    from raptr_cli.recipe import load_recipe

    base = describe_run(load_recipe(ROOT / "recipes" / "bert-tiny-ctx-baseline.toml"))
    raptr = describe_run(load_recipe(ROOT / "recipes" / "bert-tiny-ctx-raptr.toml"))
    return solve_steps(base["total_flops"], base["steps"], raptr["total_flops"])


def test_equiflop_steps_match_the_recipes() -> None:
    """The script's EQUIFLOP_STEPS is the solved step count, so a change to the recipes' steps shows here."""
    assert f"EQUIFLOP_STEPS={equiflop_steps()} " in SCRIPT.read_text()


@pytest.fixture
def repro(tmp_path: Path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    fake = tmp_path / "raptr"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    keep, out, log = tmp_path / "keep", tmp_path / "out", tmp_path / "calls.log"
    for name in MAIN:  # seed 1 recorded on "another machine": metrics only, no model, no fine-tuning
        d = keep / "seed1" / name
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text('{"event": "run_end", "step": 1000, "eval_loss": 5.9}\n')
        (d / "recipe.toml").write_text("[run]\n")
    # seed 0's baseline: recorded with its fine-tuning (and so its from-scratch result), no model here
    d = keep / "seed0" / MAIN[0]
    (d / "finetune" / "builtin-shakespeare-genre" / "final").mkdir(parents=True)
    (d / "metrics.jsonl").write_text('{"event": "run_end", "step": 1000, "eval_loss": 5.88}\n')
    (d / "finetune" / "builtin-shakespeare-genre" / "final" / "finetune.json").write_text('{"recorded": 1}')

    def run(*args: str, loss: str = "5.9") -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "RAPTR": str(fake),
            "REPRO_OUT": str(out),
            "REPRO_KEEP": str(keep),
            "FAKE_LOG": str(log),
            "FAKE_LOSS": loss,
            "DS_SEEDS": "1",
        }
        return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True)

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return run, calls, keep, out


def test_a_recorded_run_is_not_trained_again(repro) -> None:
    run, calls, _, _ = repro
    p = run("seed", "1")
    assert p.returncode == 0, p.stderr
    assert calls() == [] and p.stdout.count("recorded: seed 1") == 4


def test_downstream_trains_again_what_has_no_model_checks_it_and_records_the_fine_tuning(repro) -> None:
    run, calls, keep, out = repro
    p = run("downstream")
    assert p.returncode == 0, p.stderr
    trained = [c for c in calls() if "--runs" not in c]
    assert len(trained) == 4 and all("run.seed=1" in c for c in trained)
    assert any(f"train.steps={equiflop_steps()}" in c for c in trained if "equiflop" in c)
    assert p.stdout.count("(reproduced)") == 4
    (tune,) = [c for c in calls() if "--runs" in c]
    assert all(str(out / "seed1" / name) in tune for name in MAIN)
    # seed 0's record joins the call read-only (its scratch result is reused); it is not trained again
    seed0 = keep / "seed0" / MAIN[0]
    assert str(seed0) in tune.split() and "run.seed=0" not in " ".join(trained)
    assert (
        seed0 / "finetune" / "builtin-shakespeare-genre" / "final" / "finetune.json"
    ).read_text() == '{"recorded": 1}'
    for name in MAIN:
        rec = keep / "seed1" / name / "finetune" / "builtin-shakespeare-genre" / "final" / "finetune.json"
        assert json.loads(rec.read_text())["task"] == "builtin:shakespeare-genre"
    # with the fine-tuning recorded, nothing is trained again, even without the models
    shutil.rmtree(out)
    before = len(calls())
    p = run("downstream")
    assert p.returncode == 0, p.stderr
    assert [c for c in calls()[before:] if "--runs" not in c] == []


def test_a_retrained_run_that_ends_elsewhere_is_reported_and_the_record_kept(repro) -> None:
    run, _, keep, _ = repro
    p = run("downstream", loss="5.95")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("NOT reproduced") == 4 and "recorded 5.9" in p.stderr
    rec = (keep / "seed1" / "bert-tiny-ctx-baseline" / "metrics.jsonl").read_text()
    assert '"eval_loss": 5.9}' in rec
