"""open_clip backend: the public API equals open_clip's own encode_text / encode_image after normalisation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multimodal_embed import Embedder, ModelNotFoundError
from tests.backends.tiny import TEXTS, open_clip_folder

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return open_clip_folder(tmp_path_factory.mktemp("oc"))


def _images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (30, 50, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L")
    return [rgb, rgba, gray]


def test_open_clip_equals_reference(folder):
    emb = Embedder.from_pretrained(f"open_clip:local-dir:{folder}")
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    ref.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        want_t = F.normalize(ref.encode_text(tokenizer(TEXTS)), dim=-1).numpy()
    got_t = emb.embed_text(TEXTS, batch_size=2)
    assert got_t.dtype == np.float32 and got_t.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got_t, want_t, atol=1e-6)

    images = _images()
    # the reference: the same robust decoding (RGBA composited on white), then open_clip's own transform
    from multimodal_embed.images import to_rgb

    with torch.no_grad():
        want_i = F.normalize(ref.encode_image(torch.stack([preprocess(to_rgb(im)) for im in images])), dim=-1)
    got_i = emb.embed_images(images, batch_size=2)
    np.testing.assert_allclose(got_i, want_i.numpy(), atol=1e-6)

    assert emb.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    assert emb.logit_bias is None and emb.scoring.kind == "softmax"
    assert emb.max_text_length == 16 and emb.query_task is None
    assert emb.info["family"] == "open_clip" and emb.info["modalities"] == ["text", "image"]
    assert emb.info["vision"]["preprocessing"]["mean"] == [0.5, 0.4, 0.3]


def test_open_clip_folder_detected_and_truncation_warned(folder, caplog):
    emb = Embedder.from_pretrained(str(folder))
    assert emb.info["family"] == "open_clip"
    with caplog.at_level(logging.WARNING):
        out = emb.embed_text(["short", "word " * 40, "word " * 50])
    assert "2 of 3 texts were longer than 16 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        emb.embed_text(["word " * 40])  # the same model again: debug level only
    assert "truncated" not in caplog.text
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    res = emb.embed_images_with_errors([_images()[0], b"not an image"])
    assert res.indices == [0] and res.failures[0].index == 1


def test_open_clip_sigmoid_bias(tmp_path):
    folder = open_clip_folder(tmp_path, siglip_bias=True)
    emb = Embedder.from_pretrained(f"open_clip:local-dir:{folder}")
    assert emb.logit_bias == pytest.approx(-10.0, abs=0.1) and emb.scoring.kind == "sigmoid"


def test_open_clip_unknown_architecture():
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        Embedder.from_pretrained("open_clip:ViT-B-33/laion2b_s34b_b79k")
    with pytest.raises(ModelNotFoundError, match="pretrained tag"):
        Embedder.from_pretrained("open_clip:ViT-B-32")
