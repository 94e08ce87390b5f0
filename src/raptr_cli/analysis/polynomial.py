"""The polynomial toy: growing vs shrinking subnetworks on a target
whose components have increasing degree, with an exact per-degree error decomposition.

Design (the paper's construction is not public; this one is ours):
- Inputs: x uniform on the Boolean cube {-1, +1}^n. Point p (0 <= p < 2^n) has x_j = -1 exactly
  where bit j of p is set, so the parity chi_S(x) = prod_{j in S} x_j of a set S (a bitmask) is
  (-1)^popcount(S & p): the Walsh-Hadamard matrix. The parities are orthonormal under the uniform
  distribution, and evaluating on the WHOLE cube is evaluating the population exactly.
- Target: the staircase y = x_1 + x_1 x_2 + ... + x_1...x_D, one parity of each degree 1..D. Each
  term is reachable from the one below it (Abbe et al.'s staircase), so SGD can learn it degree by
  degree instead of needing ~n^D samples for an isolated degree-D parity.
- Per-degree error: with f_S the Walsh coefficients of the network's function (a fast transform of
  its outputs on the cube), err_k = sum_{|S| = k} (f_S - y_S)^2. By Parseval the err_k (k = 0..n) add
  up exactly to the population MSE E[(f - y)^2]; err_k for k in 1..D starts near 1 (the energy of
  the degree-k term) and reaches 0 when that term is learned; `other` (k = 0 and k > D) is
  spurious mass the target lacks.
- Network: a pre-LN residual MLP, h <- h + s * W2 relu(W1 LN(h)), between a linear input map and a
  LayerNorm + linear head; `forward(layers=, scales=)` runs only the listed blocks, as raptr's BERT.
- Schedules come from raptr's own `schedule.build_plan` (paths from (seed, step), PLD's formula,
  1/p scaling): "raptr" grows the path length (2-4-6-8 of 8, first and last block fixed), "shrink"
  runs the same stages reversed (the pure direction control, identical FLOPs), "pld" is Zhang & He's
  decreasing keep probability with gamma solved so its expected FLOPs equal raptr's, "baseline" is
  the full network for as many steps as those FLOPs buy. Every method sees the same init and data
  stream for a given seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..schedule import Plan, ScheduleConfig, StageConfig, build_plan, stream

METHODS = ("baseline", "raptr", "shrink", "pld")


@dataclass
class ToyConfig:
    """The polynomial toy's knobs; the defaults take about a minute per seed on 2 CPU cores."""

    n_bits: int = 12
    """Input dimension n; the eval set is the whole cube (2^n points), so keep n <= 16."""
    degree: int = 6
    """Highest degree D of the staircase target."""
    width: int = 64
    """Residual stream width."""
    ffn: int = 128
    """Hidden width of each block's MLP."""
    n_blocks: int = 8
    """Residual blocks L."""
    steps: int = 400
    """Optimizer steps of the subnetwork methods (baseline: as many as their FLOPs buy)."""
    batch_size: int = 128
    """Fresh uniform samples per step (online learning: no fixed training set)."""
    lr: float = 2e-3
    """Adam learning rate (constant: no schedule to confound the comparison)."""
    path_lengths: list[int] = field(default_factory=lambda: [2, 4, 6, 8])
    """raptr's stages (equal lengths); shrink runs them reversed."""
    pld_theta_bar: float = 0.2
    """pld's asymptotic keep probability; 0.5 (the paper's) cannot get as cheap as raptr 2-4-6-8."""
    eval_every: int = 25
    """Evaluate on the whole cube every this many steps."""


def cube(n: int) -> torch.Tensor:
    """(2^n, n) float tensor; row p has x_j = -1 where bit j of p is set."""
    p = torch.arange(2**n)[:, None]
    return 1.0 - 2.0 * ((p >> torch.arange(n)) & 1).float()


def staircase(x: torch.Tensor, degree: int) -> torch.Tensor:
    """y = sum_{d=1..D} x_1 x_2 ... x_d; (N, n) -> (N,)."""
    return torch.cumprod(x[:, :degree], dim=1).sum(dim=1)


def walsh(values: torch.Tensor) -> torch.Tensor:
    """Walsh coefficients f_S = mean_x f(x) chi_S(x) of values on `cube(n)`, by the fast transform."""
    v = values.double().reshape(-1)
    n_pts, h = v.numel(), 1
    while h < n_pts:
        v = v.view(-1, 2, h)
        v = torch.stack((v[:, 0] + v[:, 1], v[:, 0] - v[:, 1]), dim=1).reshape(n_pts)
        h *= 2
    return v / n_pts


def degree_errors(f: torch.Tensor, y: torch.Tensor, n: int) -> dict:
    """Population MSE of f against y on the cube and its exact split by degree: by_degree[k] =
    sum_{|S|=k} (f_S - y_S)^2 for k = 0..n (Parseval: they sum to `total`)."""
    err = (walsh(f) - walsh(y)) ** 2
    deg = torch.tensor([bin(s).count("1") for s in range(2**n)])
    by_degree = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, deg, err)
    return {"total": float(((f.double() - y.double()) ** 2).mean()), "by_degree": by_degree.tolist()}


