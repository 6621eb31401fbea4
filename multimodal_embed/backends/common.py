"""What the CLIP-family backends share: a text encoder with a fixed context (``Scoring`` is re-exported from
:mod:`multimodal_embed.encoders`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..encoders import Scoring
from ..errors import InvalidInputError
from ..text import check_texts
from ..utils import ModelHolder, as_int, check_batch_size, check_max_tokens, progress

logger = logging.getLogger(__name__)


class ContextTextEncoder(ModelHolder):
    """Base of the CLIP-style text towers: a tokenizer with a fixed context, no task prefixes, no Matryoshka.

    Subclasses implement :meth:`token_lengths` (tokens each text needs, special tokens included),
    :meth:`tokenize` (a batch to model inputs, cut to ``max_length``) and :meth:`features`.
    """

    prefixes: dict[str, str] = {}  # noqa: RUF012 - read-only
    matryoshka_dims: tuple[int, ...] = ()
    model: torch.nn.Module
    max_length: int
    dim: int
    scoring: Scoring = Scoring()
    pad_to_max_length = False  # SigLIP pools the last position: it must see max_length tokens, as in training

    def token_lengths(self, texts: list[str]) -> list[int]:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def normalize_text(self, text: str) -> str:
        return text

    @property
    def tasks(self) -> list[str]:
        return []

    def encode(
        self,
        texts: Sequence[str],
        *,
        task: str | None = None,
        dimensionality: int | None = None,
        batch_size: int = 32,
        max_tokens: int | None = None,
        long_text: str = "truncate",
        show_progress: bool | None = None,
    ) -> torch.Tensor:
        """Embed ``texts`` into a ``(len(texts), d)`` float32 tensor of unit rows, in input order.

        ``task`` is accepted for API symmetry and adds nothing (these models have no task prefixes).
        """
        texts = [self.normalize_text(t) for t in check_texts(texts, max_length=self.max_length)]
        check_max_tokens(max_tokens)  # accepted for API symmetry: batches are bounded by batch_size
        if dimensionality is not None and as_int(dimensionality, "dimensionality") != self.dim:
            raise InvalidInputError(f"this model has a fixed dimension of {self.dim}; got dimensionality="
                                    f"{dimensionality!r}")
        if long_text != "truncate":
            raise InvalidInputError(f"long_text={long_text!r} is not supported by {type(self).__name__} (its "
                                    f"context is {self.max_length} tokens); use 'truncate'")
        check_batch_size(batch_size)
        if not texts:
            return torch.empty(0, self.dim)
        lengths = self.token_lengths(texts)
        self.truncations.add(sum(n > self.max_length for n in lengths), len(texts), self.max_length)
        # length-sorted batches waste less on padding (results are returned in input order)
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        with torch.inference_mode():
            for batch in progress(batches, show_progress, desc="embed text", unit="batch"):
                inputs = {k: v.to(self.device) for k, v in self.tokenize([texts[i] for i in batch]).items()}
                out[batch] = F.normalize(self.features(inputs).float(), dim=-1).cpu()
        return out


def pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns model outputs from ``get_*_features``; older versions return the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


__all__ = ["ContextTextEncoder", "Scoring", "pooled"]
