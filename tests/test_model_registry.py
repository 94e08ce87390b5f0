"""The architecture registry: a model family registered from outside `models/` is resolved, counted
and built through it alone; and models take one step's subnetwork as one `Subnet`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raptr_cli.models import build_model, registry, resolve_model_config
from raptr_cli.models.bert import SPEC as BERT
from raptr_cli.models.bert.config import BertConfig
from raptr_cli.models.bert.model import BertForMaskedLM, num_parameters
from raptr_cli.models.ul2.model import DecoderConfig, DecoderForPrefixLM
from raptr_cli.objectives import objective_spec
from raptr_cli.planning import model_dims, param_count
from raptr_cli.recipe import ModelConfig
from raptr_cli.subnet import Subnet


@dataclasses.dataclass
class ToyConfig(BertConfig):
    """A pre-LN BERT variant: its own config class is what makes it its own architecture."""

    norm: str = "pre"


def _toy_spec() -> registry.ArchSpec:
    return dataclasses.replace(
        BERT,
        name="toy",
        config=ToyConfig,
        export=None,
        presets={"two": dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)},
        build=lambda cfg: BertForMaskedLM(cfg),
    )


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> registry.ArchSpec:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # dropped after the test
    return registry.register(_toy_spec())


def test_a_registered_architecture_resolves_counts_and_builds(toy: registry.ArchSpec) -> None:
    assert "toy" in registry.arch_names()
    cfg = resolve_model_config(ModelConfig(arch="toy", preset="two", hidden_size=48, dropout=0.0), 97, 40)
    assert type(cfg) is ToyConfig
    assert (cfg.num_layers, cfg.hidden_size, cfg.norm, cfg.vocab_size) == (2, 48, "pre", 97)
    assert cfg.max_position_embeddings == 512 and cfg.hidden_dropout == 0.0
    assert registry.spec_of(cfg) is toy
    model = build_model(cfg)
    assert isinstance(model, BertForMaskedLM) and len(model.blocks) == 2
    assert param_count(cfg)["total"] == num_parameters(model)
    assert model_dims(cfg, 40).n_layers == 2
    assert objective_spec(toy.objective).name == "mlm"


def test_registry_refuses_unknown_names_and_double_registration(toy: registry.ArchSpec) -> None:
    from raptr_cli.errors import UserError

    with pytest.raises(UserError, match="unknown architecture 'nope'"):
        registry.arch_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_toy_spec())
    with pytest.raises(UserError, match="is not a toy preset"):
        resolve_model_config(ModelConfig(arch="toy", preset="tiny"), 97, 40)


def _bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_layers=4,
            num_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
            norm="pre",
            hidden_dropout=0.0,
            attention_dropout=0.0,
        )
    ).eval()


def _decoder() -> DecoderForPrefixLM:
    torch.manual_seed(0)
    return DecoderForPrefixLM(
        DecoderConfig(
            vocab_size=50, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64, max_position_embeddings=16
        )
    ).eval()


@pytest.mark.parametrize("make", [_bert, _decoder])
def test_subnet_runs_what_layers_and_scales_run(make) -> None:
    model = make()
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        by_keywords = model(ids, layers=[3, 0], scales=[2.0, 0.5]).logits
        by_subnet = model(ids, subnet=Subnet(layers=(3, 0), scales=(2.0, 0.5))).logits
        full = model(ids).logits
        torch.testing.assert_close(by_subnet, by_keywords, rtol=0, atol=0)
        torch.testing.assert_close(model(ids, subnet=Subnet()).logits, full, rtol=0, atol=0)
    assert not torch.equal(by_subnet, full)
    with pytest.raises(ValueError, match="not both"):
        model(ids, layers=[0], subnet=Subnet(layers=(0,)))
