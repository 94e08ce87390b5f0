"""`raptr analyze`: the polynomial toy's exact error split, the stability gap against `raptr eval
--path-lengths`, the norm = "none" / residual = false ablations, and bad arguments (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import read_rows, run_ok

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --- the polynomial toy ---------------------------------------------------------------------------


def test_staircase_spectrum_and_exact_degree_split():
    from raptr_cli.analysis.polynomial import ResMLP, cube, degree_errors, staircase, walsh

    n, D = 6, 4
    x = cube(n)
    y = staircase(x, D)
    # the target is exactly one parity of each degree 1..D: the sets {0}, {0,1}, ... (bitmasks 2^d - 1)
    spec = walsh(y)
    assert torch.allclose(spec[[1, 3, 7, 15]], torch.ones(4, dtype=torch.float64))
    spec[[1, 3, 7, 15]] = 0
    assert spec.abs().max() < 1e-12
    # the per-degree errors of any function add up to its population MSE (Parseval on the whole cube)
    torch.manual_seed(0)
    for f in (torch.randn(2**n), ResMLP(n, 16, 32, 3)(x).detach(), y + 0.3 * x[:, 5] * x[:, 4]):
        e = degree_errors(f, y, n)
        assert len(e["by_degree"]) == n + 1
        assert sum(e["by_degree"]) == pytest.approx(e["total"], rel=1e-9, abs=1e-12)
    # a perturbation on one degree-2 parity shows up at degree 2 only, with its energy 0.3^2
    e = degree_errors(y + 0.3 * x[:, 5] * x[:, 4], y, n)
    assert e["by_degree"][2] == pytest.approx(0.09) and sum(e["by_degree"]) - e["by_degree"][2] < 1e-12
    assert degree_errors(y, y, n)["total"] == 0.0


def test_toy_methods_share_the_flops_budget_and_run():
    from raptr_cli.analysis.polynomial import ToyConfig, layer_steps, plans, run_polynomial

    cfg = ToyConfig(n_bits=5, degree=3, width=16, ffn=16, steps=16, batch_size=8, eval_every=8)
    ps = plans(cfg, 0)
    budget = layer_steps(ps["raptr"])
    assert budget == layer_steps(ps["shrink"]) == pytest.approx(layer_steps(ps["pld"]), rel=1e-6)
    assert ps["baseline"].total_steps == round(budget / cfg.n_blocks)
    assert [s.path_length for s in ps["shrink"].stages] == [8, 6, 4, 2]  # raptr's stages reversed
    res = run_polynomial(cfg, [0])
    assert [r["method"] for r in res["runs"]] == ["baseline", "raptr", "shrink", "pld"]
    for r in res["runs"]:
        assert r["curve"][-1]["step"] == r["steps"]
        assert sum(r["curve"][-1]["by_degree"]) == pytest.approx(r["curve"][-1]["total"], rel=1e-9)


# --- stability ------------------------------------------------------------------------------------


def _raptr_run(make_recipe, cli, tmp_path, **model):
    recipe = make_recipe(
        {
            "model": {"n_layers": 4, **model},
            "train": {"steps": 4, "checkpoint_every": 2, "keep_checkpoints": 0, "eval_every": 2},
            "schedule": {"method": "raptr", "stages": [{"steps": 2, "path_length": 3}, {"steps": 2, "path_length": 4}]},
        }
    )
    out = tmp_path / "run"
    run_ok(cli, "pretrain", recipe, "--out", out)
    return out


def test_stability_gap_is_eval_path_lengths(make_recipe, cli, tmp_path):
    out = _raptr_run(make_recipe, cli, tmp_path)
    st = json.loads(run_ok(cli, "analyze", "stability", out, "--json", "--paths", "3").stdout)["runs"][0]
    ev = json.loads(run_ok(cli, "eval", out, "--path-lengths", "3,2", "--paths", "3", "--json").stdout)
    assert st["n_layers"] == 4 and st["eval_loss"] == ev["eval_loss"]
    assert st["by_path_length"] == ev["by_path_length"]
    assert st["gap"] == ev["by_path_length"]["3"] - ev["eval_loss"]
    assert st["gaps"] == {"3": st["gap"], "2": ev["by_path_length"]["2"] - ev["eval_loss"]}
    # the one stage switch (3 -> 4 blocks): its logged jump, and the gap of the boundary checkpoint
    (sw,) = st["switches"]
    (tr,) = [r for r in read_rows(out) if r.get("event") == "transition"]
    assert (sw["from_path_length"], sw["to_path_length"]) == (3, 4)
    assert sw["measured_jump"] == tr["loss_after"] - tr["loss_before"]
    at = json.loads(
        run_ok(
            cli, "eval", out / "checkpoints" / "step-0000002", "--path-lengths", "3", "--paths", "3", "--json"
        ).stdout
    )
    assert sw["gap_at_switch"] == at["eval_loss"] - at["by_path_length"]["3"]
    assert sw["gap_final_model"] == ev["eval_loss"] - ev["by_path_length"]["3"]


@pytest.mark.parametrize("model", [{"norm": "none"}, {"residual": False}])
def test_ablations_train(make_recipe, cli, tmp_path, model):
    from raptr_cli.models.bert.config import BertConfig
    from raptr_cli.models.bert.config import param_count as bert_param_count
    from raptr_cli.models.bert.model import BertForMaskedLM, num_parameters

    out = _raptr_run(make_recipe, cli, tmp_path, **model)
    losses = [r["loss"] for r in read_rows(out) if "loss" in r and "event" not in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    conf = json.loads((out / "final" / "config.json").read_text())
    assert {k: conf[k] for k in model} == model
    cfg = BertConfig(
        vocab_size=conf["vocab_size"], hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, **model
    )
    m = BertForMaskedLM(cfg)
    assert num_parameters(m) == bert_param_count(cfg)["total"]
    if model.get("norm") == "none":  # no LayerNorm parameters left in the blocks (unused ones would be dead weight)
        assert not [k for k in m.state_dict() if k.startswith("bert.encoder.") and "LayerNorm" in k]


def test_sweep_trains_and_writes(cli, tmp_path):
    out = tmp_path / "sweep"
    res = run_ok(
        cli,
        "analyze",
        "stability",
        "--sweep",
        "depth=4",
        "--variants",
        "none",
        "--steps",
        "30",
        "--paths",
        "1",
        "--batches",
        "1",
        "--out",
        out,
        "--json",
    )
    (row,) = json.loads(res.stdout)["runs"]
    assert row["variant"] == "none" and row["norm"] == "none" and row["n_layers"] == 4
    assert [(s["from_path_length"], s["to_path_length"]) for s in row["switches"]] == [(2, 3), (3, 4)]
    assert all(s["gap_at_switch"] is not None for s in row["switches"])
    assert (out / "stability.md").is_file() and json.loads((out / "stability.json").read_text())["runs"]


# --- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["stability", "nowhere/run"], "no such run directory"),
        (["stability"], "give run directories or --sweep"),
        (["stability", ".", "--sweep", "depth=4"], "not both"),
        (["stability", "--sweep", "depth=2,8"], "--sweep 'depth=2,8'"),
        (["stability", "--sweep", "width=4"], "--sweep 'width=4'"),
        (["stability", "--sweep", "depth=a"], "--sweep 'depth=a'"),
        (["stability", "--sweep", "depth=4", "--variants", "bogus"], "unknown bogus"),
        (["stability", "--sweep", "depth=4", "--drops", "0"], "--drops '0'"),
        (["polynomial", "--seeds", "a"], "--seeds 'a'"),
        (["polynomial", "--seeds", "0,0"], "--seeds '0,0'"),
        (["polynomial", "--seeds", "-1"], "--seeds '-1'"),
    ],
)
def test_bad_arguments_exit_2(cli, tmp_path, args, needle):
    res = cli("analyze", *args, *(["--out", tmp_path / "o"] if "--sweep" in args else []))
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_directory_that_is_not_a_run_exits_2(cli, tmp_path):
    res = cli("analyze", "stability", tmp_path)
    assert res.exit_code == 2 and "neither a run directory nor a checkpoint" in res.stderr


def test_bad_norm_is_a_recipe_error(make_recipe, cli, tmp_path):
    res = cli("pretrain", make_recipe({"model": {"norm": "bogus"}}), "--out", tmp_path / "r", "--dry-run")
    assert res.exit_code == 2 and "model.norm" in res.stderr
