"""BERT masked-LM model: HF parity, layer skipping, scaling, masked-only head, stacking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raptr_cli.errors import UserError
from raptr_cli.models.bert.config import BERT_PRESETS
from raptr_cli.models.bert.model import (
    BertConfig,
    BertForMaskedLM,
    MLMOutput,
    num_parameters,
)
from raptr_cli.models.common import check_layers, grow_by_stacking

V, T, B = 97, 12, 3


def tiny(**kw: object) -> BertConfig:
    base = dict(
        vocab_size=V, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64, max_position_embeddings=16
    )
    return BertConfig(**{**base, **kw})


def make(seed: int = 0, **kw: object) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(tiny(**kw)).eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0  # padded tails of different lengths
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    labels = torch.full((B, T), -100)
    labels[0, [1, 4]] = ids[0, [1, 4]]
    labels[1, 2] = ids[1, 2]
    labels[2, [0, 3]] = ids[2, [0, 3]]
    return ids, mask, labels


# ---------------------------------------------------------------- parameter counts


def test_golden_parameter_counts() -> None:
    with torch.device("meta"):  # no 110M allocation
        base = BertForMaskedLM(BertConfig.from_preset("base", vocab_size=30522))
    # transformers 5.x: BertForMaskedLM(BertConfig()).num_parameters() == 109_514_298 and
    # num_parameters(exclude_embeddings=True) == 85_678_650 (tied decoder counted once).
    assert num_parameters(base) == 109_514_298
    assert num_parameters(base, exclude_embeddings=True) == 85_678_650
    # Tiny: emb V*d + 16*d + 2*d + LN 2d; per layer 4(d^2+d) + 2d*ff + ff + d + 2*2d;
    # head d^2 + d + 2d + V (bias). d=32, ff=64, V=97, L=4:
    # 3104+512+64+64 + 4*(4224+4096+64+32+128) + 1056+64+97 = 39_137
    assert num_parameters(make()) == 39_137
    assert num_parameters(make(), exclude_embeddings=True) == 39_137 - (97 + 16 + 2) * 32


def test_presets_and_config_validation() -> None:
    assert BERT_PRESETS["base"]["num_layers"] == 12 and BERT_PRESETS["large"]["num_heads"] == 16
    assert BertConfig.from_preset("tiny").hidden_size == 128
    with pytest.raises(UserError, match="unknown BERT preset"):
        BertConfig.from_preset("huge")
    with pytest.raises(UserError) as e:
        BertConfig(hidden_size=30, num_heads=4, norm="sandwich")
    assert len(e.value.problems) == 2  # every problem reported at once


def test_init_like_hf() -> None:
    m = make()
    emb = m.bert.embeddings.word_embeddings.weight
    assert m.cls.predictions.decoder.weight is emb
    assert m.cls.predictions.decoder.bias is m.cls.predictions.bias
    assert torch.all(emb[0] == 0)  # padding row
    assert abs(emb[1:].std().item() - 0.02) < 0.003
    assert torch.all(m.blocks[0].attention.self.query.bias == 0)
    assert torch.all(m.blocks[0].output.LayerNorm.weight == 1)


def test_tie_weights_after_to_empty() -> None:
    with torch.device("meta"):
        m = BertForMaskedLM(tiny())
    m.to_empty(device="cpu")
    m.tie_weights()
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("use_mask", [False, True])
def test_parity_with_transformers(use_mask: bool) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = tiny()
    hf_cfg = transformers.BertConfig(**cfg.to_hf_dict())
    torch.manual_seed(3)
    hf = transformers.BertForMaskedLM(hf_cfg).eval()
    ours = BertForMaskedLM(cfg).eval()
    # Randomise LayerNorms and biases too (init sets them to 1/0) so the test sees them.
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not missing and not unexpected  # names match 1:1
    ids, mask, labels = batch()
    tt = torch.zeros_like(ids)
    tt[:, 6:] = 1
    am = mask if use_mask else None
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, token_type_ids=tt).logits
        out = ours(ids, am, tt)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the masked-only head path picks the same rows
        ref_loss = hf(input_ids=ids, attention_mask=am, token_type_ids=tt, labels=labels).loss
        got = ours(ids, am, tt, labels)
    torch.testing.assert_close(got.logits, ref[labels != -100], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, ref_loss, atol=1e-5, rtol=1e-5)
    # and back: our state dict loads into HF without missing keys
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert num_parameters(ours) == hf.num_parameters()


def test_padding_mask_isolates_padded_tokens() -> None:
    m = make()
    ids, mask, _ = batch()
    with torch.no_grad():
        a = m(ids, mask).logits
        ids2 = ids.clone()
        ids2[mask == 0] = 5  # change only padded tokens
        b = m(ids2, mask).logits
    keep = mask.bool()
    torch.testing.assert_close(a[keep], b[keep])


# ---------------------------------------------------------------- layer selection


def test_skipped_layers_never_execute_and_get_no_grad() -> None:
    m = make().train()
    calls = [0] * len(m.blocks)
    for i, blk in enumerate(m.blocks):
        blk.register_forward_hook(lambda mod, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    ids, mask, labels = batch()
    layers = [0, 3]
    out = m(ids, mask, labels=labels, layers=layers)
    assert calls == [1, 0, 0, 1] and sum(calls) == len(layers)
    out.loss.backward()
    for i, blk in enumerate(m.blocks):
        grads = [p.grad for p in blk.parameters()]
        if i in layers:
            assert all(g is not None for g in grads)
        else:
            assert all(g is None for g in grads)


def test_skipping_is_identity() -> None:
    m = make()
    ids, mask, _ = batch()
    with torch.no_grad():
        x = m.bert.embeddings(ids, None)
        mk = torch.zeros(B, 1, 1, T).masked_fill(mask[:, None, None, :] == 0, torch.finfo().min)
        manual = m.blocks[2](m.blocks[0](x, mk), mk)
        ref = m.cls.predictions(manual)
        got = m(ids, mask, layers=[2, 0]).logits  # order-insensitive: normalised ascending
    torch.testing.assert_close(got, ref)
    assert torch.equal(m(ids, mask, layers=[0, 1, 2, 3]).logits, m(ids, mask).logits)


def test_bad_layers_rejected() -> None:
    m = make()
    ids, _, _ = batch()
    with pytest.raises(UserError) as e:
        m(ids, layers=[0, 4, 1, 1])
    assert len(e.value.problems) == 2
    with pytest.raises(ValueError, match="scales"):
        m(ids, layers=[0, 1], scales=[1.0])


def test_check_layers() -> None:
    assert check_layers([3, 0, -2], 4) == [0, 2, 3]
    assert check_layers([], 4) == []
    with pytest.raises(UserError, match="fixed_layers"):
        check_layers([0, 1.0], 4, key="fixed_layers")
    with pytest.raises(UserError):
        check_layers([True], 4)


def test_scales() -> None:
    m = make()
    ids, mask, _ = batch()
    with torch.no_grad():
        plain = m(ids, mask, layers=[0, 2]).logits
        ones = m(ids, mask, layers=[0, 2], scales=[1.0, 1.0]).logits
        scaled = m(ids, mask, layers=[2, 0], scales=[1.0, 1.5]).logits  # 1.5 goes to layer 0
        x = m.bert.embeddings(ids, None)
        mk = torch.zeros(B, 1, 1, T).masked_fill(mask[:, None, None, :] == 0, torch.finfo().min)
        h = x + 1.5 * (m.blocks[0](x, mk) - x)
        ref = m.cls.predictions(m.blocks[2](h, mk))
    assert torch.equal(plain, ones)
    assert not torch.allclose(plain, scaled)
    torch.testing.assert_close(scaled, ref)


def test_pre_norm_variant() -> None:
    m = make(norm="pre").train()
    assert m.bert.encoder.final_layer_norm is not None
    assert make().bert.encoder.final_layer_norm is None
    ids, mask, labels = batch()
    out = m(ids, mask, labels=labels, layers=[0, 2], scales=[1.0, 2.0])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert m.bert.encoder.final_layer_norm.weight.grad is not None
    # pre-LN, as PLD publishes it (Zhang & He 2020): with scale s EACH residual branch is scaled,
    # h = x + s Attn(LN(x)), out = h + s MLP(LN(h)) (the MLP sees the scaled attention update)
    m.eval()
    with torch.no_grad():
        x = torch.randn(B, T, 32)
        blk = m.blocks[1]
        att, mlp = blk.attention.output, blk.output
        h = x + 0.5 * att.dense(blk.attention.self(att.LayerNorm(x), None))
        out = h + 0.5 * mlp.dense(blk.intermediate(mlp.LayerNorm(h)))
        y = m.bert.encoder(x, None, [1], [0.5])
        torch.testing.assert_close(y, m.bert.encoder.final_layer_norm(out))
        # differs from scaling the whole block update, x + s (block(x) - x)
        assert not torch.allclose(y, m.bert.encoder.final_layer_norm(x + 0.5 * (blk(x) - x)))


# ---------------------------------------------------------------- MLM head on masked positions


def test_head_only_on_masked_positions() -> None:
    m = make()
    ids, mask, labels = batch()
    calls: list[tuple[int, ...]] = []
    m.cls.predictions.transform.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    with torch.no_grad():
        out = m(ids, mask, labels=labels)
        full = m(ids, mask).logits  # (B, T, V)
    n = int((labels != -100).sum())
    assert isinstance(out, MLMOutput) and n == 5
    assert out.logits.shape == (n, V) and out.n_predictions == n
    assert calls[0] == (n, 32)  # the head ran on 5 rows, not B*T
    ref = F.cross_entropy(full.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    assert full.shape == (B, T, V)


def test_no_masked_positions_gives_zero_loss_with_graph() -> None:
    m = make().train()
    ids, mask, _ = batch()
    out = m(ids, mask, labels=torch.full((B, T), -100))
    assert out.n_predictions == 0 and out.loss.item() == 0.0
    out.loss.backward()  # must not raise


# ---------------------------------------------------------------- gradual stacking


def test_grow_by_stacking_4_to_6() -> None:
    m = make()
    pairs = grow_by_stacking(m, 6)
    assert pairs == [(4, 2), (5, 3)]
    assert len(m.blocks) == 6 and m.config.num_layers == 6
    for new, src in pairs:
        a, b = m.blocks[new].state_dict(), m.blocks[src].state_dict()
        for k in a:
            assert torch.equal(a[k], b[k])
            assert a[k].data_ptr() != b[k].data_ptr()  # separate tensors
    ids, mask, labels = batch()
    out = m(ids, mask, labels=labels, layers=[0, 5])
    assert torch.isfinite(out.loss)
    assert num_parameters(m) == 39_137 + 2 * (4224 + 4096 + 64 + 32 + 128)


def test_grow_by_stacking_rejects_bad_depths() -> None:
    m = make()
    for bad in (4, 3, 9):
        with pytest.raises(UserError, match="cannot grow"):
            grow_by_stacking(m, bad)
    assert grow_by_stacking(m, 8) == [(4, 0), (5, 1), (6, 2), (7, 3)]  # doubling is allowed
