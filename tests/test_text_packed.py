"""Packed (unpadded) text batches: the same vectors as padded batches, whatever a text is batched with."""

from __future__ import annotations

import pytest
import torch

from multimodal_embed.batching import plan_batches
from multimodal_embed.models.bert import BertConfig, BertModel
from multimodal_embed.models.packing import Packing, packed_attention, segment_reduce
from multimodal_embed.text import SentenceTransformerTextEncoder

TEXTS = ["a frog", "a frog on a log", "the frog", "a red fox jumps", "word " * 40, "", "tiny", "x y",
         "a much longer sentence about frogs, logs, foxes and the rivers where they live " * 3]


def _tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64)).eval()
    for p in model.parameters():  # random, not the identity LayerNorms: every position and token matters
        p.data.normal_(0, 0.5)
    return model


def _batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 50, (n,))
        mask[i, :n] = 1
    return ids, mask


@pytest.mark.parametrize("lengths", [[7, 7, 7], [9, 4, 4, 1, 6, 6, 6, 2], [1], [20, 3]])
def test_bert_packed_forward_equals_padded_at_real_tokens(lengths):
    model = _tiny_bert()
    ids, mask = _batch(lengths)
    keep = mask.bool()
    cu = torch.nn.functional.pad(keep.sum(1).cumsum(0), (1, 0))
    with torch.inference_mode():
        padded = model(input_ids=ids, attention_mask=mask).last_hidden_state
        packed = model.forward_packed(ids[keep], cu)
    assert packed.shape == (sum(lengths), 32)
    torch.testing.assert_close(packed, padded[keep], atol=1e-5, rtol=0)


def test_packed_attention_never_crosses_sequences():
    """Runs of equal length share one call; changing one sequence changes no other sequence's output."""
    torch.manual_seed(1)
    cu = torch.tensor([0, 3, 6, 9, 11, 16])  # runs: 3 x len 3, then 2, then 5
    packing = Packing(cu)
    assert packing.runs == [(0, 3, 3), (9, 1, 2), (11, 1, 5)]
    q, k, v = (torch.randn(16, 2, 4) for _ in range(3))
    out = packed_attention(q, k, v, packing)
    k2, v2 = k.clone(), v.clone()
    k2[3:6] += 5.0
    v2[3:6] -= 3.0
    out2 = packed_attention(q, k2, v2, packing)
    torch.testing.assert_close(out[:3], out2[:3])
    torch.testing.assert_close(out[6:], out2[6:])
    assert not torch.allclose(out[3:6], out2[3:6])
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):  # each sequence = attention over itself alone
        alone = torch.nn.functional.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (q, k, v)))
        torch.testing.assert_close(out[s:e], alone.transpose(0, 1), atol=1e-6, rtol=0)


def test_plan_batches_packed_counts_real_tokens():
    lengths = [100, 10, 10, 10, 90, 5]
    padded = plan_batches(lengths, max_batch_size=32, max_tokens=200)
    packed = plan_batches(lengths, max_batch_size=32, max_tokens=200, packed=True)
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in padded)
    assert all(sum(lengths[i] for i in b) <= 200 for b in packed)
    assert sorted(i for b in packed for i in b) == list(range(6))
    # no padding counted: fewer, fuller batches
    assert plan_batches([100, 90, 5, 5], max_batch_size=32, max_tokens=200) == [[0, 1], [2, 3]]
    assert plan_batches([100, 90, 5, 5], max_batch_size=32, max_tokens=200, packed=True) == [[0, 1, 2, 3]]
    assert plan_batches(lengths, max_batch_size=2, max_tokens=10_000, packed=True) == [[0, 4], [1, 2], [3, 5]]


@pytest.mark.parametrize("pooling", ["mean_tokens", "cls_token", "max_tokens"])
def test_encoder_packed_equals_padded_for_every_pooling(minilm_dir, pooling):
    enc = SentenceTransformerTextEncoder.from_folder(minilm_dir)
    enc.pooling = pooling
    assert enc.packed
    packed = enc.encode(TEXTS, batch_size=4)
    enc.unpadded = False
    assert not enc.packed
    padded = enc.encode(TEXTS, batch_size=4)
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=0)


def test_a_text_gets_the_same_vector_whatever_it_is_batched_with(minilm_dir):
    """What a server relies on: batch neighbours and the token budget change nothing beyond fp32 rounding."""
    enc = SentenceTransformerTextEncoder.from_folder(minilm_dir)
    alone = torch.cat([enc.encode([t]) for t in TEXTS])
    for batch_size, max_tokens in ((64, None), (3, None), (64, 40), (64, 100_000)):
        together = enc.encode(TEXTS, batch_size=batch_size, max_tokens=max_tokens)
        torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_models_without_forward_packed_run_padded(minilm_dir):
    from transformers import AutoModel

    enc = SentenceTransformerTextEncoder.from_folder(minilm_dir)
    want = enc.encode(TEXTS)
    enc.model = AutoModel.from_pretrained(str(minilm_dir), attn_implementation="sdpa").eval()
    assert not enc.packed
    torch.testing.assert_close(enc.encode(TEXTS), want, atol=2e-6, rtol=0)


def test_segment_reduce_is_as_accurate_as_a_padded_sum():
    """Mean pooling of thousands of tokens: the packed sum keeps the padded sum's accuracy (index_add_, which
    accumulates row by row, was ~20x off: 4e-6 on 8192 rows)."""
    torch.manual_seed(0)
    lengths = [8192, 3000, 3000, 17, 1]
    x = torch.randn(sum(lengths), 64, dtype=torch.float64) * 2 + 1
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    exact = torch.stack([x[s:e].sum(0) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
    got = segment_reduce(x.float(), cu).double()
    assert float(((got - exact) / torch.tensor(lengths)[:, None]).abs().max()) <= 1e-6
    highest = torch.stack([x[s:e].amax(0) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert torch.equal(segment_reduce(x, cu, "amax"), highest)  # max pooling: exact


@pytest.mark.parametrize("long_text", ["truncate", "mean"])
def test_long_nomic_texts_packed_equal_padded(fixtures_dir, long_text):
    """Texts past the trained 2,048 positions (dynamic-NTK rotary, alone in their batch) and past the 8,192-token
    context (cut or chunked), mixed with short ones: packed = padded."""
    from multimodal_embed.text import NomicTextEncoder

    enc = NomicTextEncoder.from_folder(fixtures_dir / "text-v1.5-tiny")
    texts = ["word " * 3000, "frog " * 2100, "short", "a bit longer text " * 50, "x " * 9000, "y " * 1500]
    packed = enc.encode(texts, task="search_document", long_text=long_text)
    enc.unpadded = False
    padded = enc.encode(texts, task="search_document", long_text=long_text)
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=0)
