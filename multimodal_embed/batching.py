"""Length-aware batching: sort by length, pack by a token budget, and restore input order afterwards."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def plan_batches(
    lengths: Sequence[int],
    *,
    max_batch_size: int,
    max_tokens: int,
    solo: Callable[[int], bool] | None = None,
    packed: bool = False,
) -> list[list[int]]:
    """Group item indices into batches with little padding.

    Items are sorted by length (longest first) and packed while ``batch_size * longest <= max_tokens`` (with
    ``packed``, for batches that run without padding: while the sum of their lengths ``<= max_tokens``) and
    ``batch_size <= max_batch_size``. Items for which ``solo(length)`` is true only share a batch with items of
    exactly the same length, so their padded length is their own (needed where the math depends on it, such
    as dynamic-NTK rotary scaling).
    """
    if max_batch_size < 1 or max_tokens < 1:
        raise ValueError("max_batch_size and max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for i in order:
        n = lengths[i]
        if current:
            same_len_only = solo is not None and (solo(longest) or solo(n))
            cost = total + n if packed else (len(current) + 1) * longest
            fits = cost <= max_tokens and len(current) < max_batch_size
            if not fits or (same_len_only and n != longest):
                batches.append(current)
                current = []
        if not current:
            longest, total = n, 0
        current.append(i)
        total += n
    if current:
        batches.append(current)
    return batches