class ResMLP(nn.Module):
    """x (B, n) -> (B,): input map, L pre-LN residual MLP blocks, LayerNorm + linear head."""

    def __init__(self, n: int, width: int, ffn: int, n_blocks: int):
        super().__init__()
        self.inp = nn.Linear(n, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, ffn), nn.ReLU(), nn.Linear(ffn, width))
            for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def forward(
        self, x: torch.Tensor, layers: list[int] | None = None, scales: list[float] | None = None
    ) -> torch.Tensor:
        h = self.inp(x)  # (B, width)
        order = range(len(self.blocks)) if layers is None else layers
        for j, i in enumerate(order):  # a block not listed is not executed (identity)
            h = h + (1.0 if scales is None else scales[j]) * self.blocks[i](h)
        return self.out(self.norm(h)).squeeze(-1)


def flops_per_example(cfg: ToyConfig, active: float) -> float:
    """Training FLOPs of one example: 3 x forward, 2 per multiply-accumulate (norms, adds ignored)."""
    fwd = 2 * (cfg.n_bits * cfg.width + active * 2 * cfg.width * cfg.ffn + cfg.width)
    return 3.0 * fwd


def _sched(method: str, cfg: ToyConfig, steps: int, gamma: float = 0.0) -> ScheduleConfig:
    ks = cfg.path_lengths if method == "raptr" else cfg.path_lengths[::-1]
    if method in ("raptr", "shrink"):
        frac = 1.0 / len(ks)
        return ScheduleConfig(method="raptr", stages=[StageConfig(fraction=frac, path_length=k) for k in ks])
    if method == "pld":
        return ScheduleConfig(method="pld", pld_theta_bar=cfg.pld_theta_bar, pld_gamma=gamma)
    return ScheduleConfig(method="baseline")


def _plan(sched: ScheduleConfig, cfg: ToyConfig, steps: int, seed: int) -> Plan:
    return build_plan(sched, cfg.n_blocks, steps, cfg.batch_size, seed)


def layer_steps(plan: Plan) -> float:
    """Expected block executions over the run (the FLOPs that differ between methods)."""
    return sum(plan.expected_layer_steps(s) for s in plan.stages)


def plans(cfg: ToyConfig, seed: int) -> dict[str, Plan]:
    """The four methods' plans at equal expected FLOPs (raptr's)."""
    raptr = _plan(_sched("raptr", cfg, cfg.steps), cfg, cfg.steps, seed)
    budget = layer_steps(raptr)
    lo, hi = 0.0, 1.0  # pld's layer steps fall as gamma grows: bisect for raptr's budget
    while layer_steps(_plan(_sched("pld", cfg, cfg.steps, hi), cfg, cfg.steps, seed)) > budget:
        hi *= 2
        if hi > 1e6:
            raise UserError(
                f"pld cannot be as cheap as raptr {cfg.path_lengths}: pld_theta_bar = "
                f"{cfg.pld_theta_bar} keeps too many blocks",
                hint="Lower pld_theta_bar.",
            )
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi)
            if layer_steps(_plan(_sched("pld", cfg, cfg.steps, mid), cfg, cfg.steps, seed)) > budget
            else (lo, mid)
        )
    base_steps = max(1, round(budget / cfg.n_blocks))
    return {
        "baseline": _plan(_sched("baseline", cfg, base_steps), cfg, base_steps, seed),
        "raptr": raptr,
        "shrink": _plan(_sched("shrink", cfg, cfg.steps), cfg, cfg.steps, seed),
        "pld": _plan(_sched("pld", cfg, cfg.steps, hi), cfg, cfg.steps, seed),
    }


