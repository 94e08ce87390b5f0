"""Issue 14, items 8-11 and 14-16: bad input that crashed (a traceback, an abort) or was accepted
now exits 2 with a message naming the key or file, and nothing on disk changes.

- every numeric recipe key refuses nan/inf, enumerated from the schema so new keys are covered;
- a run whose memory estimate exceeds the memory there is refused with a micro-batch that fits;
- train.nan_policy = "skip" prints the skipped step instead of crashing the console;
- non-UTF-8 JSON data, a read-only --out, non-finite --budget: messages, not tracebacks;
- an hf: spec is a hub name, never a path; an empty recipe is refused; data.eval is named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path

import pytest

from conftest import TINY, merged, read_rows, run_ok, to_toml
from raptr_cli.errors import UserError
from raptr_cli.recipe import Recipe, load_recipe, parse_recipe

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def refused(res, *expect: str) -> str:
    """Assert exit 2 with no traceback and every `expect` in the message; return the message."""
    out = " ".join(res.output.split())
    assert res.exit_code == 2, f"exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output, res.output
    for s in expect:
        assert s in out, f"{s!r} not in:\n{res.output}"
    return out


# --- 8. nan / inf in any numeric key ----------------------------------------------------------------


def _scalar(tp) -> type | None:
    """int or float when `tp` is one (or an Optional of one), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    return tp if tp in (int, float) else None


