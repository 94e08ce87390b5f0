"""One analytic FLOPs model for every architecture and schedule (README: `raptr flops`).

Convention (nanoGPT / PaLM appendix B, Kaplan et al. 2020): 2 FLOPs per multiply-accumulate, and
training = 3x forward (backward computes grads w.r.t. activations and weights: 2x forward).
Counted: matmuls only. Embedding lookups (~0 FLOPs: a gather), LayerNorm, softmax, activations,
biases and residual adds are ignored: they are O(h) per token against O(h^2) for the matmuls, and
torch.utils.flop_counter.FlopCounterMode does not count them either, so the two agree.
Attention scores count the full n x n square (PaLM convention), also for causal masks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schedule import Plan


@dataclass(frozen=True)
class Dims:
    """Architecture-neutral sizes: enough to count FLOPs for BERT and UL2 alike."""

    hidden: int
    """Model width h."""
    ffn: int
    """Feed-forward inner width d_ff."""
    vocab: int
    """Output vocabulary V (the head's d x V decoder)."""
    n_layers: int
    """Full depth L (the baseline)."""
    seq_len: int
    """Sequence length n (attention cost grows with it)."""
    ffn_matrices: int = 2
    """h x d_ff matmuls per MLP: 2 for a GELU MLP (BERT), 3 for SwiGLU (UL2)."""
    head_transform: bool = True
    """BERT's MLM head has a d x d dense transform before the decoder."""


def layer_flops_per_token(d: Dims, heads_fraction: float = 1.0, mlp_fraction: float = 1.0) -> float:
    """Forward FLOPs of one block per token:
    8 h^2 (q, k, v, o projections: 4 h x h matmuls at 2 FLOPs/MAC)
    + 4 n h (scores QK^T and the weighted sum AV: 2 matmuls of n x h per token row)
    + 2 * ffn_matrices * h * d_ff (the MLP).
    A width subnetwork computes only its kept heads and units: with a = heads_fraction * h and
    f = mlp_fraction * d_ff, 8 h a + 4 n a + 2 * ffn_matrices * h * f (what runs, nothing masked)."""
    h = d.hidden
    a = h if heads_fraction == 1 else h * heads_fraction  # ints stay ints for the full block
    f = d.ffn if mlp_fraction == 1 else d.ffn * mlp_fraction
    return 8 * h * a + 4 * d.seq_len * a + 2 * d.ffn_matrices * h * f


def head_flops_per_token(d: Dims) -> float:
    """Forward FLOPs of the output head per *predicted* token: 2 h V (+ 2 h^2 for BERT's transform)."""
    return 2 * d.hidden * d.vocab + (2 * d.hidden * d.hidden if d.head_transform else 0)


def train_flops_per_token(d: Dims, active_layers: float, head_fraction: float) -> float:
    """Training FLOPs per input token: 3 * (active_layers * layer + head_fraction * head).

    head_fraction is the share of positions the head runs on: 1.0 for an LM, the masking rate
    (0.15) for an MLM head that only decodes masked positions. active_layers may be an
    expectation (random paths)."""
    return 3 * (active_layers * layer_flops_per_token(d) + head_fraction * head_flops_per_token(d))


def step_flops(
    d: Dims, n_active: int, n_tokens: int, n_head_tokens: int, heads_fraction: float = 1.0, mlp_fraction: float = 1.0
) -> float:
    """Training FLOPs of one optimizer step that ran `n_active` blocks (each at the stage's head and
    MLP fractions) over `n_tokens` tokens and the head over `n_head_tokens` positions (the exact
    masked count for MLM). For metrics.jsonl, and so for tflops_per_s and MFU: active FLOPs."""
    layer = layer_flops_per_token(d, heads_fraction, mlp_fraction)
    return 3 * (n_active * layer * n_tokens + head_flops_per_token(d) * n_head_tokens)


def plan_flops(plan: Plan, d: Dims, tokens_per_step: int, head_fraction: float) -> dict:
    """Per-stage and total training FLOPs of a plan against the full-model baseline (same tokens).

    Width stages count each active block at their head and MLP fractions (exact counts).
    Random methods use the *expected* active-layer count (rows say `"expected": true`); pld's
    expectation changes every step and is summed in closed form over numpy. Stacking stages use
    their depth. Returns {"flops_per_token_full", "stages": [{index, steps, tokens, path_length |
    depth, expected, flops, flops_layers}], "total_flops", "baseline_flops", "ratio", "speedup",
    "layers_only": {"total", "baseline", "ratio", "speedup"}}; ratio = total / baseline."""
    if d.n_layers != plan.n_layers:
        raise ValueError(f"Dims.n_layers = {d.n_layers} but the plan has {plan.n_layers} layers")
    layer, head = layer_flops_per_token(d), head_flops_per_token(d)
    size = plan.size_key
    rows = []
    for st in plan.stages:
        tokens = st.steps * tokens_per_step
        # sum over the stage's steps of (expected) active layers, times tokens per step
        layer_tokens = plan.expected_layer_steps(st) * tokens_per_step
        flops_layers = 3 * layer_flops_per_token(d, st.heads_fraction, st.mlp_fraction) * layer_tokens
        flops = flops_layers + 3 * head_fraction * head * tokens
        rows.append(
            {
                "index": st.index,
                "steps": st.steps,
                "tokens": tokens,
                size: getattr(st, size),
                "expected": plan.is_random(st),
                "flops": flops,
                "flops_layers": flops_layers,
            }
        )
    n_tokens = plan.total_steps * tokens_per_step
    total = sum(r["flops"] for r in rows)
    total_layers = sum(r["flops_layers"] for r in rows)
    baseline = n_tokens * train_flops_per_token(d, d.n_layers, head_fraction)
    baseline_layers = n_tokens * 3 * d.n_layers * layer
    return {
        "flops_per_token_full": train_flops_per_token(d, d.n_layers, head_fraction),
        "stages": rows,
        "total_flops": total,
        "baseline_flops": baseline,
        "ratio": total / baseline,
        "speedup": baseline / total,
        "layers_only": {
            "total": total_layers,
            "baseline": baseline_layers,
            "ratio": total_layers / baseline_layers,
            "speedup": baseline_layers / total_layers,
        },
    }
