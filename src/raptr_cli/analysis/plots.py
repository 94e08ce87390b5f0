"""PNG figures for `raptr analyze` (matplotlib is optional: without it the functions return None)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_polynomial(result: dict, path: Path) -> Path | None:
    """One panel per degree 1..D plus the total: full-network error against training FLOPs, one line
    per method (mean over seeds at each eval; the methods' eval points differ in FLOPs)."""
    plt = _pyplot()
    if plt is None:
        return None
    D = result["config"]["degree"]
    panels = [("total", None)] + [(f"degree {k}", k) for k in range(1, D + 1)]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in result["runs"]))
    for ax, (title, k) in zip(axes.flat, panels):
        for m in methods:
            mine = [r["curve"] for r in result["runs"] if r["method"] == m]
            n = min(len(c) for c in mine)
            xs = [sum(c[i]["flops"] for c in mine) / len(mine) for i in range(n)]
            val = (lambda e: e["total"]) if k is None else (lambda e, k=k: e["by_degree"][k])
            ys = [sum(val(c[i]) for c in mine) / len(mine) for i in range(n)]
            ax.plot(xs, ys, label=m, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("training FLOPs", fontsize=9)
    fig.supylabel("population MSE on the component (log)", fontsize=9)
    fig.suptitle(f"polynomial toy: {result['target']}, seeds {result['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stability(rows: list[dict], path: Path) -> Path | None:
    """Gap (mean loss of random (L-1)-block paths minus full-model loss) against depth L, log-log,
    one line per variant, with a c/sqrt(L) reference through the first point. Gaps <= 0 cannot sit
    on a log axis: they are drawn at the axis floor as open markers."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    positive = [r["gap"] for r in rows if r["gap"] is not None and r["gap"] > 0]
    floor = min(positive) / 3 if positive else 1e-4
    for variant in dict.fromkeys(r["variant"] for r in rows):
        pts = sorted((r["n_layers"], r["gap"]) for r in rows if r["variant"] == variant and r["gap"] is not None)
        if not pts:
            continue
        (line,) = ax.plot([L for L, _ in pts], [max(g, floor) for _, g in pts], marker="o", label=variant)
        bad = [(L, floor) for L, g in pts if g <= 0]
        if bad:
            ax.scatter(*zip(*bad), facecolors="white", edgecolors=line.get_color(), zorder=3)
    depths = sorted({r["n_layers"] for r in rows})
    if positive and len(depths) > 1:
        first = max(positive)
        ax.plot(depths, [first * (depths[0] / L) ** 0.5 for L in depths], "k--", lw=1, label="1/sqrt(L) slope")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # no "6x10^0" labels between the depths
    ax.set_xlabel("depth L")
    ax.set_ylabel("loss(L-1 random blocks) - loss(full)")
    ax.set_title("stability gap vs depth (open markers: gap <= 0)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