def numeric_keys(cls: type = Recipe, prefix: str = "") -> list[tuple[str, type]]:
    """Every int/float key of the recipe schema as (dotted key, type); a list of tables contributes
    its fields as `key[0].field`. Walks the dataclasses, so a new key is covered without a test edit."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += numeric_keys(tp, key + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out += numeric_keys(typing.get_args(tp)[0], key + "[0].")
        elif _scalar(tp) is not None:
            out.append((key, _scalar(tp)))
    return out


NUMERIC = numeric_keys()
BAD_FLOATS = (float("nan"), float("inf"), float("-inf"))


def test_the_enumeration_finds_the_keys_of_the_issue() -> None:
    keys = {k for k, tp in NUMERIC if tp is float}
    assert {
        "optim.lr",
        "optim.eps",
        "optim.weight_decay",
        "optim.grad_clip",
        "model.dropout",
        "schedule.stages[0].fraction",
        "objective.denoisers[0].rate",
    } <= keys
    assert len(keys) >= 15


def _with_value(key: str, value: float) -> dict:
    """TINY with dotted `key` (a `[0]` marks a list of tables) set to `value`."""
    sections = merged(TINY, {})
    section, rest = key.split(".", 1)
    table = sections.setdefault(section, {})
    if "[0]." in rest:
        lst, field = rest.split("[0].")
        table[lst] = [{field: value}]
    else:
        table[rest] = value
    return sections


def _set_value(key: str, text: str) -> str:
    if "[0]." in key:
        lst, field = key.split("[0].")
        return f"{lst}=[{{{field}={text}}}]"
    return f"{key}={text}"


@pytest.mark.parametrize("key", [k for k, _ in NUMERIC])
def test_every_numeric_key_refuses_nan_and_inf_through_set_and_file(key: str, tmp_path: Path) -> None:
    for value in BAD_FLOATS:
        text = repr(value)  # nan, inf, -inf: TOML literals
        expect = f"{key} = {text}: must be a finite number"
        with pytest.raises(UserError) as e:  # --set
            parse_recipe(merged(TINY, {}), [_set_value(key, text)])
        assert any(p.startswith(expect) for p in e.value.problems), (key, text, e.value.problems)
        path = tmp_path / "r.toml"  # a TOML file with the literal
        path.write_text(to_toml(_with_value(key, value)))
        assert f"= {text}" in path.read_text()
        with pytest.raises(UserError) as e:
            load_recipe(path)
        assert any(p.startswith(expect) for p in e.value.problems), (key, text, e.value.problems)


def test_1e400_in_a_file_is_inf_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(to_toml(TINY).replace("lr = 0.003", "lr = 1e400"))
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert "optim.lr = inf: must be a finite number (nan and inf are not allowed)" in e.value.problems


@pytest.mark.parametrize(
    "assignment", ["optim.lr=nan", "optim.eps=nan", "optim.lr=inf", "optim.weight_decay=inf", "optim.grad_clip=nan"]
)
@pytest.mark.parametrize("dry", [False, True], ids=["train", "dry-run"])
def test_cli_refuses_non_finite_floats(cli, make_recipe, tmp_path: Path, assignment: str, dry: bool) -> None:
    out = tmp_path / "out"
    res = cli("pretrain", make_recipe(), "--out", out, "--set", assignment, *(["--dry-run"] if dry else []))
    refused(res, assignment.split("=")[0], "must be a finite number")
    assert not out.exists()


# --- 9. memory -------------------------------------------------------------------------------------


def test_a_batch_far_beyond_ram_is_refused_before_any_work(cli, make_recipe, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("pretrain", make_recipe(), "--out", out, "--set", "train.batch_size=1e9")
    refused(res, "train.batch_size = 1000000000", "GiB", "--ignore-memory-check")
    assert not out.exists()
    dry = cli("pretrain", make_recipe(), "--dry-run", "--set", "train.batch_size=1e9")  # plan, with a warning
    assert dry.exit_code == 0 and "training would stop here" in " ".join(dry.output.split()), dry.output


@pytest.fixture
def small_memory(monkeypatch):
    """Pretend this host has `gib` GiB of RAM and no GPU (the check reads planning's functions)."""
    from raptr_cli import planning

    def set_memory(gib: float) -> None:
        monkeypatch.setattr(planning, "device_memory", lambda: (gib, "RAM"))
        monkeypatch.setattr(planning, "host_memory", lambda: (gib, "RAM"))

    return set_memory


def test_a_run_over_memory_gets_a_micro_batch_that_fits(cli, make_recipe, tmp_path: Path, small_memory) -> None:
    from raptr_cli.planning import describe_run

    recipe = make_recipe()
    full = describe_run(load_recipe(recipe))["memory"]
    # between the state plus one sequence's activations and the whole batch's (8 sequences)
    gib = full["weights_optimizer_gib"] + 0.6 * full["activations_gib"]
    small_memory(gib)
    res = cli("pretrain", recipe, "--out", tmp_path / "a")
    msg = refused(res, "the run needs ~", "but RAM has", "--set train.micro_batch_size=", "activations")
    micro = int(msg.split("--set train.micro_batch_size=")[1].split()[0])
    assert micro in (1, 2, 4)  # divides batch_size 8 and is smaller than it
    assert not (tmp_path / "a").exists()
    run_ok(cli, "pretrain", recipe, "--out", tmp_path / "b", "--set", f"train.micro_batch_size={micro}")
    assert (tmp_path / "b" / "final").is_dir()
    run_ok(cli, "pretrain", recipe, "--out", tmp_path / "c", "--ignore-memory-check")  # the explicit override
    assert (tmp_path / "c" / "final").is_dir()


def test_no_micro_batch_fits_says_so(cli, make_recipe, tmp_path: Path, small_memory) -> None:
    from raptr_cli.planning import describe_run

    recipe = make_recipe()
    small_memory(0.95 * describe_run(load_recipe(recipe))["memory"]["weights_optimizer_gib"])
    refused(cli("pretrain", recipe, "--out", tmp_path / "a"), "No micro-batch fits", "KiB")


def test_vocab_size_has_an_upper_bound(cli, make_recipe, tmp_path: Path) -> None:
    refused(
        cli("pretrain", make_recipe(), "--out", tmp_path / "o", "--set", "tokenizer.vocab_size=1e9"),
        "tokenizer.vocab_size = 1000000000",
        "at most 1,048,576",
    )
    assert parse_recipe(merged(TINY, {"tokenizer": {"vocab_size": 2**20}})).tokenizer.vocab_size == 2**20


# --- 10. nan_policy = "skip" on the rich console --------------------------------------------------------


def test_a_skipped_step_is_shown_and_the_run_completes(cli, make_recipe, tmp_path: Path, monkeypatch) -> None:
    from raptr_cli.train import loop

    real, calls = loop.forward_backward, []

    def nan_on_third_step(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(loop, "forward_backward", nan_on_third_step)
    out = tmp_path / "out"
    res = run_ok(
        cli, "pretrain", make_recipe(), "--out", out, "--set", 'train.nan_policy="skip"', "--set", 'log.console="rich"'
    )
    assert "step 3: non-finite loss nan" in res.output and "batch skipped" in res.output, res.output
    rows = read_rows(out)
    assert [r["step"] for r in rows if r.get("event") == "skipped_step"] == [3]
    assert math.isfinite([r for r in rows if r.get("event") == "run_end"][0]["eval_loss"])


def test_the_live_console_shows_a_skipped_step(monkeypatch, capsys) -> None:
    """The tty path (a live progress bar) too: a skipped-step event is never read as a training row."""
    import sys

    from raptr_cli.cli.console import Console

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    c = Console("rich")
    c.total_steps = 4
    c.log(
        {
            "step": 1,
            "stage": 0,
            "path_length": 2,
            "loss": 5.0,
            "lr": 1e-3,
            "tokens_per_s": 1.0,
            "tflops_per_s": 0.0,
            "flops": 1.0,
        }
    )
    c.log({"event": "skipped_step", "step": 2, "loss": float("nan"), "grad_norm": float("nan")})
    c.log({"event": "some_future_event", "step": 2, "loss": 1.0})
    c.close()
    assert "step 2: non-finite loss nan" in capsys.readouterr().out


# --- 11. tracebacks that become messages ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_dir: Path) -> Path:
    """A folder with a tiny recipe, its data, a finished run in run/, and a latin-1 .jsonl."""
    import shutil

    from typer.testing import CliRunner

    from raptr_cli.cli.main import app

    w = tmp_path_factory.mktemp("finished")
    shutil.copytree(corpus_dir, w / "data")
    (w / "data" / "latin1.jsonl").write_bytes('{"text": "café au lait"}\n'.encode("latin-1"))
    (w / "recipe.toml").write_text(to_toml(merged(TINY, {"train": {"steps": 2, "eval_every": 0}})))
    res = CliRunner().invoke(app, ["pretrain", str(w / "recipe.toml"), "--out", str(w / "run")])
    assert res.exit_code == 0, res.output
    return w


def test_non_utf8_jsonl_is_named_in_pretrain_and_eval(cli, finished: Path, tmp_path: Path) -> None:
    bad = finished / "data" / "latin1.jsonl"
    res = cli("pretrain", finished / "recipe.toml", "--out", tmp_path / "o", "--set", f'data.train=["{bad}"]')
    refused(res, str(bad), "not UTF-8", "byte 13")
    refused(cli("eval", finished / "run", "--data", bad), str(bad), "not UTF-8")


def _read_only(monkeypatch, d: Path) -> None:
    """Make `d` refuse new files. chmod suffices for a normal user; root (as in CI containers)
    ignores permission bits, so there the file creation in `d` is made to fail as the OS would."""
    d.chmod(0o555)
    probe = d / "probe"
    try:
        probe.touch()
    except PermissionError:
        return
    probe.unlink()  # root: simulate EACCES for files created in d
    real = Path.touch

    def touch(self, *args, **kwargs):
        if self.parent == d:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["new", "overwrite"])
def test_a_read_only_out_is_refused_untouched(cli, make_recipe, tmp_path: Path, monkeypatch, extra) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _read_only(monkeypatch, out)
    try:
        refused(cli("pretrain", make_recipe(), "--out", out, *extra), f"--out {out} is not writable")
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "1e400", "nangpu-h"])
def test_flops_refuses_a_non_finite_budget(cli, make_recipe, budget: str) -> None:
    refused(cli("flops", make_recipe(), "--budget", budget), f"--budget '{budget}'", "finite")


