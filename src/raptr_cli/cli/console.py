"""The console sink: rich live progress while training, a table at every stage end, a summary.

Implements the metrics `Sink` protocol (log/close), so the trainer knows nothing about rich.
Modes: "rich" (tables, live bar), "plain" (one line per row, for logs and CI), "none".
"""

from __future__ import annotations

import sys

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..floor import AT_FLOOR_POSITIONS
from ..schedule import size_key


def si(x: float | None, unit: str = "") -> str:
    """3.2e15 -> '3.20 P' (FLOPs, tokens)."""
    if x is None:
        return "-"
    for div, p in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {p}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def f4(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _layout(mem: dict) -> str:
    """What the memory figure assumes: the precision and, under a launch, how it splits."""
    n = mem.get("processes", 1)
    split = "" if n == 1 else f", per process of {n}, {'sharded' if mem.get('sharded') else 'replicated'}"
    return f" ({mem.get('precision', 'fp32')}{split})"


def _floor_text(row: dict) -> str:
    """'  floor 6.6590 (0.1234 below)': the context-free floor of an eval (floor.py), if it has one."""
    if row.get("unigram_loss") is None:
        return ""
    below = row["loss_below_unigram"]
    # UL2: the floor is scored at the text targets only, where the model's own loss differs from eval_loss
    there = "" if row.get(AT_FLOOR_POSITIONS) is None else f"; model {f4(row[AT_FLOOR_POSITIONS])} at its positions"
    return f"  floor {f4(row['unigram_loss'])} ({f4(abs(below))} {'below' if below >= 0 else 'above'}{there})"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"  # short: the stage table is wide already


class Console:
    def __init__(self, mode: str = "rich"):
        self.mode = mode
        self.out = RichConsole(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 120)
        self.err = RichConsole(stderr=True, highlight=False, soft_wrap=True)  # paths must not break
        self.progress: Progress | None = None
        self.task = None
        self.total_steps = 0
        self.stage_rows: list[dict] = []
        self.skipped = 0  # skipped_step events seen

    # --- messages ------------------------------------------------------------------------------
    def warn(self, msg: str) -> None:
        if self.mode != "none":
            self.err.print(f"[yellow]warning:[/] {escape(msg)}")

    def error(self, msg: str) -> None:
        self.err.print(f"[bold red]error:[/] {escape(msg)}")

    def note(self, msg: str) -> None:
        if self.mode != "none":
            self.out.print(escape(msg))

    # --- the plan ------------------------------------------------------------------------------
    def show_plan(self, p: dict, dry_run: bool = False, resumed_at: int | None = None) -> None:
        if self.mode == "none":
            return
        self.total_steps = p["steps"]
        m = p["model"]
        title = f"{p['run']}: {p['method']} on {p['arch']} {m['n_layers']}x{m['hidden_size']}"
        if dry_run:
            title += " (dry run)"
        if resumed_at is not None:
            title += f", resumed at step {resumed_at}"
        size = size_key(p["method"])
        narrow = any("heads_fraction" in s for s in p["stages"])  # width stages: show both axes
        table = Table(title=title, title_justify="left")
        width_cols = ("heads", "mlp units") if narrow else ()
        for col in ("stage", "steps", "tokens", size, "keep p", *width_cols, "FLOPs", "share"):
            table.add_column(col, justify="right")
        for s in p["stages"]:
            k = s[size]
            ks = f"{k:.2f}" if isinstance(k, float) and not float(k).is_integer() else f"{int(k)}"
            if s.get("expected"):
                ks += " (exp.)"
            width = (
                (_part(s["heads_fraction"], m["num_heads"]), _part(s["mlp_fraction"], m["intermediate_size"]))
                if narrow
                else ()
            )
            table.add_row(
                str(s["index"]),
                f"{s['start']}-{s['end']}",
                si(s["tokens"]),
                ks,
                f"{s['keep_prob']:.3f}",
                *width,
                si(s["flops"]),
                f"{100 * s['share']:.1f}%",
            )
        self.out.print(table)
        mem = p["memory"]
        self.out.print(
            f"params {si(p['params'])} ({si(p['params_non_embedding'])} non-embedding) | "
            f"{p['steps']} steps x {p['batch_size']} x {p['seq_len']} = {si(p['tokens'])} tokens | "
            f"FLOPs {si(p['total_flops'])} = {p['ratio']:.3f}x baseline "
            f"(speedup {p['speedup']:.3f}x whole model, {p['layers_only']['speedup']:.3f}x layers only) | "
            f"memory ~{mem['total_gib']:.2f} GiB{_layout(mem)}"
        )
        for note in p.get("schedule_notes", []):
            self.out.print(note)

    # --- the Sink protocol ---------------------------------------------------------------------
    def log(self, row: dict) -> None:
        if self.mode == "none":
            return
        ev = row.get("event")
        if ev == "stage_end":
            self._stage_table(row)
        elif ev == "transition":
            self._print(
                f"stage {row['from_stage']} -> {row['to_stage']}: loss {f4(row['loss_before'])} "
                f"(last step before) -> {f4(row['loss_after'])} (first step after)"
            )
        elif ev == "run_end":
            self._stop()
            self._summary(row)
        elif ev == "checkpoint":
            self._print(f"[dim]checkpoint {row['path']}[/]")
        elif ev == "skipped_step":
            self.skipped += 1
            self._print(
                f"[yellow]step {row['step']}: non-finite loss {row['loss']} (grad norm {row['grad_norm']}), "
                f'batch skipped[/] (train.nan_policy = "skip"; {self.skipped} skipped so far)'
            )
        elif ev is not None:
            return  # an event this console does not show; never mistake one for a training row
        elif "eval_loss" in row:
            depth = "" if row.get("eval_full_model", True) else f" (at current depth {row['eval_depth']}, not full)"
            self._print(
                f"step {row['step']:>6}  eval loss {f4(row['eval_loss'])}  "
                f"acc {row['eval_accuracy']:.3f}{_floor_text(row)}{depth}"
            )
        elif "loss" in row:
            self._train_row(row)

    def close(self) -> None:
        self._stop()

    # --- internals -----------------------------------------------------------------------------
    def _print(self, msg: str) -> None:
        (self.progress.console if self.progress else self.out).print(msg)

    def _train_row(self, row: dict) -> None:
        text = (
            f"stage {row['stage']} | path {row['path_length']} | loss {row['loss']:.4f} | "
            f"lr {row['lr']:.2e} | {row['tokens_per_s']:,.0f} tok/s | {row['tflops_per_s']:.2f} TFLOP/s"
            + (f" | MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
            + f" | {si(row['flops'])}FLOPs"
        )
        if self.mode == "plain" or not sys.stdout.isatty():
            self.out.print(f"step {row['step']:>6}/{self.total_steps}  {text}")
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.out,
            )
            self.progress.start()
            self.task = self.progress.add_task(text, total=self.total_steps or None)
        self.progress.update(self.task, completed=row["step"], description=text)

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _stage_table(self, row: dict) -> None:
        self.stage_rows.append(row)
        self._print(self._table([row], f"stage {row['stage']} done"))

    def _table(self, rows: list[dict], title: str) -> Table:
        size = "depth" if size_key(rows[0].get("method")) == "depth" else "path"
        t = Table(title=title, title_justify="left")
        cols = (
            "stage",
            size,
            "steps",
            "tokens",
            "cum. FLOPs",
            "loss start",
            "loss end",
            "switch loss",
            "eval loss",
            "below floor",
            "tok/s",
            "TFLOP/s",
            "data %",
            "wall s",
        )
        for c in cols:
            t.add_column(c, justify="right")
        for r in rows:
            k = r["depth"] if size == "depth" else r["path_length"]
            ks = f"{k:.2f}" if isinstance(k, float) and not float(k).is_integer() else str(int(k))
            sw = (
                "-"
                if r.get("loss_after_transition") is None
                else f"{f4(r['loss_before_transition'])}->{f4(r['loss_after_transition'])}"
            )
            ev = f4(r["eval_loss"]) + ("" if r.get("eval_full_model", True) else " (depth)")
            t.add_row(
                str(r["stage"]),
                ks,
                str(r["steps"]),
                si(r["tokens"]),
                si(r["flops"]),
                f4(r["loss_start"]),
                f4(r["loss_end"]),
                sw,
                ev,
                _signed(r.get("loss_below_unigram")),
                f"{r['tokens_per_s']:,.0f}",
                f"{r.get('tflops_per_s', 0):.3f}",
                f"{100 * r.get('data_share', 0):.1f}",
                f"{r['wall_s']:.1f}",
            )
        return t

    def _summary(self, row: dict) -> None:
        if len(self.stage_rows) > 1:
            self.out.print(self._table(self.stage_rows, "all stages"))
        self.out.print(
            f"done: {row['step']} steps, {si(row['tokens'])} tokens, {si(row['flops'])}FLOPs, "
            f"{row['elapsed_s']:.1f} s, final eval loss {f4(row.get('eval_loss'))}"
            f"{_floor_text(row)}, peak RSS {row.get('peak_rss_mb', 0):.0f} MB"
        )
        from ..floor import floor_warning

        if (w := floor_warning(row)) is not None:
            self.warn(w)


def _part(fraction: float, n: int) -> str:
    """A width stage's cell: kept of all, and the fraction ("2/4 (0.50)")."""
    return f"{int(round(fraction * n))}/{n} ({fraction:.2f})"
