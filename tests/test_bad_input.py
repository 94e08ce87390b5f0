"""A catalogue of bad input, one case each: every malformed recipe, flag, data file, tokenizer or checkpoint
must exit 2 with a message naming the key or file, print no traceback, and leave every existing file
exactly as it was (content, mtime). Plus the security rules for loading checkpoints.

Each case runs in a fresh copy of one "world" folder (a tiny recipe, data files, a finished run, a run of
another model, tokenizers), with the working directory inside it, so a stray write shows up too.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY, merged, to_toml

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SRC = Path(__file__).resolve().parents[1] / "src" / "raptr_cli"
RAPTR_4 = {
    "model": {"n_layers": 4},
    "train": {"steps": 8},
    "schedule": {"method": "raptr", "stages": [{"steps": 4, "path_length": 3}, {"steps": 4, "path_length": 4}]},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, torch_one_thread: None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from raptr_cli.cli.main import app

    w = tmp_path_factory.mktemp("world")
    shutil.copytree(corpus_dir, w / "data")
    (w / "data" / "blank.txt").write_text("  \n\n  \n")
    (w / "data" / "short.txt").write_text("the cat sees the ball .")
    (w / "data" / "notes.csv").write_text("text\nthe cat sees the ball\n")
    (w / "data" / "bad.jsonl").write_text('{"text": "the cat"}\n{"text": the dog}\n')
    (w / "tok").mkdir()
    (w / "tok" / "garbage.json").write_text("{this is not a tokenizer")
    # a WordPiece tokenizer with every BERT special except [MASK], built without the code under test
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=150, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator([(w / "data" / "train.txt").read_text()], trainer)
    tok.save(str(w / "tok" / "nomask.json"))
    short = {"train": {"steps": 4, "checkpoint_every": 2, "keep_checkpoints": 0, "eval_every": 0}}
    (w / "recipe.toml").write_text(to_toml(merged(TINY, short)))
    (w / "other.toml").write_text(to_toml(merged(TINY, {**short, "model": {"hidden_size": 48}})))
    (w / "raptr.toml").write_text(to_toml(merged(TINY, RAPTR_4)))
    for recipe, out in (("recipe.toml", "run"), ("other.toml", "other")):
        res = CliRunner().invoke(app, ["pretrain", str(w / recipe), "--out", str(w / out)])
        assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return w


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: sha256 and mtime (ns)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- setups: each mutates the world copy `w` before the command runs ------------------------------------

Setup = Callable[[Path], None]


def recipe(changes: dict, name: str = "bad.toml") -> Setup:
    return lambda w: (w / name).write_text(to_toml(merged(TINY, changes)))


def raw(name: str, content: str | bytes) -> Setup:
    return lambda w: (w / name).write_bytes(content if isinstance(content, bytes) else content.encode())


def edit_json(rel: str, **changes: object) -> Setup:
    def setup(w: Path) -> None:
        conf = json.loads((w / rel).read_text())
        (w / rel).write_text(json.dumps({**conf, **changes}))

    return setup


def truncate(rel: str, n: int = 100) -> Setup:
    return lambda w: (w / rel).write_bytes((w / rel).read_bytes()[:-n])


def zero_fill(rel: str) -> Setup:
    """Same size, garbage content: passes the manifest's size check, so the loader must catch it."""
    return lambda w: (w / rel).write_bytes(b"\0" * (w / rel).stat().st_size)


def other_models_checkpoint(w: Path) -> None:
    shutil.copytree(w / "other" / "checkpoints" / "step-0000004", w / "run" / "checkpoints" / "step-0000006")


def bin_weights(w: Path) -> None:
    """A checkpoint whose weights come as a pickle (pytorch_model.bin) instead of safetensors."""
    d = w / "run" / "checkpoints" / "step-0000004"
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


def unfinished_copy(w: Path) -> None:
    shutil.copytree(w / "run", w / "half")
    rows = (w / "half" / "metrics.jsonl").read_text().splitlines()
    (w / "half" / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if '"run_end"' not in r))


def no_checkpoints(w: Path) -> None:
    shutil.rmtree(w / "run" / "checkpoints")
    shutil.rmtree(w / "run" / "final")


