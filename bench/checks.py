"""The bench/run.py protocol for benchmarks that produce rows {name, measured, target, ...}."""

from __future__ import annotations

from collections.abc import Callable


def as_checks(rows: list[dict], passed: Callable[[dict], bool]) -> dict:
    """Rows -> {"checks": [{name, measured, analytic (the target), deviation, pass}], "tolerance": 0}."""
    checks = []
    for r in rows:
        target = r["target"]
        dev = (r["measured"] / target - 1) if isinstance(target, (int, float)) and target else 0.0
        checks.append(
            {
                "name": r["name"],
                "measured": float(r["measured"]),
                "analytic": float(target) if target is not None else float("nan"),
                "deviation": dev,
                "pass": bool(passed(r)),
            }
        )
    return {"checks": checks, "tolerance": 0.0}


def print_checks(res: dict) -> None:
    for c in res["checks"]:
        print(f"{c['name']}: {c['measured']:.3g} (target {c['analytic']:.3g}) {'PASS' if c['pass'] else 'MISS'}")
