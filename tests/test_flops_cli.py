"""`raptr flops` end to end through typer's CliRunner: the paper's savings, the --json contract
(cli.md), budget solving, bad flags, the torch-free import that keeps the command fast, and the
analytic parameter count against real (meta-device) models."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from raptr_cli.cli.main import app
from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.bert.config import param_count as bert_param_count
from raptr_cli.models.bert.model import BertForMaskedLM, num_parameters

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RAPTR = str(RECIPES / "bert-base-raptr.toml")
BASELINE = str(RECIPES / "bert-base-baseline.toml")
STACKING = str(RECIPES / "bert-base-stacking.toml")
runner = CliRunner()


def flops(*args: str) -> dict:
    """`raptr flops ... --json` -> the parsed document (stdout must hold exactly one JSON object)."""
    res = runner.invoke(app, ["flops", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_text_output_reports_the_papers_speedup():
    res = runner.invoke(app, ["flops", RAPTR])
    assert res.exit_code == 0, res.output
    assert "speedup 1.333x (layers only)" in res.stdout
    # whole model: the MLM head runs every step, so the saving is a little below 4/3
    assert "1.316x whole model" in res.stdout


def test_json_contract_bert_base_raptr():
    doc = flops(RAPTR)
    for key in ("params", "flops_per_token_full", "stages", "total_flops", "baseline_flops", "ratio", "speedup"):
        assert key in doc, key
    assert doc["params"] == 109_514_298  # BERT-base MLM, vocab 30522, tied decoder counted once
    assert [s["index"] for s in doc["stages"]] == [0, 1, 2, 3]
    assert [s["path_length"] for s in doc["stages"]] == [6, 8, 10, 12]
    assert [s["steps"] for s in doc["stages"]] == [250_000] * 4
    tokens = 1_000_000 * 256 * 128
    assert [s["tokens"] for s in doc["stages"]] == [tokens // 4] * 4
    assert sum(s["flops"] for s in doc["stages"]) == pytest.approx(doc["total_flops"], rel=1e-12)
    assert doc["ratio"] * doc["speedup"] == pytest.approx(1.0, rel=1e-12)
    assert doc["ratio"] == pytest.approx(doc["total_flops"] / doc["baseline_flops"], rel=1e-12)
    # baseline = the full model on every token, and = what the baseline recipe itself costs
    assert doc["baseline_flops"] == pytest.approx(tokens * doc["flops_per_token_full"], rel=1e-12)
    base = flops(BASELINE)
    assert base["total_flops"] == pytest.approx(doc["baseline_flops"], rel=1e-12)
    assert base["ratio"] == pytest.approx(1.0, rel=1e-12)
    assert doc["layers_only"]["ratio"] == pytest.approx(0.75, rel=1e-12)
    # whole model: stage s costs (k_s * layer + head) per token; layer/head golden for BERT-base
    # at n = 128: layer = 8h^2 + 4nh + 4h*d_ff, head = 0.15 * (2hV + 2h^2)
    h, n, v = 768, 128, 30522
    layer, head = 8 * h * h + 4 * n * h + 4 * h * 4 * h, 0.15 * (2 * h * v + 2 * h * h)
    assert doc["flops_per_token_full"] == pytest.approx(3 * (12 * layer + head), rel=1e-12)
    assert doc["ratio"] == pytest.approx((9 * layer + head) / (12 * layer + head), rel=1e-12)


def test_stacking_6_9_12_is_three_quarters_of_the_layers():
    doc = flops(STACKING)
    assert [s["depth"] for s in doc["stages"]] == [6, 9, 12]
    assert doc["layers_only"]["ratio"] == pytest.approx((6 + 9 + 12) / 36, rel=1e-9)
    assert doc["layers_only"]["ratio"] == pytest.approx(0.75, rel=1e-6)
    assert doc["ratio"] * doc["speedup"] == pytest.approx(1.0, rel=1e-12)


def test_budget_in_flops_solves_steps():
    doc = flops(RAPTR, "--budget", "3e18")
    b = doc["budget"]
    assert b["target_flops"] == 3e18
    assert b["total_flops"] == pytest.approx(3e18, rel=1e-3)
    assert sum(s["steps"] for s in b["stages"]) == b["steps"]
    # the --set lines it prints reproduce that budget when fed back
    sets = [a for s in b["set"] for a in ("--set", s)]
    again = flops(RAPTR, *sets)
    assert again["total_flops"] == pytest.approx(3e18, rel=1e-3)
    assert again["total_flops"] == pytest.approx(b["total_flops"], rel=1e-12)


def test_budget_in_gpu_hours():
    doc = flops(RAPTR, "--budget", "200gpu-h", "--gpu", "h100", "--mfu", "0.4")
    assert doc["time"]["gpu_hours"] == pytest.approx(200, rel=1e-3)
    assert doc["time"]["peak_tflops"] == 989.0 and doc["time"]["mfu"] == 0.4
    # 200 h x 3600 s x 989e12 FLOP/s x 0.4
    assert doc["budget"]["target_flops"] == pytest.approx(200 * 3600 * 989e12 * 0.4, rel=1e-12)
    res = runner.invoke(app, ["flops", RAPTR, "--budget", "200gpu-h", "--gpu", "h100", "--mfu", "0.4"])
    assert res.exit_code == 0, res.output
    assert "200.0 GPU-hours" in res.stdout


def test_equal_flops_to_matches_the_raptr_recipe():
    target = flops(RAPTR)["total_flops"]
    doc = flops(BASELINE, "--equal-flops-to", RAPTR)
    assert doc["budget"]["total_flops"] == pytest.approx(target, rel=1e-3)
    # the baseline affords ~0.76 of its steps at RaPTr's cost
    assert doc["budget"]["steps"] == pytest.approx(1_000_000 * flops(RAPTR)["ratio"], rel=1e-3)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--gpu", "nosuchgpu"], "--gpu"),
        (["--budget", "lots"], "--budget"),
        (["--budget", "-3e18"], "--budget"),
        (["--budget", "200gpu-h"], "--gpu"),  # GPU-hours need a GPU peak
        (["--mfu", "0"], "--mfu"),
        (["--mfu", "1.5"], "--mfu"),
        (["--budget", "3e18", "--equal-flops-to", RAPTR], "--equal-flops-to"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args, needle):
    res = runner.invoke(app, ["flops", RAPTR, *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output
    assert res.stdout == ""


def test_cli_import_does_not_load_torch():
    """`raptr flops` stays fast because importing the CLI (and running flops) never loads torch."""
    code = (
        "import sys, time; t = time.perf_counter(); import raptr_cli.cli.main; "
        "print(round(time.perf_counter() - t, 3), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False", "importing raptr_cli.cli.main pulled in torch"
    assert float(out[0]) < 10.0  # typically ~0.3 s; torch alone takes seconds
    code = (
        "import sys; from typer.testing import CliRunner; from raptr_cli.cli.main import app; "
        f"r = CliRunner().invoke(app, ['flops', {RAPTR!r}, '--json']); "
        "assert r.exit_code == 0, r.output; print('torch' in sys.modules)"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "`raptr flops` imported torch"
    assert time.perf_counter() - t < 20.0


@pytest.mark.parametrize(
    "cfg",
    [
        BertConfig.from_preset("base"),
        BertConfig.from_preset("tiny", vocab_size=512),
        BertConfig(
            vocab_size=300,
            hidden_size=32,
            num_layers=3,
            num_heads=2,
            intermediate_size=64,
            norm="pre",
            max_position_embeddings=64,
        ),
    ],
    ids=["base", "tiny", "pre-ln"],
)
def test_analytic_param_count_matches_the_model(cfg):
    with torch.device("meta"):  # base has 110M parameters: count them without allocating
        model = BertForMaskedLM(cfg)
    model.tie_weights()
    count = bert_param_count(cfg)
    assert count["total"] == num_parameters(model)
    assert count["non_embedding"] == num_parameters(model, exclude_embeddings=True)
    assert count["per_layer"] == sum(p.numel() for p in model.blocks[0].parameters())
