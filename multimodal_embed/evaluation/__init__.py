"""Measure and compare models on local data: zero-shot classification, image-text retrieval, text retrieval.

``mmembed eval PATH... --model A --model B --dim 768,256`` or :func:`evaluate` (in :mod:`.runner`); data sets in
:mod:`.datasets`, metrics (checked against pytrec_eval and CLIP_benchmark) in :mod:`.metrics`. Names are imported
on first use, so ``mmembed --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"evaluate": ".runner", "evaluate_model": ".runner", "EvalReport": ".runner", "EvalResult": ".runner",
         "load_dataset": ".datasets", "detect_task": ".datasets"}

__all__ = ["EvalReport", "EvalResult", "detect_task", "evaluate", "evaluate_model", "load_dataset"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'multimodal_embed.evaluation' has no attribute {name!r}")
