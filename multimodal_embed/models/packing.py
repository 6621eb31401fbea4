"""Sequences packed end to end (no padding) for the text towers: the layout and attention within each sequence.

A packed batch is ``(T, ...)`` tokens with boundaries ``cu_seqlens = [0, len0, len0 + len1, ...]``. Linear layers,
norms and the MLP run on the packed tokens as they are (no compute on padding); only attention needs the
sequence boundaries, which :func:`packed_attention` respects on every device.
"""

from __future__ import annotations

import logging
from functools import cached_property

import torch
import torch.nn.functional as F

__all__ = ["Packing", "equal_length_runs", "packed_attention", "segment_reduce"]

logger = logging.getLogger(__name__)


class Packing:
    """The layout of one packed batch, built once per forward from ``cu_seqlens`` ``(B + 1,)``.

    ``lengths`` ``(B,)``; ``positions`` ``(T,)`` each token's position in its sequence; ``seq`` ``(T,)`` the
    sequence each token belongs to; ``index`` each token's place in the ``(B * max_len)`` padded layout (where
    attention runs padded); ``runs``: ``(start, count, length)`` for runs of consecutive sequences of equal length.
    """

    def __init__(self, cu_seqlens: torch.Tensor):
        cu = cu_seqlens.to(torch.long)
        self.cu_seqlens = cu
        self.lengths = cu[1:] - cu[:-1]
        total = int(cu[-1])
        self.max_len = int(self.lengths.max()) if len(self.lengths) else 0
        starts = torch.repeat_interleave(cu[:-1], self.lengths, output_size=total)
        self.positions = torch.arange(total, device=cu.device) - starts
        self.seq = torch.repeat_interleave(torch.arange(len(self.lengths), device=cu.device), self.lengths,
                                           output_size=total)
        self.index = self.seq * self.max_len + self.positions

    @cached_property
    def runs(self) -> list[tuple[int, int, int]]:
        return equal_length_runs(self.lengths.tolist())


def equal_length_runs(lengths: list[int]) -> list[tuple[int, int, int]]:
    """``(first token, count, length)`` for each run of consecutive sequences of the same length."""
    runs: list[tuple[int, int, int]] = []
    offset = 0
    for n in lengths:
        if runs and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, n)
        else:
            runs.append((offset, 1, n))
        offset += n
    return runs


def _run(t: torch.Tensor, start: int, count: int, n: int) -> torch.Tensor:
    """The ``count`` sequences of length ``n`` packed from row ``start`` of ``t``, as ``(count, n, ...)``."""
    return t[start:start + count * n].view(count, n, *t.shape[1:])


def segment_reduce(x: torch.Tensor, cu_seqlens: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Per-sequence ``sum`` or ``amax`` ``(B, D)`` of packed rows ``x`` ``(T, D)``: one reduction per run of
    equal-length sequences, as accurate as reducing the padded batch (``index_add_`` accumulates row by row: ~20x
    the rounding error of a sum over thousands of tokens)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    out = x.new_empty(len(lengths), x.shape[1])
    row = 0
    for start, count, n in equal_length_runs(lengths):
        out[row:row + count] = getattr(_run(x, start, count, n), op)(1)
        row += count
    return out


_varlen_ok: bool | None = None  # torch.nn.attention.varlen works here (decided on first use)


def _attention_by_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """One unmasked SDPA per run of equal-length sequences: no padding at all (CPU, where a call is cheap)."""
    out = torch.empty_like(q)
    for start, count, n in packing.runs:
        q_, k_, v_ = (_run(t, start, count, n).transpose(1, 2) for t in (q, k, v))  # (count, H, n, Dh)
        _run(out, start, count, n).copy_(F.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2))
    return out


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Attention within each packed sequence; ``q, k, v``: ``(T, H, Dh)``, returns ``(T, H, Dh)``.

    CPU: one SDPA call per run of equal-length sequences, so no token attends or is computed as padding.
    CUDA + fp16/bf16: ``torch.nn.attention.varlen.varlen_attn`` (flash) when present. Elsewhere (CUDA fp32) only
    the attention runs padded (SDPA with a key mask), in one call.
    """
    global _varlen_ok
    if q.device.type == "cpu":
        return _attention_by_runs(q, k, v, packing)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _varlen_ok is not False:
        try:
            from torch.nn.attention.varlen import varlen_attn

            cu = packing.cu_seqlens.to(torch.int32)
            out = varlen_attn(q, k, v, cu, cu, packing.max_len, packing.max_len)
            _varlen_ok = True
            return out
        except Exception as exc:
            if _varlen_ok:
                raise
            _varlen_ok = False
            logger.info("varlen attention unavailable (%s); attention runs padded", exc)
    b, n = packing.lengths.shape[0], packing.max_len
    _, h, d = q.shape

    def pad(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(b * n, h, d)
        out[packing.index] = t
        return out.view(b, n, h, d).transpose(1, 2)

    mask = (torch.arange(n, device=q.device) < packing.lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b * n, h, d)[packing.index]
