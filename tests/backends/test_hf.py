"""Hugging Face CLIP / SigLIP / SigLIP2 backend: equal to get_text_features / get_image_features after
normalisation, with the processor settings the backend chose (SigLIP: padding to max_length)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from PIL import Image

from multimodal_embed import Embedder
from multimodal_embed.backends.common import pooled
from multimodal_embed.backends.hf import canonicalize_siglip
from multimodal_embed.images import to_rgb
from tests.backends.tiny import TEXTS, hf_folder

MODELS = {"clip": tf.CLIPModel, "siglip": tf.SiglipModel, "siglip2": tf.Siglip2Model}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: hf_folder(root, family) for family in MODELS}


def _images():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (33, 21, 4), dtype=np.uint8), "RGBA"),
            Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16))]


def _reference(family, folder, texts, images):
    model = MODELS[family].from_pretrained(str(folder)).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(folder))
    proc = tf.AutoImageProcessor.from_pretrained(str(folder))
    if family == "clip":
        enc = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    else:  # as trained and as the model cards say: pad to 64; SigLIP2 on lower-cased text
        texts = [t.lower() for t in texts] if family == "siglip2" else texts
        enc = tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    pix = proc(images=[to_rgb(im) for im in images], return_tensors="pt")
    with torch.no_grad():
        t = F.normalize(pooled(model.get_text_features(**enc)), dim=-1)
        i = F.normalize(pooled(model.get_image_features(**pix)), dim=-1)
    return model, t.numpy(), i.numpy()


@pytest.mark.parametrize("family", list(MODELS))
def test_hf_equals_reference(folders, family):
    folder = folders[family]
    emb = Embedder.from_pretrained(f"hf:{folder}")
    images = _images()
    model, want_t, want_i = _reference(family, folder, TEXTS, images)
    got_t = emb.embed_text(TEXTS, batch_size=2)
    got_i = emb.embed_images(images, batch_size=2)
    assert got_t.dtype == np.float32 and got_i.dtype == np.float32
    np.testing.assert_allclose(got_t, want_t, atol=1e-6)
    np.testing.assert_allclose(got_i, want_i, atol=1e-6)
    assert emb.info["family"] == f"hf-{family}"
    assert emb.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    if family == "clip":
        assert emb.logit_bias is None and emb.scoring.kind == "softmax" and emb.max_text_length == 77
    else:
        assert emb.logit_bias == pytest.approx(float(model.logit_bias.detach().reshape(-1)[0]))
        assert emb.scoring.kind == "sigmoid" and emb.max_text_length == 64


def test_siglip_pads_to_max_length_and_canonicalises(folders):
    emb = Embedder.from_pretrained(str(folders["siglip"]))  # family detected from config.json
    enc = emb.text_encoder.tokenize(["a cat"])
    assert enc["input_ids"].shape == (1, 64)
    a, b = emb.embed_text(["A photo, of a CAT!", "a photo of a cat"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert canonicalize_siglip("  A  photo, of a CAT! ") == "a photo of a cat"


def test_siglip2_lowercases(folders):
    emb = Embedder.from_pretrained(f"hf:{folders['siglip2']}")
    a, b = emb.embed_text(["A Photo Of A Cat", "a photo of a cat"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_hf_bad_image_is_reported_not_fatal(folders):
    emb = Embedder.from_pretrained(f"hf:{folders['clip']}")
    res = emb.embed_images_with_errors([_images()[0], b"\x89PNG broken", _images()[1]])
    assert res.indices == [0, 2] and [f.index for f in res.failures] == [1]
    assert res.vectors.shape == (2, 24)


def test_pickle_checkpoint_loads_through_weights_only(folders, tmp_path):
    """A folder with only pytorch_model.bin (old hub uploads) loads, and equals the safetensors original."""
    import shutil

    src = folders["clip"]
    dst = tmp_path / "clip_bin"
    shutil.copytree(src, dst)
    model = tf.CLIPModel.from_pretrained(str(src))
    (dst / "model.safetensors").unlink()
    torch.save(model.state_dict(), dst / "pytorch_model.bin")
    a = Embedder.from_pretrained(f"hf:{src}").embed_text(TEXTS)
    b = Embedder.from_pretrained(f"hf:{dst}").embed_text(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-6)
