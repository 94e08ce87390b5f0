"""The training loop: recipe + plan -> steps, evals, stage events, checkpoints, final model."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from .. import floor
from ..data.corpus import sha256_file
from ..errors import UserError
from ..flops import step_flops
from ..models import build_model, resolve_model_config
from ..models.common import grow_by_stacking
from ..models.registry import objective_for
from ..planning import effective_precision, fsdp_options, model_dims
from ..recipe import Recipe
from ..schedule import Plan, build_plan, method_class
from . import checkpoint as ckpt
from .data_setup import RunData, prepare_data
from .fingerprint import data_fingerprint
from .metrics import JsonlSink, MetricsLogger, Sink, TrackerSink
from .optim import build_optimizer, lr_factor, warmup_steps_of
from .persist import Persistence
from .prefetch import Prefetcher
from .sharding import fsdp_requested, shard_model
from .stage_stats import StageTracker
from .state import TrainState
from .step import evaluate, forward_backward, step_seed, sync_gradients, train_batch
from .stopping import StopSignals
from .throughput import Throughput, device_peak, peak_rss_mb
from .width import masked_update


def compile_blocks(model) -> None:
    """torch.compile block by block: the layer path is chosen in Python outside compiled code, so
    each block keeps one graph whatever path a step draws (compiling the whole model would trace the
    path into the graph and recompile for every new one). Idempotent for already compiled blocks."""
    for block in model.blocks:
        if not getattr(block, "_raptr_compiled", False):
            block.compile()
            block._raptr_compiled = True


class Interrupted(Exception):
    """Raised after a SIGINT/SIGTERM was honoured: the step finished and a checkpoint was saved."""


class TrainingDiverged(Exception):
    pass


class Trainer(Persistence):
    def __init__(self, recipe: Recipe, out: Path, accelerator, console: Sink | None = None, resume: bool = False):
        self.r, self.out, self.acc = recipe, out, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        t = recipe.train
        if t.batch_size % self.world:
            raise UserError(
                f"train.batch_size = {t.batch_size} is not divisible by the {self.world} processes",
                hint="Pick a batch size that splits evenly over the processes.",
            )
        self.precision = effective_precision(t.precision, self.device.type == "cuda")
        # FSDP when accelerate was launched with it (train/sharding.py); checked before any file is written
        self.sharded = self.world > 1 and fsdp_requested(accelerator)
        reshard = fsdp_options()["reshard_after_forward"] if self.sharded else True
        self.layout = {
            "processes": self.world,
            "rank": self.rank,
            "sharded": self.sharded,
            "reshard_after_forward": reshard,
        }
        if self.sharded and method_class(recipe.schedule.method).grows:
            raise UserError(
                f'schedule.method = "{recipe.schedule.method}" cannot run sharded (FSDP): growing the model '
                "copies blocks that are split across processes",
                hint=f"Launch {recipe.schedule.method} with --multi_gpu (replicated) instead of FSDP.",
            )
        self.resume_from = ckpt.pick_resume_checkpoint(out) if resume else None
        tok_file = out / "tokenizer.json" if resume and (out / "tokenizer.json").is_file() else None
        with accelerator.main_process_first():  # rank 0 fills the tokenizer/block caches, the others read them
            self.data: RunData = prepare_data(recipe, out if accelerator.is_main_process else None, tok_file)
        self.cfg = resolve_model_config(recipe, vocab_size=self.data.vocab_size)
        self.plan: Plan = build_plan(
            recipe.schedule,
            self.cfg.num_layers,
            t.steps,
            recipe.tokens_per_step,
            recipe.run.seed,
            (self.cfg.num_heads, self.cfg.intermediate_size),
        )
        if self.sharded and self.plan.narrow:
            raise UserError(
                "schedule.stages: heads_fraction / mlp_fraction cannot run sharded (FSDP): the masked "
                "update restores slices of whole parameters",
                hint="Launch with --multi_gpu instead.",
            )
        self.dims = model_dims(self.cfg, t.seq_len)
        sp = self.data.specials
        self.objective = objective_for(recipe, sp, self.data.vocab_size)
        self.floor = floor.for_run(out, self.data.train, self.data.tokenizer, sp)  # counted once per run
        self.warmup = warmup_steps_of(recipe.optim, t.steps)
        self.peak = device_peak(self.device, self.precision)
        self.state = TrainState(
            world_size=self.world,
            depth=self.plan.stages[0].depth,
            sharded=self.sharded,
            data_blocks=[len(self.data.train), len(self.data.eval)],
            data_fingerprint=data_fingerprint(self.data.train, self.data.eval),
            tokenizer_sha256=sha256_file(out / "tokenizer.json") if accelerator.is_main_process else None,
        )  # rank 0 writes
        self._build(self.state.depth)
        self.step = 0
        self.last_eval: dict | None = None
        self.stop = StopSignals(self.world, self.device)
        if self.resume_from is not None:  # before any sink: a refused resume must touch no file
            self._load(self.resume_from)
            if accelerator.is_main_process:
                ckpt.remove_stale_temporaries(out)  # a killed save's half-written directories
        sinks: list[Sink] = []
        if accelerator.is_main_process:
            start = self.step if self.resume_from is not None else None
            sinks.append(JsonlSink(out / "metrics.jsonl", truncate_after_step=start))
            if console is not None:
                sinks.append(console)
            if recipe.log.trackers:
                sinks.append(TrackerSink(accelerator))
        self.log = MetricsLogger(sinks)
        self.stages = StageTracker(self.state, self.log)

    # --- model / optimizer -------------------------------------------------------------------
    def _build(self, depth: int) -> None:
        torch.manual_seed(self.r.run.seed)  # identical init on every rank, no broadcast needed
        cfg = copy.deepcopy(self.cfg)
        cfg.num_layers = depth
        self.model = build_model(cfg).to(self.device)
        self.model.train()
        if self.sharded:
            shard_model(self.model, self.device, self.layout["reshard_after_forward"])
        if self.r.train.compile:
            compile_blocks(self.model)
        self.opt = build_optimizer(self.model, self.r.optim)

    def _grow(self, new_depth: int) -> None:
        """Stacking: append copies of the top layers; rebuild AdamW keeping existing state."""
        old_opt = self.opt
        pairs = grow_by_stacking(self.model, new_depth)
        self.model.to(self.device)
        if self.r.train.compile:
            for new_i, _ in pairs:  # deepcopy keeps the flag but not the compiled code
                self.model.blocks[new_i]._raptr_compiled = False
            compile_blocks(self.model)
        self.opt = build_optimizer(self.model, self.r.optim)
        for p, s in old_opt.state.items():
            self.opt.state[p] = s
        if self.r.schedule.stack_optimizer_state == "copy":
            blocks = self.model.blocks
            for new_i, src_i in pairs:
                for pn, ps in zip(blocks[new_i].parameters(), blocks[src_i].parameters()):
                    if ps in old_opt.state:
                        self.opt.state[pn] = {k: v.clone() for k, v in old_opt.state[ps].items()}
        self.state.depth = new_depth

    # --- the loop ------------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        o = self.r.optim
        f = lr_factor(step, self.r.train.steps, self.warmup, o.decay, o.min_lr_ratio)
        f *= self.plan.lr_factor(step)
        return o.lr * f

    def _apply(self, step: int, params: list, loss: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Clip, guard against a non-finite step, and take the AdamW step at this step's LR.

        The guard reads the global grad norm, identical on every rank after the all-reduce, so
        ranks always agree on skipping; it costs one host sync per step.
        """
        r = self.r
        if r.schedule.skipped_grad == "zero":
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        with_grad = [p for p in params if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            with_grad, r.optim.grad_clip if r.optim.grad_clip > 0 else float("inf")
        )
        lr = self._lr(step)
        # the loss is only this rank's share, so ranks > 1 decide on the (shared) grad norm alone
        if not (math.isfinite(float(grad_norm)) and (self.world > 1 or math.isfinite(float(loss)))):
            self.opt.zero_grad(set_to_none=True)
            last = ckpt.list_checkpoints(self.out)
            where = f"last good checkpoint: {last[-1] if last else 'none yet'}"
            skipped = self.state.skipped_steps or 0
            if r.train.nan_policy == "skip" and skipped < r.train.max_skipped_steps:
                self.state.skipped_steps = skipped + 1
                self.log.log(
                    {"event": "skipped_step", "step": step + 1, "loss": float(loss), "grad_norm": float(grad_norm)}
                )
                return grad_norm, lr
            raise TrainingDiverged(
                f"the loss or gradient became non-finite at step {step + 1} (loss {float(loss)}, grad norm "
                f"{float(grad_norm)}); {where}. Lower optim.lr, raise optim.warmup_steps, or set "
                f'train.nan_policy = "skip".'
            )
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return grad_norm, lr

    def _eval(self) -> dict:
        t = self.r.train
        # sharded: every rank runs every eval batch, so all ranks make the same collective calls
        rank, world = (0, 1) if self.sharded else (self.rank, self.world)
        res = evaluate(
            self.model,
            self.data.eval,
            t.batch_size,
            t.eval_batches,
            self.objective,
            self.r.run.seed,
            self.precision,
            rank,
            world,
            unigram=self.floor.log_probs(),
        )
        full = self.state.depth == self.cfg.num_layers
        row = {
            "step": self.step,
            **res,
            "eval_depth": self.state.depth,
            "eval_full_model": full,
            "flops": self.state.flops,
            "tokens": self.state.tokens,
        }
        self.log.log(row)
        self.last_eval = row
        return row

    def run(self) -> dict:
        """Train up to train.steps, then write the last checkpoint and final/; returns the last eval row."""
        if self.acc.is_main_process:  # for `raptr eval` (also --data): see floor.py
            self.floor.save(self.out)
        with self.stop:  # every rank listens: a launcher or scheduler may signal all or only some
            try:
                return self._run()
            finally:
                self.log.close()  # before the handlers go: a signal after that may end the process

    def _run(self) -> dict:
        r, t = self.r, self.r.train
        B, per_rank = t.batch_size, t.batch_size // self.world
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank

        def make_batch(step: int) -> tuple[dict, int]:  # runs in the prefetch thread on GPUs
            return train_batch(self.data.train, self.objective, B, r.run.seed, step, lo, hi)

        cuda = self.device.type == "cuda"  # a thread pays only when a GPU runs the step (prefetch.py)
        with Prefetcher(make_batch, self.step, t.steps, pin=cuda, background=cuda) as batches:
            if self.step == 0 and not self.state.stage_stats:  # (on a GPU the first batches are built meanwhile)
                self._eval()
            self._loop(batches, Throughput(self.state, self.peak, self.world))
        return self._finish()

    def _loop(self, batches: Prefetcher, meter: Throughput) -> None:
        """One optimizer step per turn: batch, subnetwork, forward/backward, sync, optimizer, log."""
        r, t = self.r, self.r.train
        tokens, micro = t.batch_size * t.seq_len, t.micro_batch_size or t.batch_size // self.world
        params = list(self.model.parameters())
        while self.step < t.steps:
            step = self.step
            meter.start_step()
            stage = self.plan.stage_at(step)
            if (depth := self.plan.growth(step, self.state.depth)) is not None:
                self._grow(depth)
                params = list(self.model.parameters())
            subnet = self.plan.subnet(step)
            layers = list(range(self.state.depth)) if subnet.layers is None else list(subnet.layers)
            run_layers = None if subnet.layers is None else layers
            scales = None if subnet.scales is None else list(subnet.scales)

            batch, n_global = batches.get(step)
            meter.batch_ready()
            torch.manual_seed(step_seed(r.run.seed, step, 1 + self.rank))  # dropout: pure function of step
            loss = forward_backward(
                self.model,
                batch,
                n_global,
                micro,
                run_layers,
                scales,
                self.precision,
                subnet if subnet.narrow else None,
            )
            if not self.sharded:  # FSDP reduce-scatters in backward
                sync_gradients(params)
            vote = self.stop.vote()  # before the optimizer step: see stopping.py
            with masked_update(self.opt, self.model, subnet):  # dropped heads/units: untouched (width.py)
                grad_norm, lr = self._apply(step, params, loss)
            self.step = step + 1
            meter.count(
                tokens, step_flops(self.dims, len(layers), tokens, n_global, stage.heads_fraction, stage.mlp_fraction)
            )
            self.stages.step_done(self._log_step(stage, len(layers), loss, lr, grad_norm, meter))
            meter.end_step()

            with meter.paused():  # throughput windows count training time only
                path, saved = self._between_steps(stage)
            # a signal during the last step does not stop it: the run finishes and writes final/
            if self.stop.stop(vote) and self.step < t.steps:
                if not saved:  # (a checkpoint_every step is saved already)
                    path = self._checkpoint()
                where = f"; checkpoint saved to {path}" if path is not None else ""
                raise Interrupted(f"interrupted at step {self.step}{where}")

    def _log_step(
        self, stage, path_length: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor, meter: Throughput
    ) -> float | None:
        """Log the step just taken when it is due (every log_every steps, and a stage's first and
        last step); returns its loss then, else None."""
        t, step = self.r.train, self.step - 1
        first, last = step == stage.start, self.step == stage.end
        if not (self.step % t.log_every == 0 or first or last or self.step == t.steps):
            return None
        loss_val = float(loss) if self.world == 1 else _mean_over_ranks(loss)
        st = self.state
        self.log.log(
            {
                "step": self.step,
                "stage": stage.index,
                "path_length": path_length,
                "depth": st.depth,
                "loss": loss_val,
                "lr": lr,
                "tokens": st.tokens,
                "flops": st.flops,
                **meter.rates(),
                "grad_norm": float(grad_norm),
            }
        )
        self.stages.logged(step, stage, loss_val, meter.at_step_start())
        return loss_val

    def _between_steps(self, stage) -> tuple[Path | None, bool]:
        """A stage's end (eval and summary), a periodic eval, a periodic checkpoint: (its path, saved)."""
        t = self.r.train
        if self.step == stage.end:
            self.stages.stage_end(self.step, stage, self.plan.method, self._eval())
        elif t.eval_every and self.step % t.eval_every == 0:
            self._eval()
        saved = bool(t.checkpoint_every) and self.step % t.checkpoint_every == 0 and self.step < t.steps
        return (self._checkpoint() if saved else None), saved

    def _finish(self) -> dict:
        ev = self.last_eval if self.last_eval and self.last_eval["step"] == self.step else self._eval()
        full = self._full()  # gathered once, for the last checkpoint and final/
        self._checkpoint(full)
        if self.acc.is_main_process:
            ckpt.save_final(self.out, full[0], self.r.model.arch)
            summary = {
                "event": "run_end",
                "step": self.step,
                "tokens": self.state.tokens,
                "peak_rss_mb": peak_rss_mb(),
                "flops": self.state.flops,
                "elapsed_s": round(self.state.elapsed_s, 3),
            }
            summary.update(eval_loss=ev["eval_loss"], **floor.floor_keys(ev))
            self.log.log(summary)
        return ev


def _mean_over_ranks(loss: torch.Tensor) -> float:
    import torch.distributed as dist

    t = loss.detach().clone()
    dist.all_reduce(t)  # each rank's share already sums to the global mean
    return float(t)
