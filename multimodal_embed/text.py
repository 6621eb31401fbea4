"""Text encoders: nomic-embed-text (v1, v1.5, v2-moe) and sentence-transformers style BERT folders.

Encoders return raw ``torch.float32`` tensors with unit rows; :class:`multimodal_embed.Embedder` turns them
into numpy arrays. Both encoders share :class:`TokenTextEncoder`, which does the tokenising, task prefixes,
long-text policy, length-sorted token-budget batching and order restoration.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .batching import plan_batches
from .encoders import Matryoshka, Scoring, as_batch, matryoshka_size
from .errors import InputTypeError, InvalidInputError
from .models.nomic_bert import NomicBertConfig, NomicBertModel, convert_state_dict, load_converted
from .models.packing import segment_reduce
from .utils import (
    ModelHolder,
    check_batch_size,
    check_max_tokens,
    load_safetensors,
    load_tokenizer,
    progress,
    read_json,
)

logger = logging.getLogger(__name__)

NOMIC_TASK_PREFIXES: dict[str, str] = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "clustering": "clustering: ",
    "classification": "classification: ",
}
MATRYOSHKA_DIMS = (768, 512, 256, 128, 64)
NOMIC_V15_MATRYOSHKA = Matryoshka(MATRYOSHKA_DIMS, layer_norm=True)  # mean -> LayerNorm -> cut -> L2
NOMIC_V2_MOE_MATRYOSHKA = Matryoshka((768, 256))  # mean -> cut -> L2 (model card; no LayerNorm)
NOMIC_V2_MOE_MAX_LENGTH = 512  # the card's maximum input length (fine-tuned at 512, plain RoPE)
LONG_TEXT_MODES = ("truncate", "mean")


# How many characters one token may take, on average over a text's head, for the text to be truncated exactly
# (English averages ~4.5 characters a token in BERT's WordPiece and CLIP's BPE, code and URLs 2-3, CJK ~1). A text
# in "truncate" mode is cut to ``max_length * MAX_CHARS_PER_TOKEN`` characters (at whitespace) before the tokenizer
# sees it: tokenizing costs ~210 bytes of memory a character, so a 10 MB text cost 2 GB to keep its first 8192
# tokens. The cut changes nothing unless those characters hold fewer than ``max_length`` tokens: only texts made
# mostly of whitespace runs or of words over 100 characters (each one [UNK]) lose tokens they would have kept.
MAX_CHARS_PER_TOKEN = 32
# long_text="mean" embeds the whole text (every chunk of max_length tokens), so no cut is exact: longer texts
# are refused, naming the item (the same limit as a --text-file line: a whole document, ~250k tokens of English)
MAX_TEXT_CHARS = 1_000_000
# Texts are tokenized in groups of at most this many characters, so a long list of long texts costs one group
TOKENIZE_GROUP_CHARS = 1 << 20


def text_char_cap(max_length: int, long_text: str = "truncate") -> int:
    """The most characters of one text the tokenizer is given for a tower with a ``max_length``-token context:
    ``max_length * MAX_CHARS_PER_TOKEN`` to truncate it, at least :data:`MAX_TEXT_CHARS` to embed it whole."""
    cap = int(max_length) * MAX_CHARS_PER_TOKEN
    return max(cap, MAX_TEXT_CHARS) if long_text == "mean" else cap


def bound_text(text: str, cap: int) -> str:
    """``text`` itself, or its first ``cap`` characters ended at the last whitespace of their final eighth, so that no
    word is split: the tokens of what is kept are the full text's own (tokenizers split words at whitespace)."""
    if len(text) <= cap:
        return text
    lo = cap - cap // 8
    end = max(text.rfind(c, lo, cap) for c in " \n\t\r")
    return text[:end if end > 0 else cap]


