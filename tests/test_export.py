"""`raptr export --to hf`: the exported directory loads in transformers, offline, with the same
logits and token ids as raptr; bad targets are refused with exit code 2.

Run directories are built without training: a tiny model with perturbed weights (so no parameter
sits at its init value and a mis-mapped tensor cannot go unnoticed) written the way the trainer
writes final/ and checkpoints/.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

# Set before transformers is first imported (huggingface_hub reads it at import); the loads below
# also pass local_files_only=True, so nothing can reach the network either way.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from raptr_cli.data.tokenizer import train_wordpiece  # noqa: E402
from raptr_cli.errors import UserError  # noqa: E402
from raptr_cli.export import export_hf  # noqa: E402
from raptr_cli.models.bert.model import BertConfig, BertForMaskedLM  # noqa: E402
from raptr_cli.models.ul2.model import DecoderConfig, DecoderForPrefixLM  # noqa: E402
from raptr_cli.objectives.ul2_tokenizer import train_bpe  # noqa: E402
from raptr_cli.train.checkpoint import write_model_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Mixed case and accents: a cased tokenizer that HF silently lowercased would encode differently.
_WORDS = [
    "The Cat",
    "the cat",
    "A Dog",
    "a dog",
    "Émile",
    "café",
    "sees",
    "likes",
    "the River",
    "the bread",
    "at night",
    "The Queen",
    "her ring",
    "by the sea",
]
DOCS = [" ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(12)) + " ." for i in range(60)]
SENTENCES = ["The Cat sees the River at night.", "émile likes THE café, unknownword!"]


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its init (LayerNorm 1/0, zero biases) by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters are yielded once
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _write_run(root: Path, model: torch.nn.Module, arch: str, tok: Any, checkpoint: bool = False) -> Path:
    """A run directory as `raptr pretrain` leaves it: recipe.toml, tokenizer.json, final/ and
    optionally checkpoints/step-0000004/ (which, like the trainer's, has no tokenizer.json)."""
    root.mkdir(parents=True)
    (root / "recipe.toml").write_text(f'[model]\narch = "{arch}"\n')
    tok.save(str(root / "tokenizer.json"))
    final = root / "final"
    final.mkdir()
    write_model_dir(final, model, arch)
    shutil.copyfile(root / "tokenizer.json", final / "tokenizer.json")
    if checkpoint:
        step = root / "checkpoints" / "step-0000004"
        step.mkdir(parents=True)
        write_model_dir(step, model, arch)
    return root


@pytest.fixture(scope="module")
def wordpiece() -> Any:
    return train_wordpiece(DOCS, vocab_size=120, lowercase=False)


@pytest.fixture(scope="module")
def bpe() -> Any:
    return train_bpe(DOCS, vocab_size=300, n_sentinels=4)


def _bert(tok: Any, **kw: Any) -> BertForMaskedLM:
    cfg = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **kw,
    )
    torch.manual_seed(0)
    return _perturb(BertForMaskedLM(cfg), seed=1)


def _decoder(tok: Any, tie: bool) -> DecoderForPrefixLM:
    # rope_theta off its default: a config key lost on the way would change the logits.
    cfg = DecoderConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        rope_theta=500.0,
        tie_embeddings=tie,
    )
    torch.manual_seed(0)
    return _perturb(DecoderForPrefixLM(cfg), seed=2)


def _hf_ids(hf_tok: Any, text: str) -> list[int]:
    return hf_tok(text)["input_ids"]