def test_flops_refuses_a_non_finite_peak(cli, make_recipe) -> None:
    refused(cli("flops", make_recipe(), "--gpu", "h100", "--peak", "nan"), "--peak", "finite")


# --- 14. hf: is a hub name -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["hf:../data", "hf:/abs/data", "hf:./data", "hf:~/data", "hf:owner/../data", "hf:.."])
def test_an_hf_spec_with_path_syntax_is_refused(cli, make_recipe, tmp_path: Path, spec: str) -> None:
    res = cli("pretrain", make_recipe(), "--out", tmp_path / "o", "--set", f'data.train=["{spec}"]')
    refused(res, "data.train", spec, "is a path, not a hub dataset name", "without `hf:`")
    res = cli("pretrain", make_recipe(), "--out", tmp_path / "o", "--set", f'data.eval=["{spec}"]')
    refused(res, "data.eval", spec)


def test_an_hf_name_that_is_a_local_folder_is_refused(cli, make_recipe, tmp_path: Path, monkeypatch) -> None:
    recipe = make_recipe()
    monkeypatch.chdir(recipe.parent)  # load_dataset("data") would read ./data, not the hub
    refused(
        cli("pretrain", recipe, "--out", tmp_path / "o", "--set", 'data.train=["hf:data"]'),
        "data.train",
        "would load the local",
        "without `hf:`",
    )


