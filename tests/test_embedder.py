"""Embedder.count_tokens and Embedder.check_dimensionality: the rules the server (and the CLI's --dim) rely on."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal_embed import Embedder, InvalidInputError


@pytest.fixture(scope="module")
def nomic(fixtures_dir):
    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")


def test_count_tokens_includes_the_prefix_and_special_tokens(nomic):
    tok = nomic.text_encoder.tokenizer
    texts = ["a cat", "", "what is TSNE? " * 50]
    plain = [len(tok([t])["input_ids"][0]) for t in texts]
    assert nomic.count_tokens(texts, task=None) == plain
    prefixed = [len(tok(["search_query: " + t])["input_ids"][0]) for t in texts]
    assert nomic.count_tokens(texts, task="search_query") == prefixed
    assert all(p > q for p, q in zip(prefixed, plain))
    with pytest.raises(InvalidInputError, match="unknown task"):
        nomic.count_tokens(["x"], task="poetry")


def test_count_tokens_on_a_model_without_prefixes(minilm_dir):
    emb = Embedder.from_pretrained(str(minilm_dir), device="cpu")
    tok = emb.text_encoder.tokenizer
    assert emb.count_tokens(["a cat", "x " * 600]) == [len(ids) for ids in tok(["a cat", "x " * 600])["input_ids"]]
    assert emb.count_tokens(["x " * 600])[0] > emb.max_text_length


def test_check_dimensionality_for_text_and_image_only_models(nomic, fixtures_dir):
    assert nomic.check_dimensionality(None) == nomic.dim
    assert nomic.check_dimensionality(np.int64(nomic.dim)) == nomic.dim
    with pytest.raises(InvalidInputError):
        nomic.check_dimensionality(nomic.dim + 1)
    vision_only = Embedder.from_pretrained(vision=str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")
    assert vision_only.check_dimensionality(None) == vision_only.dim
    for bad in (vision_only.dim - 1, 0, "64", 1.5, True):
        with pytest.raises(InvalidInputError):
            vision_only.check_dimensionality(bad)
