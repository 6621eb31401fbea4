"""NomicBERT against the original implementation's outputs (parity fixtures) and transformers' native model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from multimodal_embed.errors import CheckpointError, ConfigError
from multimodal_embed.models.nomic_bert import (
    NomicBertConfig,
    NomicBertModel,
    convert_state_dict,
    load_converted,
    rotary_base_for_length,
)

VARIANTS = ["text-v1.5-tiny", "text-v1-tiny"]


def _load(folder, **overrides):
    cfg = NomicBertConfig.from_hf_dict(json.loads((folder / "config.json").read_text()))
    cfg = dataclasses.replace(cfg, **overrides)
    model = NomicBertModel(cfg).eval()
    load_converted(model, convert_state_dict(load_file(folder / "model.safetensors")), what=folder.name)
    return model, load_file(folder / "reference_io.safetensors")


@pytest.mark.parametrize("variant", VARIANTS)
def test_hidden_states_and_embeddings_match_reference(fixtures_dir, variant):
    model, ref = _load(fixtures_dir / variant)
    with torch.inference_mode():
        hidden = model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    # every position, padding included
    assert (hidden - ref["last_hidden_state"]).abs().max() <= 1e-5
    m = ref["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    assert (pooled - ref["mean_pooled"]).abs().max() <= 1e-5
    assert (F.normalize(pooled, dim=-1) - ref["emb_v1"]).abs().max() <= 1e-6
    from multimodal_embed.text import NomicTextEncoder

    enc = NomicTextEncoder(model, tokenizer=None, matryoshka=True)
    assert (enc._finish(pooled, 64) - ref["emb_v15_d64"]).abs().max() <= 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_long_input_dynamic_ntk_and_stateless(fixtures_dir, variant):
    model, ref = _load(fixtures_dir / variant, rotary_scaling_factor=2.0)
    with torch.inference_mode():
        long = model(ref["long_input_ids"], ref["long_attention_mask"])
        short_after_long = model(ref["input_ids"], ref["attention_mask"])
    assert (long - ref["long_last_hidden_state_rsf2"]).abs().max() <= 1e-5
    # the reference reuses the scaled rotary after a long input; we are stateless and equal the fresh model
    assert (short_after_long - ref["short_fresh_rsf2_last_hidden_state"]).abs().max() <= 1e-5
    assert (short_after_long - ref["short_after_long_rsf2_last_hidden_state"]).abs().max() > 5e-5

    plain, _ = _load(fixtures_dir / variant)
    with torch.inference_mode():
        assert (plain(ref["long_input_ids"]) - ref["long_last_hidden_state_noscale"]).abs().max() <= 1e-5


def test_rotary_base_formula():
    cfg = NomicBertConfig(rotary_scaling_factor=2.0)
    assert rotary_base_for_length(cfg, 2048) == 1000.0
    assert rotary_base_for_length(cfg, 2560) == pytest.approx(1519.75, abs=0.01)
    assert rotary_base_for_length(cfg, 4096) == pytest.approx(3108.22, abs=0.01)
    assert rotary_base_for_length(cfg, 8192) == pytest.approx(7453.48, abs=0.01)
    assert rotary_base_for_length(NomicBertConfig(), 8192) == 1000.0


def test_full_size_parameters_on_meta(fixtures_dir):
    expected = json.loads((fixtures_dir / "full_size_parameters.json").read_text())["text"]
    for name in ("config.nomic-embed-text-v1.json", "config.nomic-embed-text-v1.5.json"):
        cfg = NomicBertConfig.from_hf_dict(json.loads((fixtures_dir / name).read_text()))
        with torch.device("meta"):
            model = NomicBertModel(cfg)
        got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        assert sorted(got) == sorted((k, list(s)) for k, s in expected)
        assert sum(v.numel() for v in model.parameters()) == 136_731_648


@pytest.mark.parametrize(
    "key,value",
    [("prenorm", True), ("rotary_emb_fraction", 0.5), ("rotary_emb_interleaved", True), ("causal", True),
     ("activation_function", "gelu_new"), ("rotary_emb_scale_base", 512), ("use_rms_norm", True),
     ("parallel_block", True)],
)
def test_unsupported_config_keys_are_rejected(fixtures_dir, key, value):
    raw = json.loads((fixtures_dir / "text-v1.5-tiny" / "config.json").read_text())
    raw[key] = value
    with pytest.raises(ConfigError, match=key):
        NomicBertConfig.from_hf_dict(raw)


def test_config_keys_that_change_the_math_are_mapped(fixtures_dir):
    raw = json.loads((fixtures_dir / "text-v1.5-tiny" / "config.json").read_text())
    raw.update(n_inner=200, rotary_emb_base=500, layer_norm_epsilon=1e-6, rotary_scaling_factor=3,
               vocab_size=30522, qkv_proj_bias=True)
    cfg = NomicBertConfig.from_hf_dict(raw)
    assert cfg.intermediate_size == 256  # rounded up to a multiple of 256 as the reference does
    assert (cfg.rotary_base, cfg.layer_norm_eps, cfg.rotary_scaling_factor) == (500.0, 1e-6, 3.0)
    assert cfg.vocab_size == 30528  # padded to pad_vocab_size_multiple
    assert cfg.qkv_bias


def test_mismatched_weights_name_the_keys(fixtures_dir):
    folder = fixtures_dir / "text-v1.5-tiny"
    cfg = NomicBertConfig.from_hf_dict(json.loads((folder / "config.json").read_text()))
    state = convert_state_dict(load_file(folder / "model.safetensors"))
    del state["emb_ln.bias"]
    with pytest.raises(CheckpointError, match="emb_ln.bias"):
        load_converted(NomicBertModel(cfg), state, what="tiny")
    wide = NomicBertModel(dataclasses.replace(cfg, intermediate_size=512))
    with pytest.raises(CheckpointError, match="shape"):
        load_converted(wide, convert_state_dict(load_file(folder / "model.safetensors")), what="tiny")


def _native_config(cfg: NomicBertConfig, dynamic: bool):
    from transformers import NomicBertConfig as NativeConfig

    rope = {"rope_type": "dynamic", "rope_theta": cfg.rotary_base, "factor": 2.0} if dynamic else {
        "rope_type": "default", "rope_theta": cfg.rotary_base}
    return NativeConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                        intermediate_size=cfg.intermediate_size, layer_norm_eps=cfg.layer_norm_eps,
                        max_position_embeddings=2048, rope_parameters=rope)


def test_transformers_native_format_loads_and_matches(fixtures_dir, tmp_path):
    """A folder saved by transformers 5 (native names, native config) loads into the same model."""
    from transformers import NomicBertModel as NativeModel

    folder = fixtures_dir / "text-v1.5-tiny"
    ours, ref = _load(folder)
    native = NativeModel(_native_config(ours.config, dynamic=False)).eval()
    native.load_state_dict(_to_native(ours.state_dict()), strict=True)
    native.save_pretrained(tmp_path)
    cfg = NomicBertConfig.from_hf_dict(json.loads((tmp_path / "config.json").read_text()))
    assert cfg == ours.config
    reloaded = NomicBertModel(cfg).eval()
    load_converted(reloaded, convert_state_dict(load_file(tmp_path / "model.safetensors")), what="native")
    with torch.inference_mode():
        a = reloaded(ref["input_ids"], ref["attention_mask"])
        b = native(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).last_hidden_state
    assert (a - ref["last_hidden_state"]).abs().max() <= 1e-5
    assert (a - b).abs().max() <= 1e-5


def _to_native(state):
    out = {}
    for k, v in state.items():
        k = k.replace("encoder.layers.", "layers.").replace("emb_ln.", "embeddings.LayerNorm.")
        k = k.replace("attn.out_proj", "self_attn.o_proj").replace("mlp.fc11", "mlp.up_proj")
        k = k.replace("mlp.fc12", "mlp.gate_proj").replace("mlp.fc2", "mlp.down_proj")
        k = k.replace("norm1.", "post_attention_layernorm.").replace("norm2.", "post_mlp_layernorm.")
        if k.endswith("attn.Wqkv.weight"):
            q, kk, vv = v.chunk(3, dim=0)
            base = k.replace("attn.Wqkv.weight", "self_attn.")
            out.update({base + "q_proj.weight": q, base + "k_proj.weight": kk, base + "v_proj.weight": vv})
            continue
        out[k] = v
    return out


def test_native_dynamic_config_maps_to_scaling(fixtures_dir, tmp_path):
    folder = fixtures_dir / "text-v1.5-tiny"
    ours, _ = _load(folder)
    _native_config(ours.config, dynamic=True).save_pretrained(tmp_path)
    cfg = NomicBertConfig.from_hf_dict(json.loads((tmp_path / "config.json").read_text()))
    assert cfg.rotary_scaling_factor == 2.0 and cfg.max_trained_positions == 2048


def test_original_checkpoint_with_pretraining_prefix(fixtures_dir):
    state = load_file(fixtures_dir / "text-v1-tiny" / "model.safetensors")
    prefixed = {"bert." + k: v for k, v in state.items()}
    prefixed["cls.predictions.bias"] = torch.zeros(3)
    assert convert_state_dict(prefixed).keys() == convert_state_dict(state).keys()


def test_save_roundtrip_original_names(fixtures_dir, tmp_path):
    model, _ = _load(fixtures_dir / "text-v1-tiny")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(fixtures_dir / "text-v1-tiny" /
                                                                           "model.safetensors"))