def test_bert_export_matches_transformers(tmp_path: Path, wordpiece: Any) -> None:
    model = _bert(wordpiece)
    run = _write_run(tmp_path / "run", model, "bert", wordpiece)
    out = export_hf(run, tmp_path / "hf")
    assert out == tmp_path / "hf"
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left

    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, local_files_only=True, output_loading_info=True)
    assert type(hf).__name__ == "BertForMaskedLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    # The decoder was left out of the file: HF must have re-tied it to the embedding.
    assert torch.equal(hf.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)

    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    for s in SENTENCES:
        assert _hf_ids(hf_tok, s) == wordpiece.encode(s).ids, s
    assert wordpiece.encode("The Cat").ids != wordpiece.encode("the cat").ids  # the test can fail
    assert hf_tok.mask_token_id == wordpiece.token_to_id("[MASK]")
    assert hf_tok.pad_token_id == wordpiece.token_to_id("[PAD]") == hf.config.pad_token_id

    batch = hf_tok(SENTENCES, padding=True, return_tensors="pt")
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # has padding
    with torch.no_grad():
        ours = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        ).logits
        theirs = hf(**batch).logits
    assert ours.shape == theirs.shape == (*batch["input_ids"].shape, wordpiece.get_vocab_size())
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_ul2_export_matches_llama(tmp_path: Path, bpe: Any, tie: bool) -> None:
    model = _decoder(bpe, tie)
    run = _write_run(tmp_path / "run", model, "ul2", bpe)
    out = export_hf(run, tmp_path / "hf")

    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True, output_loading_info=True)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    assert hf.config.tie_word_embeddings is tie
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
    assert torch.equal(hf.model.embed_tokens.weight, model.model.embed_tokens.weight)

    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    texts = SENTENCES + ["[NLU] The Cat <extra_id_0> night <extra_id_3>"]
    for s in texts:
        assert _hf_ids(hf_tok, s) == bpe.encode(s).ids, s
    assert hf_tok.convert_tokens_to_ids("<extra_id_0>") == bpe.token_to_id("<extra_id_0>")
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (hf.config.bos_token_id, hf.config.eos_token_id)
    assert hf_tok.decode(bpe.encode(SENTENCES[1]).ids) == SENTENCES[1]
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "[EOS]"
    assert "add_bos_token" not in json.loads((out / "special_tokens_map.json").read_text())

    ids = torch.tensor([bpe.encode(texts[-1]).ids, bpe.encode(texts[0]).ids[: len(bpe.encode(texts[-1]).ids)]])
    with torch.no_grad():
        ours = model(ids).logits  # prefix_len=None: fully causal
        theirs = hf(input_ids=ids).logits
        prefix = model(ids, prefix_len=torch.tensor([4, 4])).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # The documented limit: a prefix-LM forward is not what Llama computes.
    assert (prefix - theirs).abs().max() > 1e-3


def test_checkpoint_target_uses_run_tokenizer(tmp_path: Path, wordpiece: Any) -> None:
    model = _bert(wordpiece)
    run = _write_run(tmp_path / "run", model, "bert", wordpiece, checkpoint=True)
    out = export_hf(run / "checkpoints" / "step-0000004", tmp_path / "hf")
    assert (out / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, local_files_only=True).eval()
    ids = torch.tensor([wordpiece.encode(SENTENCES[0]).ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path: Path, wordpiece: Any) -> None:
    run = _write_run(tmp_path / "run", _bert(wordpiece), "bert", wordpiece)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty") as e:
        export_hf(run, out)
    assert "--overwrite" in e.value.hint
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # untouched

    export_hf(run, out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no .tmp/.old left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_hf(run, empty) / "config.json").is_file()  # an empty directory is fine
    for bad in (run, run / "final", tmp_path):  # would delete the source even with --overwrite
        with pytest.raises(UserError, match="contains the model"):
            export_hf(run, bad, overwrite=True)
    assert (run / "final" / "model.safetensors").is_file()


def test_pre_ln_bert_is_refused(tmp_path: Path, wordpiece: Any) -> None:
    run = _write_run(tmp_path / "run", _bert(wordpiece, norm="pre"), "bert", wordpiece)
    with pytest.raises(UserError, match="pre-LN") as e:
        export_hf(run, tmp_path / "hf")
    assert "post" in e.value.hint
    assert not (tmp_path / "hf").exists()


def test_mismatched_tokenizer_is_refused(tmp_path: Path, wordpiece: Any, bpe: Any) -> None:
    run = _write_run(tmp_path / "run", _bert(wordpiece), "bert", wordpiece)
    bpe.save(str(run / "final" / "tokenizer.json"))  # a UL2 tokenizer next to a BERT model
    with pytest.raises(UserError, match=r"tokenizer\.json: .*lacks the BERT special token\(s\) \[CLS\]"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_export(tmp_path: Path, wordpiece: Any) -> None:
    import typer
    from typer.testing import CliRunner

    from raptr_cli.cli.boundary import guarded
    from raptr_cli.cli.export_cmd import HELP, export

    app = typer.Typer()
    app.command("export", help=HELP)(guarded(export))
    app.callback()(lambda: None)  # keep "export" a subcommand, as in the real app
    runner = CliRunner()
    run = _write_run(tmp_path / "run", _bert(wordpiece), "bert", wordpiece)
    out = tmp_path / "hf"

    res = runner.invoke(app, ["export", str(run), "--to", "hf", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["architecture"] == "BertForMaskedLM" and Path(doc["out"]) == out
    assert "model.safetensors" in doc["files"]

    res = runner.invoke(app, ["export", str(run), str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["export", str(run), str(out), "--overwrite"])
    assert res.exit_code == 0 and "BertForMaskedLM" in res.stdout
    res = runner.invoke(app, ["export", str(run), "--to", "onnx", str(tmp_path / "x")])
    assert res.exit_code == 2 and "onnx" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "nowhere"), str(tmp_path / "y")])
    assert res.exit_code == 2 and "neither a run directory nor a checkpoint" in res.output
    res = runner.invoke(app, ["export", "--help"])
    assert res.exit_code == 0 and "raptr export runs/demo" in res.stdout
