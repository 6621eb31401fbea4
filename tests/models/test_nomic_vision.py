"""nomic-embed-vision against the original implementation's outputs, and full-size checkpoint layout."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from multimodal_embed.errors import ConfigError
from multimodal_embed.models.nomic_bert import load_converted
from multimodal_embed.models.nomic_vision import NomicVisionConfig, NomicVisionModel, convert_state_dict


def _load(folder):
    cfg = NomicVisionConfig.from_hf_dict(json.loads((folder / "config.json").read_text()))
    model = NomicVisionModel(cfg).eval()
    load_converted(model, convert_state_dict(load_file(folder / "model.safetensors")), what=folder.name)
    return model, load_file(folder / "reference_io.safetensors")


def test_trunk_selector_and_embedding_match_reference(fixtures_dir):
    model, ref = _load(fixtures_dir / "vision-v1.5-tiny")
    with torch.inference_mode():
        trunk, last = model.forward_features(ref["pixel_values"])
        emb = F.normalize(model(ref["pixel_values"]), dim=-1)
    assert (trunk - ref["trunk_hidden_states"]).abs().max() <= 5e-5
    assert (last - ref["last_hidden_state"]).abs().max() <= 5e-5
    assert (emb - ref["image_embedding"]).abs().max() <= 1e-6


def test_k_bias_matters(fixtures_dir):
    """The K part of the qkv bias is a free parameter here (timm EVA02 zeroes it): dropping it changes outputs."""
    model, ref = _load(fixtures_dir / "vision-v1.5-tiny")
    d = model.config.hidden_size
    with torch.no_grad():
        model.layers[0].attn.Wqkv.bias[d:2 * d] = 0
        emb = F.normalize(model(ref["pixel_values"]), dim=-1)
    assert (emb - ref["image_embedding"]).abs().max() > 1e-5


def test_float_n_inner_and_full_size_parameters(fixtures_dir):
    raw = json.loads((fixtures_dir / "config.nomic-embed-vision-v1.5.json").read_text())
    assert raw["n_inner"] == 2048.0 and isinstance(raw["n_inner"], float)
    cfg = NomicVisionConfig.from_hf_dict(raw)
    with torch.device("meta"):
        model = NomicVisionModel(cfg)
    expected = json.loads((fixtures_dir / "full_size_parameters.json").read_text())["vision"]
    got = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    assert got == sorted((k, list(s)) for k, s in expected)
    assert sum(p.numel() for p in model.parameters()) == 92_946_688


@pytest.mark.parametrize("key,value", [("prenorm", False), ("no_cls_token", True), ("register_tokens", 4),
                                       ("global_pool", "avg"), ("rotary_emb_fraction", 0.5),
                                       ("learned_pos_embedding", True)])
def test_unsupported_vision_config_rejected(fixtures_dir, key, value):
    raw = json.loads((fixtures_dir / "vision-v1.5-tiny" / "config.json").read_text())
    raw[key] = value
    with pytest.raises(ConfigError, match=key):
        NomicVisionConfig.from_hf_dict(raw)


def test_conv_patch_weights_convert(fixtures_dir):
    state = load_file(fixtures_dir / "vision-v1.5-tiny" / "model.safetensors")
    w = state["embeddings.proj.weight"]
    conv = dict(state, **{"embeddings.proj.weight": w.reshape(w.shape[0], 3, 16, 16)})
    assert torch.equal(convert_state_dict(conv)["embeddings.proj.weight"], w)
