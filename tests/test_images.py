"""Image decoding and preprocessing on real files, and embed_images behaviour."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from multimodal_embed import Embedder, ImageDecodeError, IncompatibleModelsError
from multimodal_embed.images import ImagePreprocessor, load_image


def test_preprocessing_matches_reference_fixture(fixtures_dir):
    folder = fixtures_dir / "vision-v1.5-tiny"
    ref = load_file(folder / "reference_io.safetensors")
    img = load_image(folder / "synthetic_300x200.png")
    hw = ImagePreprocessor.from_folder(folder)(img)
    short = ImagePreprocessor.from_folder(folder, "shortest_edge")(img)
    assert np.abs(hw - ref["preproc_synthetic_300x200_size_hw224_pil"][0].numpy()).max() <= 1e-5
    assert np.abs(short - ref["preproc_synthetic_300x200_size_shortest224_pil"][0].numpy()).max() <= 1e-5
    assert np.abs(hw - short).max() > 1.0  # the two variants really differ on non-square images


def _real_photos():
    skimage_data = pytest.importorskip("skimage.data")
    photos = {name: getattr(skimage_data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    photos["camera_gray"] = skimage_data.camera()
    rgba = np.dstack([skimage_data.chelsea(), np.linspace(0, 255, 451, dtype=np.uint8)[None, :].repeat(300, 0)])
    photos["chelsea_rgba"] = rgba
    return photos


@pytest.mark.parametrize("config", ["preprocessor_config.nomic-embed-vision-v1.5.json",
                                    "preprocessor_config.nomic-embed-vision-v1.5.original-shortest-edge.json"])
def test_preprocessing_matches_transformers_pil_on_real_photos(fixtures_dir, config):
    from transformers import CLIPImageProcessorPil

    cfg = json.loads((fixtures_dir / config).read_text())
    theirs = CLIPImageProcessorPil(**{k: v for k, v in cfg.items() if not k.startswith("_")
                                      and k != "image_processor_type"})
    ours = ImagePreprocessor.from_dict(cfg)
    for name, arr in _real_photos().items():
        img = Image.fromarray(arr)
        want = theirs(images=img, return_tensors="np")["pixel_values"][0]
        got = ours(load_image(img))
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1e-5, name


def test_odd_images_manifest_in_one_batch(data_dir, fixtures_dir):
    folder = data_dir / "images-odd"
    manifest = json.loads((folder / "manifest.json").read_text())
    emb = Embedder.from_pretrained(vision=str(fixtures_dir / "vision-v1.5-tiny"))
    paths = [str(folder / e["file"]) for e in manifest]
    result = emb.embed_images_with_errors(paths, batch_size=16)
    failed = {f.index: f for f in result.failures}
    for i, entry in enumerate(manifest):
        assert (i in failed) == (entry["expected"] == "error"), (entry["file"], failed.get(i))
    assert sorted(result.indices + list(failed)) == list(range(len(paths)))
    assert result.vectors.shape == (len(result.indices), 64) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    for f in result.failures:
        assert f.reason and paths[f.index].split("/")[-1] in f.item
    # the good rows equal embedding those files alone
    k = len(result.indices) // 2
    alone = emb.embed_images([paths[result.indices[k]]])
    np.testing.assert_allclose(result.vectors[k], alone[0], atol=1e-5)
    # default mode: the first bad file raises, naming it
    bad = paths[result.failures[0].index]
    with pytest.raises(ImageDecodeError, match=bad.split("/")[-1]):
        emb.embed_images([paths[result.indices[0]], bad])


@pytest.mark.parametrize("kind", ["Landscape", "Portrait"])
def test_exif_orientation(data_dir, kind):
    folder = data_dir / "images-odd" / "exif_orientation_jpeg"
    base = np.asarray(load_image(folder / f"{kind}_1.jpg"), dtype=np.float32)
    for k in range(2, 9):
        img = np.asarray(load_image(folder / f"{kind}_{k}.jpg"), dtype=np.float32)
        assert img.shape == base.shape, k
        assert np.abs(img - base).mean() < 8, k  # equal up to JPEG noise


def test_modes_and_inputs(fixtures_dir, tmp_path):
    assert load_image(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("RGBA", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("F", (4, 4), 1.0)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    with open(path, "rb") as fh:
        variants = [str(path), path, buf.getvalue(), fh, src, np.asarray(src)]
        arrays = [np.asarray(load_image(v)) for v in variants]
    for a in arrays[1:]:
        np.testing.assert_array_equal(a, arrays[0])
    with pytest.raises(ImageDecodeError, match="decompression"):
        load_image(Image.new("L", (200, 200)), max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="unsupported image input"):
        load_image(3.5)
    with pytest.raises(ImageDecodeError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))


def test_embed_images_equals_model_on_preprocessed_pixels(fixtures_dir):
    folder = fixtures_dir / "vision-v1.5-tiny"
    emb = Embedder.from_pretrained(vision=str(folder))
    photos = [Image.fromarray(a) for a in list(_real_photos().values())[:4]]
    got = emb.embed_images(photos, batch_size=3, num_workers=2)
    pre = ImagePreprocessor.from_folder(folder)
    pixels = torch.from_numpy(np.stack([pre(load_image(p)) for p in photos]))
    with torch.inference_mode():
        want = torch.nn.functional.normalize(emb.vision_encoder.model(pixels), dim=-1).numpy()
    assert got.dtype == np.float32 and got.shape == (4, 64)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert emb.embed_images([]).shape == (0, 64)


def test_pairing_rules(fixtures_dir):
    text15, text1 = fixtures_dir / "text-v1.5-tiny", fixtures_dir / "text-v1-tiny"
    vision = fixtures_dir / "vision-v1.5-tiny"
    emb = Embedder.from_pretrained(text=str(text15), vision=str(vision))
    assert emb.embed_text(["a cat"], task="search_query").shape == emb.embed_images(
        [np.zeros((8, 8, 3), np.uint8)]).shape
    with pytest.raises(IncompatibleModelsError, match="v1.5"):
        Embedder.from_pretrained(text=str(text1), vision=str(vision))
    Embedder.from_pretrained(text=str(text1), vision=str(vision), allow_mismatched_towers=True)
    assert emb.info["vision"]["preprocessing"]["size"] == {"height": 224, "width": 224}


def test_jpeg_draft_within_stated_tolerance_and_off_for_parity(data_dir, fixtures_dir):
    """Draft (DCT-scaled) JPEG decoding keeps 2x the target size: pixels within 0.14 (normalised units) of the
    exact decode on real photos, cosine to the exact embedding >= 0.9999; jpeg_draft=False is the exact path."""
    photos = sorted((data_dir / "images-odd" / "exif_orientation_jpeg").glob("[LP]*_[1368].jpg"))
    folder = fixtures_dir / "vision-v1.5-tiny"
    pre = ImagePreprocessor.from_folder(folder)
    draft = pre.draft_size()
    assert draft == (448, 448)
    for path in photos:
        small = load_image(path, draft=draft)
        full = load_image(path)
        assert full.size[0] * full.size[1] > small.size[0] * small.size[1] >= 448 * 448  # DCT scaling happened
        assert np.abs(pre(small) - pre(full)).max() < 0.14
    fast = Embedder.from_pretrained(vision=str(folder))
    exact = Embedder.from_pretrained(vision=str(folder), jpeg_draft=False)
    a, b = fast.embed_images(photos), exact.embed_images(photos)
    want = exact.vision_encoder.model(torch.from_numpy(np.stack([pre(load_image(p)) for p in photos])))
    want = torch.nn.functional.normalize(want, dim=-1).detach().numpy()
    np.testing.assert_allclose(b, want, atol=1e-6)
    assert np.abs(a - b).max() > 0
    assert (a * b).sum(axis=1).min() >= 0.9999


def test_bfloat16_on_cpu_within_stated_tolerance(fixtures_dir):
    """dtype="bfloat16" is the fast CPU path (2.8x on the full-size tower): cosine to fp32 >= 0.999."""
    folder = fixtures_dir / "vision-v1.5-tiny"
    photos = [Image.fromarray(a) for a in _real_photos().values()]
    exact = Embedder.from_pretrained(vision=str(folder)).embed_images(photos)
    fast = Embedder.from_pretrained(vision=str(folder), dtype="bfloat16")
    assert fast.info["dtype"] == "bfloat16"
    got = fast.embed_images(photos)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() > 0
    assert (got * exact).sum(axis=1).min() >= 0.999


def test_device_side_normalisation_is_bit_identical(fixtures_dir):
    for name in ("preprocessor_config.nomic-embed-vision-v1.5.json",
                 "preprocessor_config.nomic-embed-vision-v1.5.original-shortest-edge.json"):
        pre = ImagePreprocessor.from_dict(json.loads((fixtures_dir / name).read_text()))
        photos = [load_image(Image.fromarray(a)) for a in _real_photos().values()]  # RGB, as in the pipeline
        want = np.stack([pre(p) for p in photos])
        got = pre.normalize(torch.from_numpy(np.stack([pre.to_uint8(p) for p in photos]))).numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