def check_texts(texts: Sequence[str], *, max_length: int | None = None, long_text: str = "truncate") -> list[str]:
    """One str or a list of str (:func:`~multimodal_embed.encoders.as_batch`, the rule images follow too) as a
    list, or :class:`InputTypeError` naming the first item that is not a str.

    The one gate before every tokenizer of the package: with ``max_length`` (the tower's context in tokens), each
    text is bounded first (:func:`text_char_cap`): cut where it cannot change the first ``max_length`` tokens
    (``long_text="truncate"``), or refused with :class:`InvalidInputError` naming it (``"mean"``)."""
    if isinstance(texts, (Mapping, set, frozenset)):  # a dict would give its keys, a set no stable order
        raise InputTypeError(f"texts must be a str or a list of str, not a {type(texts).__name__}")
    texts = as_batch(texts, "texts")
    cap = None if max_length is None else text_char_cap(max_length, long_text)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputTypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if cap is not None and len(t) > cap:
            if long_text == "mean":
                raise InvalidInputError(f"texts[{i}] has {len(t)} characters, more than long_text='mean' embeds "
                                        f"whole ({cap}); split it, or use long_text='truncate'")
            texts[i] = t = bound_text(t, cap)
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInputError(
                    f"texts[{i}] is not valid Unicode: lone surrogate {t[exc.start]!r} at position {exc.start} "
                    f"(decode the source with errors='replace', or remove it)"
                ) from None
    return texts


def char_groups(texts: Sequence[str], budget: int = TOKENIZE_GROUP_CHARS) -> list[list[str]]:
    """``texts`` in consecutive groups of at most ``budget`` characters (a longer text alone): one tokenizer call
    each, so the tokenizer's working memory follows the group, not the whole list."""
    groups: list[list[str]] = []
    size = budget + 1
    for t in texts:
        if size + len(t) > budget:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += len(t)
    return groups


