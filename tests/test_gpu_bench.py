"""bench/gpu.py's CPU fallback (issue 19): the same phases and table at a tiny scale, runnable where
the device machine's Python is (no `datasets`), JSON keys present, values finite, FLOPs ratios the
analytic ones, and CPU figures never written to the committed docs/gpu-results.json."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# Run bench/gpu.py as the device would: `import datasets` fails (the device has no such package),
# and the run must not have imported it at the end.
DRIVER = """
import importlib.abc, importlib.machinery, sys

class NoDatasets(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "datasets" or name.startswith("datasets."):
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ModuleNotFoundError("No module named 'datasets' (blocked by the test)", name="datasets")

sys.meta_path.insert(0, NoDatasets())
sys.path.insert(0, sys.argv[1])
import gpu
rc = gpu.main(sys.argv[2:])
assert "datasets" not in sys.modules, "bench/gpu.py imported datasets"
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu-bench") / "smoke.json"
    env_path = str(REPO / "src")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(BENCH),
            "--cpu-smoke",
            "--threads",
            "1",
            "--peak",
            "1",
            "--json-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": env_path, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert not [n for n in doc["notes"] if "failed" in n], proc.stderr[-3000:]  # every phase ran through
    return proc, doc


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_smoke_json_has_the_headline_keys_finite(smoke):
    _, doc = smoke
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["date"])
    assert doc["cpu_smoke"] is True and doc["cuda"] is False
    assert doc["device"].startswith("CPU smoke") and "not GPU figures" in doc["device"]
    assert set(doc["path_ratio_vs_flops"]) == {"6", "8", "10"}
    assert set(doc["path_ratio_vs_flops_large"]) == {"12", "16", "20"}
    for key in ("mfu_full", "mfu_full_large", "vs_hf", "vs_hf_recommended", "data_share", "memory_estimate_gib"):
        assert _finite(doc[key]), key
    assert all(_finite(v) and v > 0 for v in doc["path_ratio_vs_flops"].values())
    assert all(_finite(v) and v > 0 for v in doc["path_ratio_vs_flops_large"].values())
    assert 0 <= doc["data_share"] < 1 and doc["memory_estimate_gib"] > 0
    # no allocator peak on the CPU: left out, not faked
    assert doc["peak_memory_gib"] is None and doc["memory_estimate_over_peak"] is None
    assert doc["recommended_mode"] == "eager" and set(doc["base"]) == {"eager"}
    tr = doc["trainer"]
    assert tr["recipe"] == "recipes/bert-base-raptr.toml" and tr["steps"] == 8
    assert set(tr["tokens_per_s_stages"]) == {"6", "8", "10", "12"}  # the recipe's 6-8-10-12 stages ran


def test_smoke_flops_ratios_are_the_analytic_ones(smoke):
    from raptr_cli.flops import step_flops
    from raptr_cli.models.bert.config import BertConfig
    from raptr_cli.planning import model_dims

    _, doc = smoke
    c = doc["config"]
    for key in ("base", "large"):
        spec, res = c[key], doc[key]["eager"]
        cfg = BertConfig(
            vocab_size=spec["vocab"],
            hidden_size=spec["hidden"],
            num_layers=spec["layers"],
            num_heads=spec["heads"],
            intermediate_size=4 * spec["hidden"],
            max_position_embeddings=512,
        )
        dims = model_dims(cfg, c["seq_len"])
        tokens, n = c["batch"] * c["seq_len"], res["n_masked"]
        assert res["tokens_per_step"] == tokens and 0 < n < tokens
        full = step_flops(dims, spec["layers"], tokens, n)
        for k in spec["ks"]:
            row = res["paths"][str(k)]
            assert row["flops_ratio"] == pytest.approx(step_flops(dims, k, tokens, n) / full, rel=1e-12)
            assert k / spec["layers"] < row["flops_ratio"] < 1  # the head is a fixed cost
            assert row["ratio_vs_flops"] == pytest.approx(row["measured_ratio"] / row["flops_ratio"])
        for row in res["paths"].values():
            assert _finite(row["step_s"]) and row["step_s"] > 0 and _finite(row["mfu"])


def test_smoke_table_lists_every_check_without_verdicts(smoke):
    proc, doc = smoke
    checks = [r["check"] for r in doc["table"]]
    for needle in (
        "MFU, smoke 12x64 full model, eager",
        "t(6) / t(12)",
        "t(8) / t(12)",
        "t(10) / t(12)",
        "t(12) / t(24)",
        "raptr / transformers BertForMaskedLM",
        "data_share, real trainer",
        "--dry-run estimate",
    ):
        assert any(needle in c for c in checks), needle
    assert all(r["pass"] is None for r in doc["table"])  # targets apply on a GPU only
    assert "smoke" in proc.stdout and "data_share, real trainer" in proc.stdout
    assert "docs/gpu-results.json" not in proc.stdout  # nothing written there


def test_cpu_figures_never_go_to_the_committed_results(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH))
    assert gpu.output_path(True, None, cuda=False) == "-"  # --json on a CPU: stdout
    assert gpu.output_path(True, None, cuda=True) == str(gpu.RESULTS)
    assert gpu.output_path(False, None, cuda=True) is None
    assert gpu.output_path(True, str(tmp_path / "x.json"), cuda=False) == str(tmp_path / "x.json")
    before = gpu.RESULTS.read_bytes() if gpu.RESULTS.exists() else None
    assert gpu.main(["--cpu-smoke", "--json-out", str(gpu.RESULTS)]) == 2
    assert "refusing to write CPU figures" in capsys.readouterr().err
    assert (gpu.RESULTS.read_bytes() if gpu.RESULTS.exists() else None) == before


def test_deadline_skips_phases_and_still_writes_every_key(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "late.json"
    assert gpu.main(["--cpu-smoke", "--budget-s", "0", "--json-out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert sum("skipped" in n for n in doc["notes"]) == 3  # base, trainer, large: nothing measured
    assert doc["mfu_full"] is None and doc["path_ratio_vs_flops"] == {}
    assert doc["table"] and all(r["measured"] is None and "not measured" in r["check"] for r in doc["table"])
    assert doc["vs_hf"] is None and doc["data_share"] is None