PRE = ["pretrain", "{w}/bad.toml", "--out", "{w}/new"]
RESUME = ["pretrain", "{w}/run/recipe.toml", "--out", "{w}/run", "--resume"]
CK_REL = "run/checkpoints/step-0000004"
CK = "{w}/" + CK_REL

# (id, setup, args, substrings the message must hold) -- {w} is the world copy
CASES: list = [
    # recipe files
    ("recipe-missing", None, ["pretrain", "{w}/nope.toml"], ["nope.toml", "not found"]),
    ("recipe-is-a-folder", None, ["pretrain", "{w}/data"], ["{w}/data"]),
    ("toml-syntax-error", raw("bad.toml", "[train]\nsteps = \n"), PRE, ["bad.toml", "not valid TOML"]),
    ("toml-unquoted-string", raw("bad.toml", "[run]\nname = my run\n"), PRE, ["bad.toml", "not valid TOML"]),
    ("toml-not-utf8", raw("bad.toml", b"\xff\xfe[train]\x00\x81"), PRE, ["bad.toml"]),
    # keys and types
    ("unknown-key", recipe({"train": {"stepz": 3}}), PRE, ["train.stepz", "unknown key", "steps"]),
    ("unknown-section", raw("bad.toml", to_toml(TINY) + "\n[trian]\nsteps = 3\n"), PRE, ["trian", "unknown key"]),
    (
        "section-not-a-table",
        raw("bad.toml", "train = 5\n" + to_toml({k: v for k, v in TINY.items() if k != "train"})),
        PRE,
        ["train", "table"],
    ),
    ("string-for-int", recipe({"train": {"steps": "many"}}), PRE, ["train.steps", "integer"]),
    ("float-for-int", recipe({"train": {"batch_size": 8.5}}), PRE, ["train.batch_size"]),
    ("int-for-bool", recipe({"train": {"compile": 3}}), PRE, ["train.compile"]),
    ("number-for-path-list", recipe({"data": {"train": 5}}), PRE, ["data.train"]),
    ("literal-typo", recipe({"optim": {"decay": "cosin"}}), PRE, ["optim.decay", "cosine"]),
    ("unknown-arch", recipe({"model": {"arch": "gpt"}}), PRE, ["model.arch"]),
    ("negative-steps", recipe({"train": {"steps": -5}}), PRE, ["train.steps", "> 0"]),
    ("dropout-out-of-range", recipe({"model": {"dropout": 1.5}}), PRE, ["model.dropout"]),
    ("warmup-longer-than-run", recipe({"optim": {"warmup_steps": 50}}), PRE, ["optim.warmup_steps", "train.steps"]),
    ("micro-batch-not-dividing", recipe({"train": {"micro_batch_size": 3}}), PRE, ["train.micro_batch_size"]),
    ("seq-len-too-short", recipe({"train": {"seq_len": 4}}), PRE, ["train.seq_len"]),
    ("unknown-tracker", recipe({"log": {"trackers": ["wandbb"]}}), PRE, ["log.trackers", "wandbb"]),
    # impossible schedules
    ("unknown-method", recipe({"schedule": {"method": "rapter"}}), PRE, ["schedule.method", "rapter"]),
    ("raptr-without-stages", recipe({"schedule": {"method": "raptr"}}), PRE, ["schedule.stages"]),
    (
        "path-length-over-depth",
        recipe(
            merged(RAPTR_4, {"schedule": {"stages": [{"steps": 4, "path_length": 3}, {"steps": 4, "path_length": 7}]}})
        ),
        PRE,
        ["schedule.stages[1].path_length", "model.n_layers"],
    ),
    (
        "stages-do-not-add-up",
        recipe(
            merged(
                RAPTR_4,
                {"schedule": {"stages": [{"fraction": 0.5, "path_length": 3}, {"fraction": 0.3, "path_length": 4}]}},
            )
        ),
        PRE,
        ["schedule.stages", "train.steps"],
    ),
    (
        "stage-with-two-lengths",
        recipe(
            merged(
                RAPTR_4,
                {
                    "schedule": {
                        "stages": [{"steps": 4, "fraction": 0.5, "path_length": 3}, {"steps": 4, "path_length": 4}]
                    }
                },
            )
        ),
        PRE,
        ["schedule.stages[0]", "steps", "fraction"],
    ),
    (
        "stacking-shrinks",
        recipe(
            {
                "model": {"n_layers": 4},
                "schedule": {"method": "stacking", "stages": [{"steps": 4, "depth": 4}, {"steps": 4, "depth": 2}]},
            }
        ),
        PRE,
        ["schedule.stages[1].depth"],
    ),
    (
        "fixed-layer-out-of-range",
        recipe(merged(RAPTR_4, {"schedule": {"fixed_layers": [0, 9]}})),
        PRE,
        ["schedule.fixed_layers", "9"],
    ),
    (
        "stages-for-baseline",
        recipe({"schedule": {"stages": [{"steps": 8, "path_length": 2}]}}),
        PRE,
        ["schedule.stages", "baseline"],
    ),
    # --set
    (
        "set-without-equals",
        None,
        ["pretrain", "{w}/recipe.toml", "--out", "{w}/new", "--set", "train.steps"],
        ["--set", "train.steps"],
    ),
    (
        "set-undotted-key",
        None,
        ["pretrain", "{w}/recipe.toml", "--out", "{w}/new", "--set", "steps=3"],
        ["steps=3", "dotted"],
    ),
    (
        "set-bad-value",
        None,
        ["pretrain", "{w}/recipe.toml", "--out", "{w}/new", "--set", "train.steps=abc"],
        ["train.steps", "abc"],
    ),
    (
        "set-unknown-section",
        None,
        ["pretrain", "{w}/recipe.toml", "--out", "{w}/new", "--set", "trainer.steps=3"],
        ["trainer"],
    ),
    (
        "set-through-a-scalar",
        None,
        ["pretrain", "{w}/recipe.toml", "--out", "{w}/new", "--set", "train.steps.max=3"],
        ["train.steps"],
    ),
    (
        "set-stage-without-size",
        None,
        ["pretrain", "{w}/raptr.toml", "--out", "{w}/new", "--set", "schedule.stages=[{{steps=8}}]"],
        ["schedule.stages[0]", "path_length"],
    ),
    ("unknown-flag", None, ["pretrain", "{w}/recipe.toml", "--bogus"], ["--bogus"]),
    # data
    ("missing-data-file", recipe({"data": {"train": ["data/missing.txt"]}}), PRE, ["data.train", "missing.txt"]),
    ("glob-matches-nothing", recipe({"data": {"train": ["data/*.md"]}}), PRE, ["data.train", "*.md"]),
    ("missing-eval-file", recipe({"data": {"eval": ["data/nope.txt"]}}), PRE, ["data.eval", "nope.txt"]),
    ("empty-data", recipe({"data": {"train": ["data/blank.txt"]}}), PRE, ["blank.txt"]),
    ("too-little-data", recipe({"data": {"train": ["data/short.txt"]}}), PRE, ["train.seq_len"]),
    ("unsupported-data-type", recipe({"data": {"train": ["data/notes.csv"]}}), PRE, ["notes.csv"]),
    ("malformed-jsonl", recipe({"data": {"train": ["data/bad.jsonl"]}}), PRE, ["bad.jsonl"]),
    # tokenizers
    ("tokenizer-missing", recipe({"tokenizer": {"path": "tok/none.json"}}), PRE, ["tokenizer.path", "none.json"]),
    ("tokenizer-not-json", recipe({"tokenizer": {"path": "tok/garbage.json"}}), PRE, ["garbage.json"]),
    ("tokenizer-without-mask", recipe({"tokenizer": {"path": "tok/nomask.json"}}), PRE, ["nomask.json", "[MASK]"]),
    # run directories and checkpoints
    (
        "existing-run-without-resume",
        None,
        ["pretrain", "{w}/recipe.toml", "--out", "{w}/run"],
        ["{w}/run", "already holds a run", "--resume", "--overwrite"],
    ),
    (
        "killed-run-without-resume",
        lambda w: shutil.rmtree(w / "run" / "final"),
        ["pretrain", "{w}/run/recipe.toml", "--out", "{w}/run"],
        ["already holds a run", "--resume", "--overwrite"],
    ),
    pytest.param(
        (
            "overwrite-with-bad-data",
            None,
            [
                "pretrain",
                "{w}/recipe.toml",
                "--out",
                "{w}/run",
                "--overwrite",
                "--set",
                'data.train=["data/missing.txt"]',
            ],
            ["data.train", "missing.txt"],
        )
    ),
    pytest.param(
        ("out-is-a-file", None, ["pretrain", "{w}/recipe.toml", "--out", "{w}/data/train.txt"], ["train.txt"])
    ),
    ("resume-before-any-checkpoint", no_checkpoints, RESUME, ["{w}/run", "no complete checkpoint"]),
    ("resume-with-another-model", None, [*RESUME, "--set", "model.hidden_size=64"], ["model.hidden_size"]),
    pytest.param(
        ("resume-from-another-models-checkpoint", other_models_checkpoint, RESUME, ["step-0000006", "another model"])
    ),
    (
        "resume-truncated-weights",
        truncate(f"{CK_REL}/model.safetensors"),
        RESUME,
        [CK, "model.safetensors", "truncated", "step-0000002"],
    ),
    ("resume-corrupt-state", raw(f"{CK_REL}/trainer_state.json", "{"), RESUME, [CK, "corrupted"]),
    pytest.param(("resume-garbage-optimizer", zero_fill(f"{CK_REL}/optimizer.pt"), RESUME, [f"{CK}/optimizer.pt"])),
    ("resume-pickled-weights", bin_weights, RESUME, [CK, "model.safetensors"]),
    # raptr eval
    ("eval-not-a-run", None, ["eval", "{w}/data"], ["{w}/data", "neither a run directory nor a checkpoint"]),
    (
        "eval-mismatched-config",
        edit_json("run/final/config.json", hidden_size=64),
        ["eval", "{w}/run"],
        ["{w}/run/final/model.safetensors"],
    ),
    ("eval-wrong-arch", edit_json(f"{CK_REL}/config.json", arch="ul2"), ["eval", CK], [CK, "ul2", "model.arch"]),
    ("eval-unreadable-config", raw("run/final/config.json", "{"), ["eval", "{w}/run"], ["{w}/run/final/config.json"]),
    (
        "eval-truncated-weights",
        truncate("run/final/model.safetensors"),
        ["eval", "{w}/run"],
        ["{w}/run/final/model.safetensors"],
    ),
    (
        "eval-tokenizer-without-mask",
        lambda w: shutil.copyfile(w / "tok/nomask.json", w / "run/final/tokenizer.json"),
        ["eval", "{w}/run"],
        ["{w}/run/final/tokenizer.json", "[MASK]"],
    ),
    ("eval-bad-path-lengths", None, ["eval", "{w}/run", "--path-lengths", "6,x"], ["--path-lengths", "6,x"]),
    ("eval-path-length-too-long", None, ["eval", "{w}/run", "--path-lengths", "9"], ["--path-lengths", "9"]),
    ("eval-zero-paths", None, ["eval", "{w}/run", "--paths", "0"], ["--paths"]),
    ("eval-paths-not-a-number", None, ["eval", "{w}/run", "--paths", "many"], ["--paths"]),
    ("eval-missing-data", None, ["eval", "{w}/run", "--data", "{w}/data/none.txt"], ["data.eval", "none.txt"]),
    # raptr flops
    ("flops-mfu-above-1", None, ["flops", "{w}/recipe.toml", "--mfu", "2"], ["--mfu"]),
    ("flops-mfu-not-a-number", None, ["flops", "{w}/recipe.toml", "--mfu", "high"], ["--mfu"]),
    ("flops-zero-gpus", None, ["flops", "{w}/recipe.toml", "--gpus", "0"], ["--gpus"]),
    ("flops-bad-budget", None, ["flops", "{w}/recipe.toml", "--budget", "lots"], ["--budget", "lots"]),
    ("flops-unknown-gpu", None, ["flops", "{w}/recipe.toml", "--gpu", "tpu9"], ["--gpu", "tpu9"]),
    ("flops-unknown-dtype", None, ["flops", "{w}/recipe.toml", "--gpu", "h100", "--dtype", "fp3"], ["fp3", "--dtype"]),
    (
        "flops-two-targets",
        None,
        ["flops", "{w}/recipe.toml", "--budget", "1e15", "--equal-flops-to", "{w}/recipe.toml"],
        ["--budget", "--equal-flops-to"],
    ),
    (
        "flops-missing-other-recipe",
        None,
        ["flops", "{w}/recipe.toml", "--equal-flops-to", "{w}/gone.toml"],
        ["gone.toml"],
    ),
    ("flops-bad-set", None, ["flops", "{w}/recipe.toml", "--set", "optim.lr=fast"], ["optim.lr", "fast"]),
    # raptr compare / export
    ("compare-not-a-run", None, ["compare", "--runs", "{w}/data", "--out", "{w}/cmp"], ["{w}/data"]),
    (
        "compare-unfinished-run",
        unfinished_copy,
        ["compare", "--runs", "{w}/run", "--runs", "{w}/half", "--out", "{w}/cmp"],
        ["{w}/half", "run_end"],
    ),
    (
        "compare-recipes-and-runs",
        None,
        ["compare", "{w}/recipe.toml", "--runs", "{w}/run", "--out", "{w}/cmp"],
        ["--runs"],
    ),
    (
        "compare-equal-flops-without-baseline",
        None,
        ["compare", "{w}/raptr.toml", "--equal-flops", "--out", "{w}/cmp"],
        ["--equal-flops", "baseline"],
    ),
    (
        "compare-bad-recipe",
        recipe({"train": {"steps": 0}}),
        ["compare", "{w}/recipe.toml", "{w}/bad.toml", "--out", "{w}/cmp"],
        ["train.steps"],
    ),
    ("export-unknown-format", None, ["export", "{w}/run", "{w}/hf", "--to", "onnx"], ["--to", "onnx"]),
    ("export-into-non-empty-dir", None, ["export", "{w}/run", "{w}/data"], ["{w}/data"]),
    ("export-not-a-run", None, ["export", "{w}/data", "{w}/hf"], ["{w}/data"]),
]


