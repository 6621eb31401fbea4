"""A plain BERT encoder (absolute positions, GELU, post-LayerNorm) and its fast tokenizer, without transformers.

The sentence-transformers BERT folders (all-MiniLM-L6-v2, the built-in model's text tower) load here: the same
parameter names as ``transformers.BertModel``, so ``model.safetensors`` loads as it is, and the same numbers
within fp32 rounding (tests/models/test_bert.py). Importing transformers and building its BertModel is most of a
cold ``mmembed search``'s start-up; this is not (benchmarks/cli_latency.py). Folders this does not cover
(another ``model_type``, relative positions, another activation, a tokenizer whose config overrides its
``tokenizer.json`` normaliser) are left to transformers: :func:`load_native_bert` returns None for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .packing import Packing, packed_attention

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> BertConfig | None:
        """The config of a plain BERT ``config.json``, or None when it is something this module does not run."""
        if (raw.get("model_type") != "bert" or raw.get("hidden_act", "gelu") != "gelu"
                or raw.get("position_embedding_type", "absolute") != "absolute" or raw.get("is_decoder")):
            return None
        try:
            return cls(**{k: raw[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size")},
                       **{k: raw[k] for k in ("max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                                              "pad_token_id") if raw.get(k) is not None})
        except KeyError:
            return None


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor, types: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:  # padded (B, L): the same positions in every row
            positions = torch.arange(ids.shape[1], device=ids.device)[None]
        x = self.word_embeddings(ids) + self.token_type_embeddings(types) + self.position_embeddings(positions)
        return self.LayerNorm(x)


class _Dense(nn.Module):  # "attention.output" / "output": dense, then LayerNorm of the residual sum
    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing | None) -> torch.Tensor:
        """``x``: ``(B, L, D)`` with a key mask, or ``(T, D)`` packed tokens with their :class:`Packing`."""
        *lead, d = x.shape
        q, k, v = (lin(x).view(*lead, self.heads, d // self.heads) for lin in (self.query, self.key, self.value))
        if isinstance(mask, Packing):
            out = packed_attention(q, k, v, mask)
        else:  # (B, L, H, Dh) -> (B, H, L, Dh) and back
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask).transpose(1, 2)
        return out.reshape(*lead, d)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Dense(c.hidden_size, c.hidden_size, c.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Dense(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing | None) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class BertModel(nn.Module):
    """``transformers.BertModel``'s encoder (no pooler): ``model(input_ids=, attention_mask=, token_type_ids=)``
    returns an object whose ``last_hidden_state`` is ``(batch, length, hidden)``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.embeddings(input_ids, types)
        # no data-dependent branch: the OpenVINO export traces this with an all-ones mask
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return SimpleNamespace(last_hidden_state=x)

    def forward_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unpadded forward: ``input_ids`` ``(T,)`` are sequences packed end to end, ``cu_seqlens`` ``(B + 1,)``
        their boundaries; returns the last hidden state ``(T, D)``, equal to :meth:`forward` on the right-padded
        batch at the real tokens, without computing the padding."""
        packing = Packing(cu_seqlens)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.embeddings(input_ids, types, packing.positions)
        for layer in self.encoder.layer:
            x = layer(x, packing)
        return x


class FastBertTokenizer:
    """The part of a transformers fast tokenizer the text encoders call (``tok(texts, ...)["input_ids"]``), on
    the ``tokenizers`` library alone: ``tokenizer.json`` with truncation and padding off."""

    model_max_length = 1 << 30

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()

    def __call__(self, texts: list[str], *, add_special_tokens: bool = True, **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]}


def _normaliser_matches(tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any]) -> bool:
    """Whether transformers would keep ``tokenizer.json``'s BERT normaliser as it is (it rebuilds it when the
    tokenizer config's lowercase / accent / Chinese-character options differ)."""
    norm = tokenizer_json.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer" or tokenizer_config.get("tokenizer_class") not in (
            "BertTokenizer", "BertTokenizerFast"):
        return False
    return (norm.get("lowercase") == tokenizer_config.get("do_lower_case", True)
            and norm.get("strip_accents") == tokenizer_config.get("strip_accents")
            and norm.get("handle_chinese_chars") == tokenizer_config.get("tokenize_chinese_chars", True))


def load_fast_tokenizer(folder: Path) -> FastBertTokenizer | None:
    """``folder``'s BERT ``tokenizer.json`` through ``tokenizers``, or None where transformers would read it
    differently (no tokenizer.json, another tokenizer class, options overriding the normaliser, added tokens)."""
    from ..utils import read_json

    if not (folder / "tokenizer.json").is_file() or not (folder / "tokenizer_config.json").is_file():
        return None
    spec, config = read_json(folder / "tokenizer.json"), read_json(folder / "tokenizer_config.json")
    if not _normaliser_matches(spec, config) or config.get("added_tokens_decoder") and any(
            not t.get("special") for t in config["added_tokens_decoder"].values()):
        return None
    if (folder / "added_tokens.json").is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return FastBertTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")))
    except Exception as exc:  # noqa: BLE001 - left to transformers, which names the problem
        logger.debug("%s: tokenizers cannot read tokenizer.json (%s); using transformers", folder, exc)
        return None


def load_native_bert(folder: Path, raw_config: dict[str, Any]) -> BertModel | None:
    """A plain BERT folder's model (``model.safetensors``) in :class:`BertModel`, or None when the config or the
    weights are not plain BERT's (transformers then loads it)."""
    from safetensors.torch import load_file

    config = BertConfig.from_hf_dict(raw_config)
    weights = folder / "model.safetensors"
    if config is None or not weights.is_file():
        return None
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - a damaged file: transformers reports it in its words
        logger.debug("%s: %s", weights, exc)
        return None
    state = {k.removeprefix("bert."): v for k, v in state.items()
             if not k.startswith(("pooler.", "bert.pooler.", "cls.")) and not k.endswith("position_ids")}
    model = BertModel(config)
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        logger.debug("%s: not a plain BERT state dict; using transformers", weights)
        return None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: {exc}") from None
    return model.eval()