class TokenTextEncoder(ModelHolder):
    """Shared machinery of the transformer text encoders of this package.

    Subclasses set ``self.model``, ``self.tokenizer``, ``self.max_length``, ``self.dim`` and implement
    :meth:`_hidden` (token states) and :meth:`_finish` (pooled vectors -> final unit vectors).

    Batches run *packed* (sequences end to end, no compute on padding, batched by their real token count) when
    the model has ``forward_packed`` (the native BERT and NomicBERT modules) and ``unpadded`` is not False;
    otherwise right-padded with a mask (transformers and exported graphs). Both give the same vectors within
    fp32 rounding (tests/test_text_packed.py).
    """

    unpadded: bool | None = None  # None: packed wherever the model supports it; False: always padded

    model: nn.Module
    tokenizer: Any
    max_length: int
    dim: int
    prefixes: ClassVar[dict[str, str]] = {}
    matryoshka_dims: tuple[int, ...] = ()
    scoring: Scoring = Scoring()  # no logit scale: nomic and sentence-transformers checkpoints have none

    @property
    def default_max_tokens(self) -> int:
        # Measured (benchmarks/RESULTS.md): on CPU ~2048-token batches run fastest per token, packed or padded
        # (larger ones fall out of cache); accelerators want large batches.
        return 2048 if self.device.type == "cpu" else 32768

    # -- hooks -------------------------------------------------------------------------------------------
    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _hidden_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, width: int) -> torch.Tensor:
        """Token states ``(T, D)`` of sequences packed end to end (``width``: the longest of them)."""
        return self.model.forward_packed(input_ids, cu_seqlens)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(torch.float32).unsqueeze(-1)
        return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def _pool_packed(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """:meth:`_pool` of packed states ``(T, D)``: mean over each sequence's tokens."""
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp(min=1)
        return segment_reduce(hidden.float(), cu_seqlens) / lengths[:, None].float()

    @property
    def packed(self) -> bool:
        """Whether batches run packed (see the class docstring)."""
        return self.unpadded is not False and callable(getattr(self.model, "forward_packed", None))

    def _finish(self, pooled: torch.Tensor, dimensionality: int | None) -> torch.Tensor:
        return F.normalize(pooled, dim=-1)

    def _solo_length(self, n: int) -> bool:
        return False

    @property
    def tasks(self) -> list[str]:
        return sorted(NOMIC_TASK_PREFIXES)

    # -- public ------------------------------------------------------------------------------------------
    def check_dimensionality(self, dimensionality: int | None) -> int:
        return matryoshka_size(dimensionality, self.dim, self.matryoshka_dims)

    def apply_prefix(self, texts: Sequence[str], task: str | None) -> list[str]:
        if task is not None and task not in self.tasks:
            raise InvalidInputError(f"unknown task {task!r}; valid tasks are {self.tasks} or None")
        prefix = self.prefixes.get(task, "") if task is not None else ""
        if not prefix:
            return list(texts)
        return [t if t.startswith(prefix) else prefix + t for t in texts]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of texts already bounded by :func:`check_texts`, special tokens included, nothing cut."""
        out: list[list[int]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group in char_groups(texts):
                enc = self.tokenizer(group, add_special_tokens=True, truncation=False, return_attention_mask=False,
                                     return_token_type_ids=False, verbose=False)
                out.extend(list(ids) for ids in enc["input_ids"])
        return out

    def _split_long(self, ids: list[int], long_text: str) -> list[list[int]]:
        """Cut a token sequence to ``max_length`` (keeping the final special token), or split it in chunks."""
        if len(ids) <= self.max_length:
            return [ids]
        head, body, tail = ids[:1], ids[1:-1], ids[-1:]
        room = self.max_length - 2
        if long_text == "truncate":
            return [head + body[:room] + tail]
        return [head + body[i : i + room] + tail for i in range(0, len(body), room)]

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
        """Embed ``texts`` and return a ``(len(texts), d)`` float32 tensor of unit rows, in input order."""
        if long_text not in LONG_TEXT_MODES:
            raise InvalidInputError(f"long_text must be one of {LONG_TEXT_MODES}, got {long_text!r}")
        texts = check_texts(texts, max_length=self.max_length, long_text=long_text)
        check_batch_size(batch_size)
        max_tokens = check_max_tokens(max_tokens)
        d = self.check_dimensionality(dimensionality)
        if not texts:
            return torch.empty(0, d)

        token_lists = self.tokenize(self.apply_prefix(texts, task))
        pieces: list[list[int]] = []  # token sequences actually run through the model
        owner: list[int] = []  # pieces[j] belongs to texts[owner[j]]
        n_cut = 0
        for i, ids in enumerate(token_lists):
            parts = self._split_long(ids, long_text)
            n_cut += len(ids) > self.max_length and long_text == "truncate"
            pieces.extend(parts)
            owner.extend([i] * len(parts))
        self.truncations.add(n_cut, len(texts), self.max_length, " (use long_text='mean' to embed them whole)")

        lengths = [len(p) for p in pieces]
        packed = self.packed
        batches = plan_batches(
            lengths, max_batch_size=batch_size, max_tokens=max(max_tokens or self.default_max_tokens,
                                                               max(lengths)),
            solo=self._solo_length, packed=packed,
        )
        pooled = torch.empty(len(pieces), self.dim, dtype=torch.float32)
        device = self.device
        with torch.inference_mode():
            for batch in progress(batches, show_progress, desc="embed text", unit="batch"):
                width = max(lengths[j] for j in batch)
                if packed:
                    ids = torch.tensor(list(itertools.chain.from_iterable(pieces[j] for j in batch)), dtype=torch.long)
                    cu = torch.tensor([0, *itertools.accumulate(lengths[j] for j in batch)], dtype=torch.long)
                    ids, cu = ids.to(device), cu.to(device)
                    pooled[batch] = self._pool_packed(self._hidden_packed(ids, cu, width), cu).cpu()
                    continue
                ids = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for row, j in enumerate(batch):
                    ids[row, : lengths[j]] = torch.tensor(pieces[j])
                    mask[row, : lengths[j]] = 1
                ids, mask = ids.to(device), mask.to(device)
                hidden = self._hidden(ids, mask)
                pooled[batch] = self._pool(hidden, mask).cpu()

            if len(pieces) != len(texts):  # long_text="mean": token-weighted mean of the chunks' pooled states
                weights = torch.tensor(lengths, dtype=torch.float32)
                owner_t = torch.tensor(owner)
                total = torch.zeros(len(texts), self.dim).index_add_(0, owner_t, pooled * weights[:, None])
                count = torch.zeros(len(texts)).index_add_(0, owner_t, weights)
                pooled = total / count[:, None]
            return self._finish(pooled, d)


class NomicTextEncoder(TokenTextEncoder):
    """nomic-embed-text v1 / v1.5 / v2-moe: task prefixes, mean pooling, and the model's Matryoshka recipe
    (v1.5: LayerNorm, cut, L2; v2-moe: cut, L2; v1: none)."""

    prefixes = NOMIC_TASK_PREFIXES
    export_recipe: str | None = "nomic"

    def __init__(self, model: NomicBertModel, tokenizer: Any, *, matryoshka: bool | Matryoshka | None,
                 max_length: int = 8192, unpadded: bool | None = None):
        self.model = model.eval()
        self.unpadded = unpadded
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_length = max_length
        self.dim = model.config.hidden_size
        if matryoshka is True:
            matryoshka = NOMIC_V2_MOE_MATRYOSHKA if self.config.num_experts else NOMIC_V15_MATRYOSHKA
        self.recipe: Matryoshka | None = matryoshka or None
        self.matryoshka = self.recipe is not None
        self.matryoshka_dims = self.recipe.for_width(self.dim) if self.recipe else ()
        if self.config.num_experts:
            self.export_recipe = None  # data-dependent routing: no OpenVINO graph; bf16 / fp32 torch only

    @property
    def version(self) -> str:
        """``"v2-moe"`` (a mixture of experts), ``"v1.5"`` (v1.5's recipe) or ``"v1"``."""
        if self.config.num_experts:
            return "v2-moe"
        return "v1.5" if self.recipe is not None and self.recipe.layer_norm else "v1"

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        name: str | None = None,
        matryoshka: bool | None = None,
        rotary_scaling_factor: float | None = 2.0,
        max_length: int | None = None,
        unpadded: bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> NomicTextEncoder:
        """Load a nomic-embed-text folder (original hub format or transformers-5 native format).

        The architecture comes from ``config.json`` alone (a mixture-of-experts config is v2-moe; no remote code).
        ``matryoshka`` turns the model's Matryoshka recipe on or off; ``None``: on for v2-moe, and for v1 / v1.5
        inferred from the model name (``...-v1.5``). ``rotary_scaling_factor`` enables dynamic-NTK scaling past
        2048 tokens for v1 / v1.5 (the model cards use 2; the config's own value wins when it sets one; ``None``
        keeps the config's value); v2-moe was trained at 512 tokens with plain RoPE and keeps its config's.
        ``max_length`` (``None``: 8192 for v1 / v1.5, 512 for v2-moe) is where long texts are cut or chunked.
        ``unpadded=False`` runs each batch right-padded instead of packed (the default: no compute on padding).
        """
        folder = Path(folder)
        raw = read_json(folder / "config.json")
        config = NomicBertConfig.from_hf_dict(raw)
        moe = bool(config.num_experts)
        if config.rotary_scaling_factor is None and rotary_scaling_factor and not moe:
            config = replace(config, rotary_scaling_factor=float(rotary_scaling_factor))
        if matryoshka is None:
            label = " ".join(str(x) for x in (name, raw.get("_name_or_path"), folder))
            matryoshka = moe or "v1.5" in label or "v1_5" in label
        if max_length is None:
            max_length = NOMIC_V2_MOE_MAX_LENGTH if moe else 8192
        model = NomicBertModel(config)
        load_converted(model, convert_state_dict(load_safetensors(folder)), what=str(name or folder))
        model.to(device=device, dtype=dtype)
        tokenizer = load_tokenizer(folder)
        tokenizer.model_max_length = 1 << 30
        return cls(model, tokenizer, matryoshka=matryoshka, max_length=max_length, unpadded=unpadded)

    def _solo_length(self, n: int) -> bool:
        # Past max_trained_positions the rotary base depends on the padded length: never pad such a text.
        return bool(self.config.rotary_scaling_factor) and n > self.config.max_trained_positions

    def _hidden(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)

    def _hidden_packed(self, input_ids, cu_seqlens, width):
        # the rotary base of dynamic NTK follows the padded length the batch would have: its longest sequence
        return self.model.forward_packed(input_ids, cu_seqlens, rotary_length=width)

    def _finish(self, pooled: torch.Tensor, dimensionality: int | None) -> torch.Tensor:
        if self.recipe is not None:
            return self.recipe.apply(pooled, dimensionality)
        return F.normalize(pooled, dim=-1)


class SentenceTransformerTextEncoder(TokenTextEncoder):
    """A sentence-transformers folder with a BERT-family transformer and a ``Pooling`` module.

    No task prefixes (``task`` is accepted and adds nothing); output rows are always L2-normalised.
    """

    export_recipe = "bert"

    prefixes: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module, tokenizer: Any, *, pooling: str, max_length: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.dim = model.config.hidden_size

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        **_: Any,
    ) -> SentenceTransformerTextEncoder:
        from .models.bert import load_fast_tokenizer, load_native_bert

        folder = Path(folder)
        modules = read_json(folder / "modules.json")
        pooling_cfg: dict[str, Any] = {"pooling_mode_mean_tokens": True}
        transformer_path = folder
        for mod in modules:
            kind = mod.get("type", "")
            if kind.endswith("models.Transformer"):
                transformer_path = folder / mod.get("path", "")
            elif kind.endswith("models.Pooling"):
                pooling_cfg = read_json(folder / mod["path"] / "config.json")
            elif not kind.endswith("models.Normalize"):
                raise InvalidInputError(f"sentence-transformers module {kind!r} in {folder} is not supported")
        modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if pooling_cfg.get(f"pooling_mode_{m}")]
        if len(modes) != 1 or any(pooling_cfg.get(k) for k in ("pooling_mode_mean_sqrt_len_tokens",
                                                               "pooling_mode_weightedmean_tokens",
                                                               "pooling_mode_lasttoken")):
            raise InvalidInputError(f"pooling configuration {pooling_cfg} in {folder} is not supported")
        st_cfg_file = transformer_path / "sentence_bert_config.json"
        st_cfg = read_json(st_cfg_file) if st_cfg_file.is_file() else {}
        # plain BERT (all-MiniLM-L6-v2...) runs natively, without importing transformers (most of a cold start)
        model = load_native_bert(transformer_path, read_json(transformer_path / "config.json"))
        if model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(transformer_path), attn_implementation="sdpa")
        max_length = int(st_cfg.get("max_seq_length") or getattr(model.config, "max_position_embeddings", 512))
        model.to(device=device, dtype=dtype)
        tokenizer = load_fast_tokenizer(transformer_path) or load_tokenizer(transformer_path)
        tokenizer.model_max_length = 1 << 30
        encoder = cls(model, tokenizer, pooling=modes[0], max_length=max_length)
        encoder.lowercase = bool(st_cfg.get("do_lower_case"))
        return encoder

    lowercase = False

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return super().tokenize([t.lower() for t in texts] if self.lowercase else texts)

    def _hidden(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids)).last_hidden_state

    def _pool(self, hidden, mask):
        if self.pooling == "cls_token":
            return hidden[:, 0].float()
        if self.pooling == "max_tokens":
            return hidden.float().masked_fill(~mask.bool()[..., None], -1e9).max(1).values
        return super()._pool(hidden, mask)

    def _pool_packed(self, hidden, cu_seqlens):
        if self.pooling == "cls_token":
            return hidden[cu_seqlens[:-1]].float()
        if self.pooling == "max_tokens":
            return segment_reduce(hidden.float(), cu_seqlens, "amax")
        return super()._pool_packed(hidden, cu_seqlens)
