"""UL2 building blocks: the prefix-LM decoder, the mixture of denoisers, the byte-level BPE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raptr_cli.errors import UserError
from raptr_cli.models.ul2.config import UL2_PRESETS, DecoderConfig
from raptr_cli.models.ul2.model import DecoderForPrefixLM, prefix_lm_mask
from raptr_cli.objectives.ul2 import (
    DenoiserConfig,
    UL2Config,
    corrupt,
    default_denoisers,
    make_batch,
    restore,
)
from raptr_cli.objectives.ul2_tokenizer import train_bpe, ul2_special_ids

SENTINELS = list(range(1000, 1100))  # stand-in ids, disjoint from the "text" ids below
SENTINEL_SET = set(SENTINELS)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box OpenMP's
    spin-waiting makes a 0.1 s step take seconds; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**kw) -> DecoderConfig:
    base = dict(
        vocab_size=97, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64, max_position_embeddings=64
    )
    return DecoderConfig(**{**base, **kw})


def model(seed: int = 0, **kw) -> DecoderForPrefixLM:
    torch.manual_seed(seed)
    return DecoderForPrefixLM(tiny(**kw)).eval()


# ---------------------------------------------------------------- config, presets, parity
def test_presets_golden_parameter_counts_on_meta() -> None:
    with torch.device("meta"):
        m = DecoderForPrefixLM(DecoderConfig.from_preset("1b6"))
    assert sum(p.numel() for p in m.parameters()) == 1_364_822_016
    assert sum(p.numel() for p in m.blocks.parameters()) == 1_233_223_680  # 24*(4d^2+3d*ff+2d)
    assert set(UL2_PRESETS) >= {"tiny", "small", "1b6"}
    t = DecoderConfig.from_preset("tiny", vocab_size=1000)
    assert (t.num_layers, t.hidden_size, t.num_heads, t.intermediate_size) == (2, 128, 4, 352)
    tied = DecoderForPrefixLM(DecoderConfig.from_preset("tiny", vocab_size=1000, tie_embeddings=True))
    untied = DecoderForPrefixLM(t)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(tied) == 1000 * 128
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


def test_parameter_names_follow_llama() -> None:
    names = set(model().state_dict())
    for want in (
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.3.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ):
        assert want in names
    assert not any(n.endswith(".bias") for n in names)


def test_config_validation_lists_every_problem() -> None:
    with pytest.raises(UserError) as e:
        DecoderConfig(hidden_size=30, num_heads=4, dropout=1.5, pad_token_id=-1)
    assert len(e.value.problems) == 3
    with pytest.raises(UserError, match="even"):
        DecoderConfig(hidden_size=36, num_heads=4)  # head size 9
    with pytest.raises(UserError, match="unknown UL2 preset"):
        DecoderConfig.from_preset("huge")


def test_causal_parity_with_transformers_llama() -> None:
    transformers = pytest.importorskip("transformers")
    ours = model(seed=1, rope_theta=500.0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ours.config.to_hf_dict()))
    hf.load_state_dict(ours.state_dict(), strict=True)
    hf.eval()
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        got = ours(ids).logits  # prefix_len=None: plain causal LM
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- attention, hook, head
def test_prefix_lm_mask_golden() -> None:
    m = prefix_lm_mask(torch.tensor([2, 0]), 4)
    assert m.shape == (2, 1, 4, 4)
    assert m[0, 0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert m[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_no_attention_leak_from_targets_and_inputs_are_bidirectional() -> None:
    m = model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 97, (2, 12), generator=g)
    plen = torch.tensor([5, 7])
    with torch.no_grad():
        base = m(ids, prefix_len=plen).logits  # (B, T, V)
        for b, t0 in ((0, 8), (1, 7)):  # a target token (position >= prefix_len)
            ids2 = ids.clone()
            ids2[b, t0] = ids[b, t0] % 96 + 1
            out = m(ids2, prefix_len=plen).logits
            torch.testing.assert_close(out[b, :t0], base[b, :t0], rtol=0, atol=1e-6)
            assert (out[b, t0:] - base[b, t0:]).abs().amax() > 1e-4
            torch.testing.assert_close(out[1 - b], base[1 - b], rtol=0, atol=1e-6)
        # An input token (position 3 < prefix_len 5) reaches an earlier prefix position
        # (bidirectional) and a later target position.
        ids3 = ids.clone()
        ids3[0, 3] = ids[0, 3] % 96 + 1
        out = m(ids3, prefix_len=plen).logits
        assert (out[0, 1] - base[0, 1]).abs().amax() > 1e-4
        assert (out[0, 9] - base[0, 9]).abs().amax() > 1e-4
        # prefix_len 0 everywhere is the plain causal LM
        torch.testing.assert_close(
            m(ids, prefix_len=torch.zeros(2, dtype=torch.long)).logits, m(ids).logits, rtol=1e-5, atol=1e-6
        )


def test_skipped_layers_never_execute_and_get_no_grad() -> None:
    m = model().train()
    calls = [0] * 4
    for i, blk in enumerate(m.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    ids = torch.randint(1, 97, (2, 10))
    labels = torch.where(torch.arange(10) >= 4, ids, torch.full_like(ids, -100))
    out = m(ids, labels, torch.tensor([4, 4]), layers=[-1, 0])
    out.loss.backward()
    assert calls == [1, 0, 0, 1]
    for i in (1, 2):
        assert all(p.grad is None for p in m.blocks[i].parameters())
    for i in (0, 3):
        assert all(p.grad is not None for p in m.blocks[i].parameters())
    with pytest.raises(UserError):
        m(ids, layers=[0, 0])


def test_skipping_is_identity_and_scales_scale_the_update() -> None:
    m = model()
    ids = torch.randint(1, 97, (2, 9))
    plen = torch.tensor([3, 5])
    with torch.no_grad():
        got = m(ids, prefix_len=plen, layers=[2, 0], scales=[0.5, 1.0]).logits
        x = m.model.embed_tokens(ids)
        from raptr_cli.models.ul2.model import rotary_cos_sin

        cos, sin = rotary_cos_sin(9, 8, m.config.rope_theta, x.device, x.dtype)
        mask = prefix_lm_mask(plen, 9)
        x = m.blocks[0](x, cos, sin, mask)
        # PLD's published pre-norm scaling: each residual branch times s (Zhang & He 2020)
        b = m.blocks[2]
        whole = x + 0.5 * (b(x, cos, sin, mask) - x)
        x = x + 0.5 * b.self_attn(b.input_layernorm(x), cos, sin, mask)
        x = x + 0.5 * b.mlp(b.post_attention_layernorm(x))
        want = m.lm_head(m.model.norm(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, m.lm_head(m.model.norm(whole)))


def test_head_only_on_labelled_positions() -> None:
    m = model()
    seen = []
    m.lm_head.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    ids = torch.randint(1, 97, (2, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 4:7] = ids[0, 5:8]
    labels[1, 2] = 5
    with torch.no_grad():
        out = m(ids, labels, torch.tensor([5, 3]))
        full = m(ids, prefix_len=torch.tensor([5, 3])).logits
    assert seen[0] == 4 and out.n_predictions == 4 and out.logits.shape == (4, 97)
    sel = labels != -100
    want = torch.nn.functional.cross_entropy(full[sel], labels[sel])
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- denoisers
def test_span_denoisers_hit_rate_and_mean_span() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(200, 501, size=10_000)
    text = list(range(2000, 2600))
    for d in default_denoisers():
        if d.kind != "span":
            continue
        tokens = noise = spans = 0
        single_span = True
        for L in lengths:
            inp, tgt = corrupt(text[:L], d, rng, SENTINELS, paradigm_id=7)
            # len(inp) = 1 + (L - noise) + spans and len(tgt) = noise + spans (the layout
            # itself is pinned by test_corrupt_layout_and_round_trip); O(1) per example.
            n_noise = (L + 1 + len(tgt) - len(inp)) // 2
            n_spans = len(tgt) - n_noise
            tokens, noise, spans = tokens + L, noise + n_noise, spans + n_spans
            single_span &= n_spans == 1 and n_noise == round(L * d.rate)
        assert abs(noise / tokens - d.rate) < 0.01, d.name
        if d.name == "X-64-r15":
            # 200..500 tokens at 15% is 30..75 noise tokens: T5's rounding gives exactly one
            # span per example, so the mean span is capped by L*r (documented in ul2.py).
            assert single_span
            continue
        assert abs(noise / spans / d.mean_span - 1) < 0.10, d.name
    # ... and on texts long enough for it (L*r >= mu), mu=64 at 15% holds too.
    d = next(d for d in default_denoisers() if d.name == "X-64-r15")
    noise = spans = 0
    for L in rng.integers(430, 1500, size=2000):
        _, tgt = corrupt(list(range(2000, 2000 + L)), d, rng, SENTINELS)
        n_spans = sum(t in SENTINEL_SET for t in tgt)  # cross-check of the O(1) count above
        noise, spans = noise + len(tgt) - n_spans, spans + n_spans
    assert abs(noise / spans / 64 - 1) < 0.10


def test_corrupt_layout_and_round_trip() -> None:
    rng = np.random.default_rng(1)
    # T5 format on a golden-size case: 10 tokens at 0.3 -> 3 noise tokens in 1 span (mu=3).
    d = DenoiserConfig("t", "span", 3.0, 0.3, "[NLU]")
    inp, tgt = corrupt(list(range(10, 20)), d, rng, SENTINELS, paradigm_id=7)
    assert inp[0] == 7 and inp.count(SENTINELS[0]) == 1 and tgt[0] == SENTINELS[0]
    assert len(tgt) == 4 and len(inp) == 1 + 7 + 1
    for d in default_denoisers():
        for seed in range(20):
            text = rng.integers(2000, 3000, size=int(rng.integers(2, 400))).tolist()
            gen = np.random.default_rng(seed) if seed % 2 else torch.Generator().manual_seed(seed)
            inp, tgt = corrupt(text, d, gen, SENTINELS, paradigm_id=7)
            assert inp[0] == 7
            if d.kind == "prefix":
                assert inp[1:] + tgt == text and tgt and len(inp) > 1
                continue
            in_s = [t for t in inp if t in SENTINELS]
            tg_s = [t for t in tgt if t in SENTINELS]
            assert in_s == tg_s == SENTINELS[: len(in_s)]  # numbered 0, 1, ... in order
            assert tgt[0] == SENTINELS[0] and tgt[-1] not in SENTINELS  # no empty span
            assert restore(inp, tgt, SENTINELS) == text
    assert corrupt([5], default_denoisers()[0], rng, SENTINELS, paradigm_id=7) == ([7, 5], [])


def test_prefix_denoiser_target_fraction() -> None:
    rng = np.random.default_rng(2)
    d = next(d for d in default_denoisers() if d.kind == "prefix")
    fr = [len(corrupt(list(range(300)), d, rng, SENTINELS)[1]) / 300 for _ in range(3000)]
    assert abs(np.mean(fr) - 0.25) < 0.01 and max(fr) <= 0.5


def test_ul2_config_validation_and_dicts() -> None:
    cfg = UL2Config(
        denoisers=[{"name": "R", "kind": "span", "mean_span": 3, "rate": 0.15, "paradigm": "[NLU]", "weight": 2}]
    )
    assert isinstance(cfg.denoisers[0], DenoiserConfig)
    assert len(UL2Config().denoisers) == 7 and np.allclose(UL2Config().probabilities(), 1 / 7)
    with pytest.raises(UserError) as e:
        UL2Config(denoisers=[DenoiserConfig("a", "mask", 3, 1.5, "[NLU]", -1)])
    assert len(e.value.problems) == 4 and "denoisers[0].kind" in e.value.problems[0]


SPECIALS = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "[NLU]": 4, "[NLG]": 5, "[S2S]": 6, "sentinels": SENTINELS}


def test_make_batch_layout_truncation_and_purity() -> None:
    rng = np.random.default_rng(4)
    examples = [rng.integers(2000, 3000, size=n).tolist() for n in (3, 50, 120, 700, 1, 64)]
    cfg = UL2Config()
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    batch = make_batch(examples, 96, seed=7, step=3, cfg=cfg, specials=SPECIALS)
    assert (np.random.get_state()[1] == np_state).all()  # global RNGs untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    again = make_batch(examples, 96, seed=7, step=3, cfg=cfg, specials=SPECIALS)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    other = make_batch(examples, 96, seed=7, step=4, cfg=cfg, specials=SPECIALS)
    assert not all(torch.equal(batch[k], other[k]) for k in batch)
    ids, lab, plen = batch["input_ids"], batch["labels"], batch["prefix_len"]
    assert ids.shape == lab.shape == (6, 96) and ids.dtype == lab.dtype == torch.long
    for b, ex in enumerate(examples):
        d = cfg.denoisers[int(batch["denoiser"][b])]
        p = int(plen[b])
        n = int((ids[b] != 0).sum())  # real tokens (text ids and specials are never 0)
        assert ids[b, 0] == SPECIALS[d.paradigm] and (ids[b, n:] == 0).all()
        if len(ex) < 2:  # nothing to predict
            assert (lab[b] == -100).all() and n == p == 1 + len(ex)
            continue
        assert (lab[b, : p - 1] == -100).all() and (lab[b, n:] == -100).all()
        assert torch.equal(lab[b, p - 1 : n - 1], ids[b, p:n])  # shifted by one
        assert lab[b, n - 1] == SPECIALS["eos"]
        seq = ids[b, :n].tolist()
        window = seq[1:] if d.kind == "prefix" else restore(seq[:p], seq[p:], SENTINELS)
        assert len(window) == min(len(ex), len(window)) and len(window) >= min(len(ex), 40)
        assert any(ex[s : s + len(window)] == window for s in range(len(ex) - len(window) + 1))
    # The mixture is sampled with equal weights.
    counts = torch.bincount(make_batch([[5] * 10] * 7000, 16, 0, 0, cfg, SPECIALS)["denoiser"])
    assert counts.min() > 850 and counts.max() < 1150
    with pytest.raises(UserError, match="lacks"):
        make_batch(examples, 96, 0, 0, cfg, {"pad": 0, "eos": 2, "sentinels": SENTINELS})


# ---------------------------------------------------------------- tokenizer and training
def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "my friend", "the old king", "Zoë", "the robot"]
    verb = ["sees", "likes", "follows", "paints", "builds", "forgets"]
    obj = ["the moon", "a red ball", "seven apples", "the river", "a song", "the café"]
    return [
        " ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}." for _ in range(int(rng.integers(20, 60))))
        for _ in range(n)
    ]


def test_byte_level_bpe_round_trip_and_specials() -> None:
    tok = train_bpe(_corpus(50), vocab_size=600, n_sentinels=8)
    ids = ul2_special_ids(tok)
    assert [ids[k] for k in ("pad", "bos", "eos", "unk", "[NLU]", "[NLG]", "[S2S]")] == list(range(7))
    assert ids["sentinels"] == list(range(7, 15))
    for text in [
        "the cat sees the moon.",
        "  leading and trailing  ",
        "tabs\tand\nnew lines\r\n",
        "unseen: 日本語, emoji 🦜, accents déjà vu, symbols ∑≠∞",
        "",
    ]:
        assert tok.decode(tok.encode(text).ids) == text
    with pytest.raises(UserError, match="too small"):
        train_bpe(["abc"], vocab_size=300)
    from tokenizers import Tokenizer, models

    with pytest.raises(UserError) as e:
        ul2_special_ids(Tokenizer(models.BPE()))
    assert len(e.value.problems) == 8


@pytest.mark.parametrize("raptr", [False, True])
def test_tiny_preset_learns_through_make_batch(raptr: bool) -> None:
    docs = _corpus(120, seed=1)
    tok = train_bpe(docs, vocab_size=400, n_sentinels=32)
    specials = ul2_special_ids(tok)
    examples = [e.ids for e in tok.encode_batch(docs)]
    cfg = DecoderConfig.from_preset("tiny", vocab_size=tok.get_vocab_size(), num_layers=4 if raptr else 2)
    torch.manual_seed(0)
    m = DecoderForPrefixLM(cfg).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
    ul2, losses = UL2Config(), []
    for step in range(30):
        rows = np.random.default_rng([0, step]).choice(len(examples), 8, replace=False)
        batch = make_batch([examples[i] for i in rows], 96, seed=0, step=step, cfg=ul2, specials=specials)
        layers = None
        if raptr:  # fixed {0, 3} plus one random middle block, a pure function of (seed, step)
            layers = [0, 3, int(np.random.default_rng([1, step]).integers(1, 3))]
        out = m(batch["input_ids"], batch["labels"], batch["prefix_len"], layers=layers)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(cfg.vocab_size)) < 0.5  # starts near uniform
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    with torch.no_grad():  # the full model (eval, every block) has learned too
        m.eval()
        full = m(batch["input_ids"], batch["labels"], batch["prefix_len"]).loss.item()
    assert full < 0.8 * losses[0]
