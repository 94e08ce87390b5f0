"""`make bench`: run every benchmark and print each measured ratio next to its target.

A benchmark is a module in this folder with `run(quick: bool, log) -> dict` (a JSON-able result
holding "checks": [{name, measured, analytic (the target), deviation, pass}], "tolerance" (0 when
`pass` follows another rule, e.g. a bound) and optionally "busy", a note that the machine was
loaded) and `print_report(result)`. Add new ones to BENCHES. Exit status 1 when any check misses its target.

    python bench/run.py            # all benchmarks, full length
    python bench/run.py --quick    # fewer repetitions
    python bench/run.py --json     # {name: result} on stdout, progress on stderr
    python bench/run.py --threads 1  # on a shared, busy machine
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: import siblings

BENCHES = ["path_ratio", "width_ratio", "vs_hf", "misc", "token_store"]  # module names in bench/, run in this order


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: benchmarks stop their children
    ap = argparse.ArgumentParser(description="Run raptr's benchmarks.")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    ap.add_argument("--json", action="store_true", help="print {benchmark: result} as one JSON document")
    ap.add_argument("--only", choices=BENCHES, action="append", help="run only these benchmarks")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 resists a busy machine)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    results, rows = {}, []
    for name in a.only or BENCHES:
        mod = importlib.import_module(name)
        log(f"== {name}")
        res = mod.run(quick=a.quick, log=log)
        results[name] = res
        if not a.json:
            mod.print_report(res)
        rows += [(name, c, res.get("tolerance", 0.1)) for c in res["checks"]]
    if a.json:
        print(json.dumps(results, indent=2))
        return 0 if all(c["pass"] for _, c, _ in rows) else 1
    print(
        "\nSummary: each measured value next to its target (with a tolerance: |measured / target - 1| "
        "must stay within it; without: the benchmark's own rule, e.g. a bound)"
    )
    width = max(len(c["name"]) for _, c, _ in rows)
    print(f"{'check':<{width}}  {'measured':>8}  {'target':>8}  {'off by':>7}  {'tol':>4}  result")
    for _, c, tol in rows:
        print(
            f"{c['name']:<{width}}  {c['measured']:>8.4f}  {c['analytic']:>8.4f}  {c['deviation']:>+7.1%}  "
            f"{f'{tol:.0%}' if tol else '-':>4}  {'PASS' if c['pass'] else 'FAIL'}"
        )
    for name, res in results.items():
        if res.get("busy"):
            print(f"{name}: {res['busy']}")
    return 0 if all(c["pass"] for _, c, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