def _id(case) -> str:
    return case.values[0][0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_exits_2_naming_it_and_touches_nothing(case, world: Path, tmp_path: Path, monkeypatch) -> None:
    from raptr_cli.cli.main import app

    name, setup, args, expect = case
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    if setup:
        setup(w)
    monkeypatch.chdir(w)
    before = snapshot(w)
    res = CliRunner().invoke(app, [a.format(w=w) for a in args])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, f"{name}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # no escaped exception
    assert "Traceback" not in res.output
    for s in expect:
        assert s.format(w=w) in out, f"{name}: {s.format(w=w)!r} not in:\n{res.output}"
    after = snapshot(w)
    assert {k: after.get(k) for k in before} == before  # no existing file changed or deleted
    # nothing new either, except that a failed start may leave the fresh --out folder with its recipe.toml
    assert [k for k in after if k not in before and not k.startswith("new/")] == []


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 30 and len({_id(c) for c in CASES}) == len(CASES)


# --- security ------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_malicious_optimizer_pickle_is_refused_and_not_executed(world: Path, tmp_path: Path) -> None:
    from raptr_cli.cli.main import app

    w = tmp_path / "w"
    shutil.copytree(world, w)
    marker = tmp_path / "pwned"
    ck = w / "run" / "checkpoints" / "step-0000004"
    torch.save({"state": {}, "param_groups": [], "payload": Payload(marker)}, ck / "optimizer.pt")
    torch.load(ck / "optimizer.pt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.read_text() == "pwned"
    marker.unlink()
    manifest = json.loads((ck / "manifest.json").read_text())  # an attacker rewrites the sizes too
    manifest["optimizer.pt"] = (ck / "optimizer.pt").stat().st_size
    (ck / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(app, ["pretrain", str(w / "run" / "recipe.toml"), "--out", str(w / "run"), "--resume"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"{ck}/optimizer.pt" in " ".join(res.stderr.split())
    assert not marker.exists()  # refused by weights_only=True, never executed


def test_every_torch_load_in_the_source_is_weights_only() -> None:
    """Weights come from safetensors; the one pickle (optimizer.pt) is read with weights_only=True."""
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                if (owner, node.func.attr) in (("torch", "load"), ("pickle", "load"), ("pickle", "loads")):
                    safe = any(
                        k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords
                    )
                    calls.append((f"{path.name}:{node.lineno}", owner, safe))
    assert calls, "expected the optimizer-state load"
    assert all(owner == "torch" and safe for _, owner, safe in calls), calls
