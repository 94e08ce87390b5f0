"""raptr's models against transformers' on the same configuration: training-step tokens/s.

One training step = forward + backward + AdamW step, fp32 on CPU, same config, dropout, batch and
sequence length. BERT: raptr BertForMaskedLM (MLM head on masked positions only) vs
transformers.BertForMaskedLM (head on every position, the library's behaviour). UL2: raptr's
decoder on a UL2 batch vs transformers.LlamaForCausalLM of the same shape on the same tokens.
Configurations are interleaved round-robin after warm-up and medians reported, so machine
noise hits both sides equally. Targets (issue): BERT >= 1.5x, UL2 >= 1.0x.

    python bench/vs_hf.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _bert_pair(vocab: int, layers: int, hidden: int, heads: int, ffn: int, seq: int):
    import transformers

    from raptr_cli.models.bert.config import BertConfig
    from raptr_cli.models.bert.model import BertForMaskedLM

    ours = BertForMaskedLM(
        BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=max(512, seq),
        )
    )
    hf = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=max(512, seq),
            attn_implementation="sdpa",
        )
    )
    hf.load_state_dict(ours.state_dict(), strict=False)
    return ours, hf


def _mlm_batch(vocab: int, batch: int, seq: int, seed: int = 0):
    from raptr_cli.objectives.mlm import mask_tokens

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    return mask_tokens(
        ids, seed=seed, step=0, mlm_probability=0.15, mask_id=4, vocab_size=vocab, special_ids=[0, 1, 2, 3, 4]
    )


def _ul2_pair(vocab: int, layers: int, hidden: int, heads: int, ffn: int, seq: int):
    import transformers

    from raptr_cli.models.ul2.config import DecoderConfig
    from raptr_cli.models.ul2.model import DecoderForPrefixLM

    cfg = DecoderConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max(512, seq),
    )
    ours = DecoderForPrefixLM(cfg)
    hf_cfg = transformers.LlamaConfig(
        **{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    )
    hf_cfg._attn_implementation = "sdpa"
    hf = transformers.LlamaForCausalLM(hf_cfg)
    return ours, hf


def _ul2_batch(vocab: int, batch: int, seq: int):
    from raptr_cli.objectives.ul2 import UL2Config, make_batch

    specials = {
        "pad": 0,
        "bos": 1,
        "eos": 2,
        "unk": 3,
        "[NLU]": 4,
        "[NLG]": 5,
        "[S2S]": 6,
        "sentinels": list(range(7, 107)),
    }
    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(107, vocab, (seq,), generator=g).tolist() for _ in range(batch)]
    return make_batch(examples, seq, 0, 0, UL2Config(), specials)


def _timer(model, step_fn, reps: int, ours: bool) -> list[float]:
    """A training step as each side's users run it: raptr's own optimizer (fused AdamW, no decay on
    norms/biases) against torch's default AdamW for the transformers model."""
    from raptr_cli.recipe import OptimConfig
    from raptr_cli.train.optim import build_optimizer

    opt = build_optimizer(model, OptimConfig(lr=1e-4)) if ours else torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def one() -> float:
        t0 = time.perf_counter()
        loss = step_fn(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return one


def measure(pairs: dict, reps: int, warmup: int = 2) -> dict[str, float]:
    """pairs: name -> (model, step_fn). Round-robin after warm-up; median seconds per step."""
    steps = {name: _timer(m, fn, reps, ours=name == "raptr") for name, (m, fn) in pairs.items()}
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(reps):
        for n, f in steps.items():
            times[n].append(f())
    return {n: statistics.median(t) for n, t in times.items()}


def rows(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    reps = 5 if quick else 12
    B, T = 16, 128
    rows = []
    # BERT-mini width with BERT's own vocabulary (BertForMaskedLM's default configuration otherwise)
    ours, hf = _bert_pair(vocab=30522, layers=4, hidden=256, heads=4, ffn=1024, seq=T)
    x, y = _mlm_batch(30522, B, T)
    med = measure(
        {"raptr": (ours, lambda m: m(x, labels=y).loss), "hf": (hf, lambda m: m(input_ids=x, labels=y).loss)}, reps
    )
    rows.append(
        {
            "name": "BERT step tokens/s, raptr / transformers (4x256, vocab 30522, B16 T128, fp32 CPU)",
            "measured": med["hf"] / med["raptr"],
            "target": 1.5,
            "raptr_tokens_per_s": B * T / med["raptr"],
            "hf_tokens_per_s": B * T / med["hf"],
        }
    )
    ours, hf = _ul2_pair(vocab=8192, layers=4, hidden=256, heads=4, ffn=704, seq=T)
    batch = _ul2_batch(8192, B, T)
    causal_labels = batch["input_ids"].clone()  # HF shifts internally: same tokens, every position
    med = measure(
        {
            "raptr": (
                ours,
                lambda m: m(batch["input_ids"], labels=batch["labels"], prefix_len=batch["prefix_len"]).loss,
            ),
            "hf": (hf, lambda m: m(input_ids=batch["input_ids"], labels=causal_labels).loss),
        },
        reps,
    )
    rows.append(
        {
            "name": "UL2 step tokens/s, raptr / LlamaForCausalLM (4x256, vocab 8192, B16 T128, fp32 CPU)",
            "measured": med["hf"] / med["raptr"],
            "target": 1.0,
            "raptr_tokens_per_s": B * T / med["raptr"],
            "hf_tokens_per_s": B * T / med["hf"],
        }
    )
    return rows


def run(quick: bool = False, log=print) -> dict:
    """The bench/run.py protocol (bench/checks.py)."""
    from checks import as_checks

    return as_checks(rows(quick), lambda r: r["measured"] >= r["target"])


def print_report(res: dict) -> None:
    from checks import print_checks

    print_checks(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows_ = rows(a.quick)
    if a.json:
        print(json.dumps(rows_, indent=2))
        return
    for r in rows_:
        ok = "PASS" if r["measured"] >= r["target"] else "MISS"
        print(
            f"{r['name']}: {r['measured']:.2f}x (target >= {r['target']}x) {ok}  "
            f"[{r['raptr_tokens_per_s']:,.0f} vs {r['hf_tokens_per_s']:,.0f} tok/s]"
        )


if __name__ == "__main__":
    main()