def test_hub_names_still_parse() -> None:
    from raptr_cli.data.files import parse_hf_spec

    assert parse_hf_spec("hf:wikitext") == ("wikitext", "train")
    assert parse_hf_spec("hf:allenai/c4:validation") == ("allenai/c4", "validation")
    assert parse_hf_spec("hf:my-org/data_set.v2") == ("my-org/data_set.v2", "train")


# --- 15. an empty recipe -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ["", "  \n\n\t\n", "# only a comment\n  # and another\n"], ids=["empty", "whitespace", "comments"]
)
def test_an_empty_recipe_is_refused(cli, tmp_path: Path, monkeypatch, content: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "empty.toml"
    path.write_text(content)
    refused(cli("pretrain", path), str(path), "the recipe is empty")
    refused(cli("pretrain", path, "--dry-run"), "the recipe is empty")
    assert sorted(os.listdir(tmp_path)) == ["empty.toml"]  # no runs/raptr-run started


# --- 16. data.eval ---------------------------------------------------------------------------------


def test_a_too_small_eval_file_names_data_eval(cli, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe()
    (recipe.parent / "data" / "one.txt").write_text("the cat sees the ball .")
    res = cli("pretrain", recipe, "--out", tmp_path / "o", "--set", 'data.eval=["data/one.txt"]')
    msg = refused(res, "data.eval is too small", "train.seq_len")
    assert "data.train" not in msg


def test_an_eval_set_below_one_batch_warns(cli, make_recipe, tmp_path: Path) -> None:
    """Threshold: fewer tokens than one eval batch (train.batch_size x train.seq_len = 8 x 32)."""
    recipe = make_recipe()
    (recipe.parent / "data" / "few.txt").write_text(" ".join(["the cat sees the ball ."] * 20))  # ~4 blocks
    res = run_ok(
        cli,
        "pretrain",
        recipe,
        "--out",
        tmp_path / "o",
        "--set",
        'data.eval=["data/few.txt"]',
        "--set",
        'log.console="plain"',
    )
    text = " ".join(res.stderr.split())
    assert "warning: data.eval holds only" in text and "less than one eval batch" in text, res.stderr
    res = run_ok(cli, "eval", tmp_path / "o", "--data", recipe.parent / "data" / "few.txt", "--json")
    assert "less than one eval batch" in res.stderr and json.loads(res.stdout)["warnings"]
    quiet = run_ok(cli, "pretrain", recipe, "--out", tmp_path / "p", "--set", 'log.console="plain"')
    assert "less than one eval batch" not in quiet.stderr  # the fixture's eval.txt is ~10 KB
