"""The unpadded (packed-sequence) NomicBERT path against the padded path and the reference outputs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from multimodal_embed.models.nomic_bert import NomicBertConfig, NomicBertModel, convert_state_dict, load_converted

VARIANTS = ["text-v1.5-tiny", "text-v1-tiny"]
TOL = 1e-5  # fp32, max |diff| of hidden states (the padded path meets the reference within the same bound)


def _load(folder, **overrides):
    cfg = dataclasses.replace(NomicBertConfig.from_hf_dict(json.loads((folder / "config.json").read_text())),
                              **overrides)
    model = NomicBertModel(cfg).eval()
    load_converted(model, convert_state_dict(load_file(folder / "model.safetensors")), what=folder.name)
    return model, load_file(folder / "reference_io.safetensors")


def _packed(model, ids, mask, **kw):
    keep = mask.bool()
    cu = torch.nn.functional.pad(keep.sum(1).cumsum(0), (1, 0))
    return model.forward_packed(ids[keep], cu, **kw), keep


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_matches_reference_and_padded(fixtures_dir, variant):
    model, ref = _load(fixtures_dir / variant)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    with torch.inference_mode():
        padded = model(ids, mask)
        packed, keep = _packed(model, ids, mask)
    assert packed.shape == (int(mask.sum()), model.config.hidden_size)
    assert (packed - ref["last_hidden_state"][keep]).abs().max() <= TOL
    assert (packed - padded[keep]).abs().max() <= TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_dynamic_ntk_long_input(fixtures_dir, variant):
    """Past max_trained_positions the rotary base depends on the length: the packed path uses the same one."""
    model, ref = _load(fixtures_dir / variant, rotary_scaling_factor=2.0)
    ids, mask = ref["long_input_ids"], ref["long_attention_mask"]
    with torch.inference_mode():
        packed, keep = _packed(model, ids, mask)
    assert (packed - ref["long_last_hidden_state_rsf2"][keep]).abs().max() <= TOL


def test_packed_is_independent_of_batch_neighbours(fixtures_dir):
    """No attention leaks across packed sequences: a sequence gives the same states alone or packed."""
    model, ref = _load(fixtures_dir / "text-v1.5-tiny")
    ids, mask = ref["input_ids"], ref["attention_mask"]
    with torch.inference_mode():
        packed, _ = _packed(model, ids, mask)
        n0 = int(mask[0].sum())
        # the second sequence alone, with the batch's rotary length (no NTK scaling here: any length is equal)
        alone = model.forward_packed(ids[1, : int(mask[1].sum())], torch.tensor([0, int(mask[1].sum())]))
    assert (packed[n0: n0 + alone.shape[0]] - alone).abs().max() <= TOL


def test_text_encoder_unpadded_equals_padded(fixtures_dir):
    from multimodal_embed.text import NomicTextEncoder

    folder = fixtures_dir / "text-v1.5-tiny"
    texts = ["a", "a somewhat longer sentence about aeroplanes and wings", "x " * 300, "", "mid length text here"]
    enc = NomicTextEncoder.from_folder(folder, unpadded=False)
    padded = enc.encode(texts, task="search_document", batch_size=8)
    enc.unpadded = True
    unpadded = enc.encode(texts, task="search_document", batch_size=8)
    assert enc.unpadded and (padded - unpadded).abs().max() <= 1e-5
    assert float((padded * unpadded).sum(-1).min()) >= 0.99999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_on_cuda_matches_padded(fixtures_dir, dtype):
    """On CUDA (varlen flash attention in bf16, nested SDPA in fp32): equal to the padded path within the
    dtype's precision."""
    model, ref = _load(fixtures_dir / "text-v1.5-tiny")
    model = model.to("cuda", dtype)
    ids, mask = ref["input_ids"].cuda(), ref["attention_mask"].cuda()
    with torch.inference_mode():
        padded = model(ids, mask).float()
        packed, keep = _packed(model, ids, mask)
    tol = 1e-4 if dtype == torch.float32 else 0.08  # bf16 hidden states of LayerNorm scale: ~2-3 bits
    assert (packed.float() - padded[keep]).abs().max() <= tol
    assert (packed.float() - ref["last_hidden_state"].cuda()[keep]).abs().max() <= tol
