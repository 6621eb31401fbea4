"""Shared by the adapter tests: the tiny nomic pair (random weights, real task prefixes), a model-call counter,
real photos from the bundled gallery and a file that is not an image."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.conftest import gallery_photos


class Calls:
    """Counts forward passes of an Embedder's towers (and the threads they ran on)."""

    def __init__(self, embedder):
        self.text: list[int] = []  # batch size of each text forward
        self.image: list[int] = []
        self.threads: set[int] = set()
        self._handles = []
        import torch

        if embedder.text_encoder is not None:  # the token embedding runs once per forward, padded or packed
            word = next(m for m in embedder.text_encoder.model.modules() if isinstance(m, torch.nn.Embedding))
            self._handles.append(word.register_forward_pre_hook(self._hook(self.text)))
        if embedder.vision_encoder is not None:
            self._handles.append(embedder.vision_encoder.model.register_forward_pre_hook(self._hook(self.image)))

    def _hook(self, log):
        def hook(module, args):
            log.append(int(args[0].shape[0]))  # batch size (tokens when the text batch is packed)
            self.threads.add(threading.get_ident())
        return hook

    def reset(self) -> None:
        self.text.clear()
        self.image.clear()
        self.threads.clear()

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture(scope="session")
def nomic_pair(fixtures_dir):
    """Text and vision towers trained together (tiny, random): the text tower has nomic's task prefixes."""
    from multimodal_embed import Embedder

    return Embedder.from_pretrained(text=str(fixtures_dir / "text-v1.5-tiny"),
                                    vision=str(fixtures_dir / "vision-v1.5-tiny"), device="cpu")


@pytest.fixture
def calls(nomic_pair):
    c = Calls(nomic_pair)
    yield c
    c.close()


@pytest.fixture(scope="session")
def photos() -> list[str]:
    return [str(p) for p in gallery_photos()[:5]]


@pytest.fixture
def not_an_image(tmp_path) -> str:
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"this is not a JPEG")
    return str(path)


TEXTS = ["a red bicycle leaning on a wall", "a cat asleep on a sofa", "the city skyline at night",
         "a bowl of fresh fruit"]


def close(a, b, tol: float = 1e-6) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and float(np.abs(a - b).max()) <= tol