def train_one(plan: Plan, cfg: ToyConfig, seed: int, x_all: torch.Tensor, y_all: torch.Tensor) -> list[dict]:
    """Train one network under `plan`; the curve of full-network errors on the whole cube."""
    torch.manual_seed(seed)  # same init for every method of a seed
    net = ResMLP(cfg.n_bits, cfg.width, cfg.ffn, cfg.n_blocks)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    flops, curve = 0.0, []

    def record(step: int) -> None:
        net.eval()
        with torch.no_grad():
            e = degree_errors(net(x_all), y_all, cfg.n_bits)
        net.train()
        curve.append({"step": step, "flops": flops, **e})

    record(0)
    for step in range(plan.total_steps):
        layers = plan.active_layers(step)
        scales = plan.layer_scales(step, layers)
        # the data stream depends on (seed, step) only, never on the method
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=stream(seed, step, "toy_batches"))
        loss = ((net(x_all[idx], layers, scales) - y_all[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)  # skipped blocks keep grad None: Adam leaves them alone
        loss.backward()
        opt.step()
        flops += cfg.batch_size * flops_per_example(cfg, len(layers))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == plan.total_steps:
            record(step + 1)
    return curve


def check_config(cfg: ToyConfig, seeds: list[int]) -> None:
    problems = []
    if not 2 <= cfg.n_bits <= 16:
        problems.append(f"n_bits = {cfg.n_bits}: must be in 2..16 (the eval set is all 2^n points)")
    if not 1 <= cfg.degree <= cfg.n_bits:
        problems.append(f"degree = {cfg.degree}: must be in 1..n_bits")
    if cfg.steps < len(cfg.path_lengths) or cfg.eval_every < 1:
        problems.append(f"steps = {cfg.steps} must be >= the number of stages and eval_every >= 1")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        problems.append(f"seeds {seeds}: give distinct non-negative integers")
    if problems:
        raise UserError("bad polynomial-toy settings", problems=problems, hint="See raptr analyze polynomial --help.")


def run_polynomial(cfg: ToyConfig, seeds: list[int], progress=None) -> dict:
    """Train every method for every seed; returns the JSON document `analyze polynomial` writes."""
    check_config(cfg, seeds)
    x_all = cube(cfg.n_bits)
    y_all = staircase(x_all, cfg.degree)
    runs = []
    t0 = time.perf_counter()
    for seed in seeds:
        for method, plan in plans(cfg, seed).items():
            t = time.perf_counter()
            curve = train_one(plan, cfg, seed, x_all, y_all)
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "steps": plan.total_steps,
                    "pld_gamma": plan.pld_gamma if method == "pld" else None,
                    "flops": curve[-1]["flops"],
                    "wall_s": round(time.perf_counter() - t, 2),
                    "curve": curve,
                }
            )
            if progress:
                progress(runs[-1])
    return {
        "config": asdict(cfg),
        "seeds": seeds,
        "target": f"staircase of parities, degrees 1..{cfg.degree}",
        "runs": runs,
        "summary": summarize(runs, cfg),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def summarize(runs: list[dict], cfg: ToyConfig) -> list[dict]:
    """Per method: final per-degree errors (mean over seeds) and the step each degree was learned
    (error below 0.1 of its initial energy 1, first eval; None if never)."""
    out = []
    for m in METHODS:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            continue
        ends = [r["curve"][-1]["by_degree"] for r in mine]
        final = [sum(e[k] for e in ends) / len(ends) for k in range(1, cfg.degree + 1)]
        other = sum(e[0] + sum(e[cfg.degree + 1 :]) for e in ends) / len(ends)
        learned = []
        for k in range(1, cfg.degree + 1):
            hits = [next((c["flops"] for c in r["curve"] if c["by_degree"][k] < 0.1), None) for r in mine]
            learned.append(None if None in hits else sum(hits) / len(hits))
        out.append(
            {
                "method": m,
                "steps": mine[0]["steps"],
                "flops": sum(r["flops"] for r in mine) / len(mine),
                "final_total": sum(r["curve"][-1]["total"] for r in mine) / len(mine),
                "final_by_degree": final,
                "final_other": other,
                "learned_at_flops": learned,
            }
        )
    return out


def table(result: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per method, steps, FLOPs, final total and per-degree errors (mean over seeds)."""
    D = result["config"]["degree"]
    header = [
        "method",
        "steps",
        "FLOPs",
        "total",
        *[f"deg {k}" for k in range(1, D + 1)],
        "other",
        "degrees learned (err < 0.1)",
    ]
    rows = []
    for s in result["summary"]:
        learned = [str(k + 1) for k, f in enumerate(s["learned_at_flops"]) if f is not None]
        rows.append(
            [
                s["method"],
                str(s["steps"]),
                f"{s['flops']:.3g}",
                f"{s['final_total']:.4f}",
                *[f"{e:.4f}" for e in s["final_by_degree"]],
                f"{s['final_other']:.4f}",
                ",".join(learned) or "-",
            ]
        )
    return header, rows


def write_outputs(result: dict, out: Path) -> list[Path]:
    """polynomial.json (every curve), polynomial.md (the table) and polynomial.png (if matplotlib)."""
    from .plots import plot_polynomial

    out.mkdir(parents=True, exist_ok=True)
    (out / "polynomial.json").write_text(json.dumps(result, indent=1))
    header, rows = table(result)
    md = [
        f"# polynomial toy: {result['target']}",
        "",
        f"Final full-network population MSE per degree (mean over seeds {result['seeds']}); equal FLOPs.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "polynomial.md").write_text("\n".join(md) + "\n")
    files = [out / "polynomial.json", out / "polynomial.md"]
    png = plot_polynomial(result, out / "polynomial.png")
    return files + ([png] if png else [])


__all__ = ["ToyConfig", "cube", "staircase", "walsh", "degree_errors", "ResMLP", "plans", "run_polynomial", "METHODS"]
