"""Searching vectors: exact top-k, Hamming top-k with rescoring, rclip-style query mixes, an optional FAISS IVF
cache, duplicate groups.

Pure numpy over ``(n, d)`` matrices (float32 rows, int8 codes read back chunk by chunk, packed sign bits);
:class:`~multimodal_embed.ImageIndex` owns the storage and calls these. Ties: Hamming top-k keeps the lowest rows
among equal distances, rescoring the lowest rows among equal scores.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError

__all__ = ["AnnCache", "combine", "duplicate_groups", "exact_search", "hamming_search", "mix_terms", "parse_query",
           "rescore", "search_tiers", "use_ann"]

SEARCH_CHUNK_ROWS = 65536  # rows per matrix-product chunk: bounded extra memory per query batch
ANN_AUTO_ROWS = 200_000  # ann=None uses FAISS above this many vectors (when installed)
DECODE_CHUNK_ROWS = 16384  # rows per chunk when codes are read back as float32 (int8 search): ~50 MiB at 768-d
HAMMING_CHUNK_ROWS = 262144  # rows per chunk of the Hamming scan: ~25 MiB of XOR per chunk at 768 bits


# -- exact search ------------------------------------------------------------------------------------------
def exact_search(matrix: np.ndarray, queries: np.ndarray, k: int, *, chunk_rows: int | None = None,
                 mask: np.ndarray | None = None,
                 decode: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each query against ``matrix`` rows: ``(scores, rows)``, each ``(m, k')``.

    A chunked matrix product: each chunk of ``chunk_rows`` rows is multiplied once for all queries and reduced
    with ``argpartition``; nothing of the size of ``matrix`` is copied. ``mask`` (bool per row) excludes rows.
    ``decode`` turns a chunk of codes (int8) into float32 rows first.
    """
    if chunk_rows is None:
        chunk_rows = SEARCH_CHUNK_ROWS if decode is None else DECODE_CHUNK_ROWS
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n, m = matrix.shape[0], queries.shape[0]
    k = max(0, min(k, n if mask is None else int(mask.sum())))
    best_s = np.full((m, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((m, 0), dtype=np.int64)
    if k == 0:
        return best_s, best_i
    for start in range(0, n, chunk_rows):
        block = matrix[start:start + chunk_rows]
        if decode is not None:
            block = decode(block)
        scores = queries @ block.T  # (m, rows)
        if mask is not None:
            scores[:, ~mask[start:start + chunk_rows]] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return best_s, best_i


# -- Hamming search and rescoring ------------------------------------------------------------------------------
def _lowest_k(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``values``, the lowest positions first among equal values at the cut."""
    if k >= len(values):
        return np.arange(len(values))
    kth = np.partition(values, k - 1)[k - 1]
    less = np.flatnonzero(values < kth)
    return np.concatenate([less, np.flatnonzero(values == kth)[:k - len(less)]])


def hamming_search(codes: np.ndarray, query_bits: np.ndarray, k: int, *, mask: np.ndarray | None = None,
                   chunk_rows: int = HAMMING_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of packed ``codes`` nearest one packed query in Hamming distance: ``(distances, rows)``,
    nearest first, ties to the lowest row. ``mask`` (bool per row) excludes rows before the top-k."""
    from .quantize import hamming

    n = len(codes)
    k = max(0, min(k, n if mask is None else int(mask.sum())))
    best_d, best_i = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if k == 0:
        return best_d, best_i
    for start in range(0, n, chunk_rows):
        d = hamming(codes[start:start + chunk_rows], query_bits).astype(np.int64)
        if mask is not None:
            d[~mask[start:start + chunk_rows]] = np.iinfo(np.int64).max
        part = _lowest_k(d, k)
        cand_d, cand_i = np.concatenate([best_d, d[part]]), np.concatenate([best_i, part + start])
        keep = np.lexsort((cand_i, cand_d))[:k]
        best_d, best_i = cand_d[keep], cand_i[keep]
    return best_d, best_i


FAISS_MIN_ROWS = 50_000  # below this, numpy's scan is as fast as building FAISS's copy of the codes


def binary_flat(codes: np.ndarray) -> Any:
    """A FAISS ``IndexBinaryFlat`` holding a copy of packed ``codes`` (RAM: the codes' size), or ``None`` when
    FAISS is not installed or the codes are too few to gain from it."""
    if len(codes) < FAISS_MIN_ROWS:
        return None
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    for start in range(0, len(codes), 1 << 20):  # added in pieces: never a second full copy in memory
        index.add(np.ascontiguousarray(codes[start:start + (1 << 20)]))
    return index


def faiss_hamming_search(index: Any, query_bits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hamming_search` by a FAISS ``IndexBinaryFlat``, with the same answer: FAISS finds the ``k``-th
    smallest distance, a range search every row at or below it, and the lowest rows win among equal distances.
    Runs on one OpenMP thread (a single query gains nothing from more, and they contend on a busy machine)."""
    import faiss

    k = min(k, index.ntotal)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        q = np.ascontiguousarray(query_bits, dtype=np.uint8).reshape(1, -1)
        dist, _ = index.search(q, k)
        _, found_d, found_i = index.range_search(q, int(dist[0, -1]) + 1)
    finally:
        faiss.omp_set_num_threads(threads)
    keep = np.lexsort((found_i, found_d))[:k]
    return found_d[keep].astype(np.int64), found_i[keep].astype(np.int64)


def rescore(rows: np.ndarray, read_rows: Callable[[np.ndarray], np.ndarray], query: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescore candidate ``rows`` by the dot product of ``query`` with ``read_rows(rows)`` (float32, read in row
    order): the best ``k`` as ``(scores, rows)``, best first, ties to the lowest row."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if not len(rows):
        return np.zeros(0, np.float32), rows
    scores = read_rows(rows) @ np.asarray(query, np.float32)
    keep = np.lexsort((rows, -scores))[:k]
    return scores[keep], rows[keep]


def search_tiers(codes: Callable[[str], np.ndarray], tiers: tuple[str, ...], dim: int, ranges: Any,
                 query: np.ndarray, k: int, *, mask: np.ndarray | None = None, rescore_by: int = 4,
                 binary_index: Callable[[], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` rows of a store for one unit ``query`` (at the stored size): ``(scores, rows)``.

    ``codes(tier)`` gives a tier's ``(rows, width)`` codes (memory-mapped); ``tiers``, ``dim`` and the int8
    ``ranges`` are the store's layout (:mod:`.quantize`). Binary stores: Hamming top-(k x ``rescore_by``), then
    rescoring with the float32 or int8 tier (``rescore_by=0``, or binary alone: Hamming ranking, scored
    ``1 - 2 * distance / dim``); int8: exact over the codes read back; float32: exact.

    The Hamming scan is FAISS's ``IndexBinaryFlat`` when ``binary_index()`` gives one (see :func:`binary_flat`)
    and nothing is masked, else numpy's ``bitwise_count``: the same answer either way (measured in
    benchmarks/index_scale.py: FAISS on one thread about 4x faster than numpy at 1M rows)."""
    from . import quantize as Q

    if "binary" in tiers:
        bits = Q.pack_bits(query[None, :])[0]
        second = next((t for t in ("float32", "int8") if t in tiers), None)
        want = k * rescore_by if second is not None and rescore_by > 0 else k
        flat = binary_index() if binary_index is not None and mask is None else None
        dist, rows = (faiss_hamming_search(flat, bits, want) if flat is not None
                      else hamming_search(codes("binary"), bits, want, mask=mask))
        if second is not None and rescore_by > 0:
            return rescore(rows, lambda r: Q.decode(second, codes(second)[r], dim, ranges), query, k)
        return (1 - 2 * dist / dim).astype(np.float32), rows
    if tiers == ("int8",):  # q . (lo + (c + 128) * step) = (q * step) . c + (q . lo + 128 * sum(q * step))
        qs = (np.asarray(query, np.float32) * ranges.step).astype(np.float32)
        offset = np.float32(query @ ranges.lo + 128 * qs.sum(dtype=np.float64))
        s, r = exact_search(codes("int8"), qs, k, mask=mask, decode=lambda block: block.astype(np.float32))
        return s[0] + offset, r[0]
    s, r = exact_search(codes("float32"), query, k, mask=mask)
    return s[0], r[0]


# -- query mixes -------------------------------------------------------------------------------------------
_TERM_SPLIT = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*:\s*(.+)$")


def parse_query(expr: str) -> list[tuple[float, str]]:
    """rclip-style mixes: ``"2:golden retriever + ./pool.jpg - fruit"`` -> ``[(2, ...), (1, ...), (-1, ...)]``."""
    parts = _TERM_SPLIT.split(expr.strip())
    terms: list[tuple[float, str]] = []
    sign = 1.0
    for i, part in enumerate(parts):
        if i % 2 == 1:
            sign = 1.0 if part == "+" else -1.0
            continue
        weight, text = 1.0, part.strip()
        m = _WEIGHT.match(text)
        if m:
            weight, text = float(m.group(1)), m.group(2).strip()
        if not text:
            raise InvalidInputError(f"empty term in query {expr!r}")
        terms.append((sign * weight, text))
    return terms


def is_query_mix(query: Any) -> bool:
    """Whether a string query is a mix (``"a + b"``, ``"2:a"``) rather than one term."""
    return isinstance(query, str) and bool(_TERM_SPLIT.search(query) or _WEIGHT.match(query))


def mix_terms(query: Any) -> list[tuple[float, Any]]:
    """``(weight, item)`` terms of a query: a mix string, a list of ``(weight, item)`` pairs, or one item."""
    if is_query_mix(query):
        return list(parse_query(query))
    if isinstance(query, (list, tuple)) and query and all(isinstance(t, tuple) and len(t) == 2 for t in query):
        return [(float(w), item) for w, item in query]
    return [(1.0, query)]


def combine(terms: list[tuple[float, Any]], vector: Callable[[Any], np.ndarray]) -> np.ndarray:
    """The normalised weighted sum of each term's unit vector (``vector(item)``)."""
    total = sum(w * _unit(vector(item)) for w, item in terms)
    n = np.linalg.norm(total)
    if n == 0:
        raise InvalidInputError("the query terms cancel out")
    return (total / n).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def use_ann(ann: bool | None, rows: int) -> bool:
    """``ann=None``: FAISS above :data:`ANN_AUTO_ROWS` vectors when it is installed."""
    if ann is None:
        import importlib.util

        return rows > ANN_AUTO_ROWS and importlib.util.find_spec("faiss") is not None
    return bool(ann)


class AnnCache:
    """A FAISS IVF-Flat (inner product) over a matrix, rebuilt when the matrix's version changes."""

    def __init__(self) -> None:
        self._cached: tuple[Any, Any] | None = None

    def get(self, mat: np.ndarray, version: Any, nprobe: int) -> Any:
        try:
            import faiss
        except ImportError as exc:
            raise MissingDependencyError("ann=True needs FAISS: pip install 'multimodal-embed[ann]'") from exc
        if self._cached is None or self._cached[0] != version:
            dim = mat.shape[1]
            nlist = max(1, int(4 * np.sqrt(len(mat))))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = mat if len(mat) <= 40 * nlist else mat[np.random.default_rng(0).choice(len(mat), 40 * nlist,
                                                                                             replace=False)]
            ivf.train(sample)
            ivf.add(mat)
            self._cached = (version, ivf)
        ivf = self._cached[1]
        ivf.nprobe = nprobe
        return ivf


DUP_CHUNK_PAIRS = 1 << 20  # similarity entries per chunk in duplicate_groups: bounded memory (~50 MiB at most)


def check_cosine(value: Any, name: str) -> float:
    """The one check for a cosine threshold (``min_score``, ``threshold``; the CLI's ``--min-score`` and
    ``--threshold`` too): a number in [-1, 1], else :class:`InvalidInputError` naming ``name``. ``95`` (a
    percentage) is refused with the cosine it probably means, never run to find nothing."""
    try:
        cosine = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}: {value!r} is not a number (a cosine, between -1 and 1)") from None
    if not -1.0 <= cosine <= 1.0:  # NaN fails too
        hint = f"; for {cosine:g}%, give {cosine / 100:g}" if 1.0 < cosine <= 100.0 else ""
        raise InvalidInputError(f"{name}: {value} is not a cosine: give a value between -1 and 1{hint}")
    return cosine


def duplicate_groups(paths: list[str], mat: np.ndarray, threshold: float) -> list[list[str]]:
    """Groups (size >= 2) of paths whose vectors have cosine >= ``threshold`` (transitively), sorted.

    Chunked and vectorised: each block of rows is compared with the rows after it, and the edges found merge
    component labels with numpy (min-label propagation plus pointer jumping), so memory stays bounded by
    :data:`DUP_CHUNK_PAIRS` and nothing loops over pairs in Python."""
    n = len(paths)
    label = np.arange(n, dtype=np.int64)
    if n < 2:
        return []
    step = max(16, DUP_CHUNK_PAIRS // n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        label = _flatten(label)
        if (label[start:] == label[start]).all():  # these rows and columns are one group already
            break
        sims = mat[start:stop] @ mat[start:].T  # rows start..stop against columns start..n
        rows, cols = np.nonzero(sims >= threshold)
        del sims
        keep = cols + start > rows + start
        a, b = rows[keep] + start, cols[keep] + start
        if len(a):
            label = _merge(label, a, b)
    roots = _flatten(label)
    groups: dict[int, list[str]] = {}
    for r in np.flatnonzero(np.bincount(roots, minlength=n)[roots] > 1):
        groups.setdefault(int(roots[r]), []).append(paths[r])
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def _flatten(label: np.ndarray) -> np.ndarray:
    """Pointer jumping until every entry points at its component's root."""
    while True:
        nxt = label[label]
        if np.array_equal(nxt, label):
            return label
        label = nxt


def _merge(label: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union the components of each edge ``(a[i], b[i])``: roots point to the smallest root they touch."""
    while True:
        label = _flatten(label)
        ra, rb = label[a], label[b]
        diff = ra != rb
        if not diff.any():
            return label
        ra, rb = ra[diff], rb[diff]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        np.minimum.at(label, hi, lo)
