"""bench/gpu.py's table of ratios: every measured figure next to its target (issue 19)."""

from __future__ import annotations

import sys

MFU_TARGET = 0.40  # full model, BERT-base, bf16, sequence 128
PATH_TOLERANCE = 0.05  # k-layer step time / full step time within 5% of the FLOPs ratio
VS_HF_TARGET = 1.5  # raptr tokens/s over transformers' BertForMaskedLM
DATA_SHARE_TARGET = 0.02  # share of step time the loop waits for its batch
MEMORY_TOLERANCE = 0.20  # the --dry-run estimate within 20% of the peak allocated


def _row(
    check: str, measured: float | None, kind: str, target: float | None = None, tol: float = 0.0, fmt: str = "ratio"
) -> dict:
    """kind: "min" (>= target), "max" (< target), "within" (|measured / target - 1| <= tol), "info"."""
    if kind == "info":
        text = "-"
    elif kind == "within":
        text = f"{target:g} +- {tol:g}"
    else:
        text = (">=" if kind == "min" else "<") + " " + (f"{target:.0%}" if fmt == "pct" else f"{target:g}")
    ok = None
    if measured is not None and kind != "info":
        ok = {"min": measured >= target, "max": measured < target, "within": abs(measured / target - 1) <= tol}[kind]
    return {
        "check": check,
        "measured": measured,
        "target": target,
        "rule": kind,
        "tolerance": tol,
        "target_text": text,
        "fmt": fmt,
        "pass": ok,
    }


def table(doc: dict, s, cuda: bool) -> list[dict]:
    """The rows, from run()'s document; `pass` is None on the CPU smoke (no target applies there)."""
    rows = []
    for key, spec, main in (("base", s.base, True), ("large", s.large, False)):
        if not doc[key]:  # skipped (deadline, --only) or failed: say so in the table too
            rows.append(
                _row(
                    f"MFU, {spec.name} full model: not measured", None, "min" if main else "info", MFU_TARGET, fmt="pct"
                )
            )
        for mode, res in doc[key].items():
            full = res["paths"][str(spec.layers)]
            rows.append(
                _row(
                    f"MFU, {spec.name} full model, {mode}",
                    full["mfu"],
                    "min" if main else "info",
                    MFU_TARGET,
                    fmt="pct",
                )
            )
            for k in spec.ks:
                rows.append(
                    _row(
                        f"{spec.name}: t({k}) / t({spec.layers}) over FLOPs ratio "
                        f"{res['paths'][str(k)]['flops_ratio']:.3f}, {mode}",
                        res["paths"][str(k)]["ratio_vs_flops"],
                        "within",
                        1.0,
                        PATH_TOLERANCE,
                    )
                )
        if main:
            if not any("hf" in res for res in doc[key].values()):
                rows.append(
                    _row(
                        "tokens/s, raptr / transformers BertForMaskedLM (sdpa): not measured",
                        None,
                        "min",
                        VS_HF_TARGET,
                        fmt="x",
                    )
                )
            for mode, res in doc[key].items():
                if "hf" in res:
                    rows.append(
                        _row(
                            f"tokens/s, raptr / transformers BertForMaskedLM (sdpa), both {mode}",
                            res["hf"]["raptr_over_hf"],
                            "min",
                            VS_HF_TARGET,
                            fmt="x",
                        )
                    )
                    rows.append(_row(f"MFU, transformers BertForMaskedLM, {mode}", res["hf"]["mfu"], "info", fmt="pct"))
                    rec = doc.get("recommended_mode")
                    if rec and rec != mode:
                        rows.append(
                            _row(
                                f"tokens/s, raptr {rec} / transformers {mode}",
                                doc["vs_hf_recommended"],
                                "min",
                                VS_HF_TARGET,
                                fmt="x",
                            )
                        )
            tr = doc.get("trainer")
            if not tr:
                rows.append(_row("data_share, real trainer: not measured", None, "max", DATA_SHARE_TARGET, fmt="pct"))
            else:
                what = f"real trainer ({tr['recipe']}, {tr['steps']} steps)"
                rows.append(_row(f"data_share, {what}", tr["data_share"], "max", DATA_SHARE_TARGET, fmt="pct"))
                rows.append(_row(f"MFU, {what}, all paths", tr["mfu"], "info", fmt="pct"))
                rows.append(
                    _row(
                        f"memory: --dry-run estimate {tr['estimate_gib']:.2f} GiB / peak allocated"
                        + (f" {tr['peak_memory_gib']:.2f} GiB" if tr["peak_memory_gib"] else " (CPU: none)"),
                        doc["memory_estimate_over_peak"],
                        "within",
                        1.0,
                        MEMORY_TOLERANCE,
                    )
                )
    if not cuda:
        for r in rows:
            r["pass"] = None
    return rows


def _fmt(v: float | None, fmt: str) -> str:
    if v is None:
        return "n/a"
    return {"pct": f"{v:.1%}", "x": f"{v:.2f}x"}.get(fmt, f"{v:.4f}")


def print_table(doc: dict, file=sys.stdout) -> None:
    rows = doc["table"]
    w = max([len(r["check"]) for r in rows] + [5])
    p = lambda line="": print(line, file=file)  # noqa: E731
    p(
        f"\n{doc['device']}, torch {doc['torch']}, {doc['date']}, {doc['elapsed_s']:.0f} s "
        f"(budget {doc['budget_s']:.0f} s); recommended mode: {doc.get('recommended_mode')}"
    )
    p(f"{'check':<{w}}  {'measured':>9}  {'target':>12}  result")
    for r in rows:
        res = {True: "PASS", False: "MISS", None: "-" if r["rule"] == "info" or doc["cuda"] else "smoke"}[r["pass"]]
        p(f"{r['check']:<{w}}  {_fmt(r['measured'], r['fmt']):>9}  {r['target_text']:>12}  {res}")
    for n in doc["notes"]:
        p(f"note: {n}")
