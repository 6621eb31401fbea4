"""nomic-embed-text-v2-moe (NomicBERT with a mixture of experts) against the original implementation's outputs.

The fixture ``text-v2-moe-tiny`` holds random weights in the original hub layout and what nomic's own code
(pure-torch MoE, fp32 CPU) computed on 21 inputs in 16 languages (tests/fixtures/LICENSE.md).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from multimodal_embed.errors import CheckpointError, ConfigError
from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel, convert_state_dict, load_converted
from multimodal_embed.models.nomic_moe import NomicMoELayer

VARIANT = "text-v2-moe-tiny"
MOE_LAYERS = (1, 3)


def _raw_config(fixtures_dir):
    return json.loads((fixtures_dir / VARIANT / "config.json").read_text())


def _load(fixtures_dir):
    folder = fixtures_dir / VARIANT
    model = NomicBertModel(NomicBertConfig.from_hf_dict(_raw_config(fixtures_dir))).eval()
    load_converted(model, convert_state_dict(load_file(folder / "model.safetensors")), what=folder.name)
    return model, load_file(folder / "reference_io.safetensors")


def _pool(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def test_config_maps_the_v2_keys(fixtures_dir):
    cfg = NomicBertConfig.from_hf_dict(_raw_config(fixtures_dir))
    assert (cfg.layer_norm_eps, cfg.rotary_base, cfg.type_vocab_size) == (1e-5, 10000.0, 1)
    assert (cfg.activation, cfg.num_experts, cfg.moe_top_k, cfg.intermediate_size) == ("gelu", 4, 2, 256)
    assert cfg.qkv_bias and cfg.mlp_fc1_bias and cfg.mlp_fc2_bias and cfg.rotary_scaling_factor is None
    assert [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)] == list(MOE_LAYERS)  # i % 2 == 1
    model = NomicBertModel(cfg)
    assert [type(b.mlp).__name__ for b in model.encoder.layers] == ["NomicBertGeluMLP", "NomicMoELayer"] * 2


def test_hidden_states_and_embeddings_match_reference(fixtures_dir):
    from multimodal_embed.text import NOMIC_V2_MOE_MATRYOSHKA

    model, ref = _load(fixtures_dir)
    with torch.inference_mode():
        hidden = model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    # every position of the padded batch: padding is routed through the experts as the original routes it
    assert (hidden - ref["last_hidden_state"]).abs().max() <= 1e-5
    pooled = _pool(hidden, ref["attention_mask"])
    assert (pooled - ref["mean_pooled"]).abs().max() <= 1e-5
    # the model card's recipe: mean, then (cut, then) L2; no LayerNorm
    for d in (64, 32, 16):
        got = NOMIC_V2_MOE_MATRYOSHKA.apply(pooled, d)
        assert (got - ref[f"emb_d{d}"]).abs().max() <= 1e-6
    # v1.5's recipe (LayerNorm first) would be wrong here
    v15 = F.normalize(F.layer_norm(pooled, (64,), eps=1e-5)[:, :32], dim=-1)
    assert (v15 - ref["emb_d32"]).abs().max() > 1e-3


def test_router_choices_and_probabilities_match_reference(fixtures_dir):
    model, ref = _load(fixtures_dir)
    inputs = {}
    hooks = [model.encoder.layers[i].mlp.register_forward_hook(
        lambda mod, args, out, i=i: inputs.__setitem__(i, args[0])) for i in MOE_LAYERS]
    try:
        with torch.inference_mode():
            model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
            for i in MOE_LAYERS:
                layer = model.encoder.layers[i].mlp
                routing = layer.route(inputs[i].reshape(-1, inputs[i].shape[-1]))
                b, n = ref["input_ids"].shape
                assert torch.equal(routing.experts.view(b, n, -1), ref[f"router_top_experts_layer{i}"])
                assert (routing.probs.view(b, n, -1) - ref[f"router_probs_layer{i}"]).abs().max() <= 1e-6
                assert (routing.weights.view(b, n, -1) - ref[f"router_top_weights_layer{i}"]).abs().max() <= 1e-6
                assert routing.probs.dtype == torch.float32
                assert (routing.weights.sum(-1) < 1).all()  # top-2 of 4, not renormalised
    finally:
        for h in hooks:
            h.remove()


def test_per_layer_outputs_match_reference(fixtures_dir):
    model, ref = _load(fixtures_dir)
    outs = {}
    hooks = [model.emb_ln.register_forward_hook(lambda m, a, o: outs.__setitem__("emb_ln", o))]
    hooks += [block.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(f"layer{i}", o))
              for i, block in enumerate(model.encoder.layers)]
    try:
        with torch.inference_mode():
            model(ref["ladder_input_ids"], ref["ladder_attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    assert len(outs) == 1 + model.config.num_hidden_layers
    for key, value in outs.items():
        assert (value - ref[f"ladder_{key}"]).abs().max() <= 1e-5, key


def test_512_token_input(fixtures_dir):
    model, ref = _load(fixtures_dir)
    assert ref["long_input_ids"].shape == (1, 512)
    with torch.inference_mode():
        padded = model(ref["long_input_ids"], ref["long_attention_mask"])
        packed = model.forward_packed(ref["long_input_ids"][0], torch.tensor([0, 512]))
    assert (padded - ref["long_last_hidden_state"]).abs().max() <= 1e-5
    assert (packed - ref["long_last_hidden_state"][0]).abs().max() <= 1e-5


def test_packed_equals_padded(fixtures_dir):
    model, ref = _load(fixtures_dir)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    keep = mask.bool()
    cu = F.pad(keep.sum(1).cumsum(0), (1, 0))
    with torch.inference_mode():
        padded = model(ids, mask)
        packed = model.forward_packed(ids[keep], cu)
    assert (packed - padded[keep]).abs().max() <= 1e-5
    assert (packed - ref["last_hidden_state"][keep]).abs().max() <= 1e-5


def test_grouped_experts_equal_the_dense_form():
    """Each expert on its routed tokens only == every expert on every token, masked (the naive reference)."""
    torch.manual_seed(0)
    layer = NomicMoELayer(32, 48, num_experts=6, top_k=2).eval()
    with torch.no_grad():
        layer.router.layer.weight.normal_(std=0.5)
        layer.experts.bias.normal_(std=0.1)
    x = torch.randn(3, 40, 32)
    with torch.inference_mode():
        grouped, dense = layer(x), layer.forward_dense(x)
        assert grouped.shape == x.shape
        assert (grouped - dense).abs().max() <= 1e-6
        # the shared bias is added once, not once per chosen expert
        assert (layer(torch.zeros(1, 32)) - layer.experts.bias).abs().max() == 0
        # an expert no token chose is skipped, not run on an empty batch
        one = layer(x[:1, :1])
        assert (one - layer.forward_dense(x[:1, :1])).abs().max() <= 1e-6


def test_full_size_architecture_on_meta(fixtures_dir):
    cfg = NomicBertConfig.from_hf_dict(json.loads((fixtures_dir / "config.nomic-embed-text-v2-moe.json").read_text()))
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.num_experts, cfg.layer_norm_eps) == (250048, 3072, 8, 1e-5)
    with torch.device("meta"):
        model = NomicBertModel(cfg)
    state = model.state_dict()
    assert len(state) == 148
    total = sum(v.numel() for v in model.parameters())
    assert total == 475_292_928  # the spec, MTEB and the real file
    expert = 2 * cfg.intermediate_size * cfg.hidden_size
    moe_layers = sum(map(cfg.is_moe_layer, range(cfg.num_hidden_layers)))
    assert total - moe_layers * (cfg.num_experts - cfg.moe_top_k) * expert == 305_423_616  # active per token
    assert tuple(state["encoder.layers.1.mlp.experts.mlp.w2"].shape) == (8 * 3072, 768)
    assert "encoder.layers.0.mlp.fc1.bias" in state and "encoder.layers.0.mlp.router.layer.weight" not in state


def test_transformers_native_class_would_drop_the_experts_ours_refuses(fixtures_dir, tmp_path):
    """transformers' own nomic_bert loads this checkpoint with keys silently dropped (spec section 4); our loader
    names any missing or unexpected key and loads nothing."""
    from transformers import NomicBertConfig as NativeConfig
    from transformers import NomicBertModel as NativeModel

    folder = fixtures_dir / VARIANT
    cfg = NomicBertConfig.from_hf_dict(_raw_config(fixtures_dir))
    native_cfg = NativeConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                              num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                              intermediate_size=cfg.intermediate_size, type_vocab_size=1)
    native, info = NativeModel.from_pretrained(folder, config=native_cfg, output_loading_info=True)
    unexpected, missing = info["unexpected_keys"], info["missing_keys"]
    assert any("experts" in k for k in unexpected) and any("router" in k for k in unexpected)
    assert any("fc1" in k for k in unexpected) and any("gate_proj" in k for k in missing)
    assert native.config.layer_norm_eps == 1e-12  # v1.5's default, not the checkpoint's 1e-5

    state = convert_state_dict(load_file(folder / "model.safetensors"))
    import dataclasses

    dense = NomicBertModel(dataclasses.replace(cfg, activation="swiglu", num_experts=0, moe_every_n_layers=0))
    with pytest.raises(CheckpointError, match="unexpected .*experts|missing"):
        load_converted(dense, state, what="v2-moe as a dense model")
    ours = NomicBertModel(cfg)
    for drop in ("encoder.layers.1.mlp.experts.mlp.w1", "encoder.layers.3.mlp.experts.bias",
                 "encoder.layers.1.mlp.router.layer.weight"):
        partial = {k: v for k, v in state.items() if k != drop}
        with pytest.raises(CheckpointError, match="missing 1 keys"):
            load_converted(ours, partial, what="tiny")
    with pytest.raises(CheckpointError, match="unexpected 1 keys"):
        load_converted(ours, {**state, "encoder.layers.0.mlp.experts.bias": torch.zeros(64)}, what="tiny")
    swapped = dict(state)  # (E, D, F) instead of (E, F, D) keeps the element count: the shapes still differ
    swapped["encoder.layers.1.mlp.experts.mlp.w2"] = state["encoder.layers.1.mlp.experts.mlp.w2"].view(4, 256, 64)
    with pytest.raises(CheckpointError, match="shape"):
        load_converted(ours, swapped, what="tiny")


@pytest.mark.parametrize("key,value", [("moe_normalize_expert_weights", True), ("num_shared_experts", 1),
                                       ("expert_choice_router", True), ("activation_function", "relu"),
                                       ("moe_top_k", 9)])
def test_unsupported_moe_config_is_refused(fixtures_dir, key, value):
    raw = _raw_config(fixtures_dir)
    raw[key] = value
    with pytest.raises(ConfigError, match=key):
        NomicBertConfig.from_hf_dict(raw)
