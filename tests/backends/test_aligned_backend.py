"""The aligned backend's CPU layout: the built-in model's trunk runs channels-last, with the NCHW numbers."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from multimodal_embed import Embedder
from multimodal_embed.backends.aligned import BUILTIN_DIR
from multimodal_embed.models.aligned import read_aligned_folder

from ..conftest import gallery_photos


def test_builtin_trunk_runs_channels_last_with_the_nchw_numbers():
    emb = Embedder.from_pretrained("minilm-efficientnet-lite0")
    model = emb.vision_encoder.model
    convs = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    seen = []
    hook = convs[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(
        memory_format=torch.channels_last)))
    paths = [str(p) for p in gallery_photos()[::5][:6]]
    got = emb.embed_images(paths)
    hook.remove()
    assert seen and all(seen)  # the pixels reach the first convolution in channels-last layout too
    folder = BUILTIN_DIR / "minilm-efficientnet-lite0"
    plain = read_aligned_folder(folder).build_model(folder).eval()  # NCHW, as trained
    pre = emb.vision_encoder.preprocessor
    pixels = torch.stack([torch.from_numpy(pre(Image.open(p).convert("RGB"))) for p in paths])
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(plain(pixels), dim=-1).numpy()
    assert np.abs(got - ref).max() < 1e-5 and not np.array_equal(got, ref)
