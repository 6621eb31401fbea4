"""Finding model files: local folders, or the Hugging Face hub through ``huggingface_hub`` (cache-aware).

Only the files a model needs are fetched, at a pinned revision for the known nomic repositories. The hub
cache, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE=1`` are honoured because all
downloads go through ``huggingface_hub.hf_hub_download``. No code from the hub is ever executed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.json",)
WEIGHT_FILES = ("model.safetensors",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
IMAGE_FILES = ("preprocessor_config.json",)


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for cache-only operation."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def default_revision(repo_id: str) -> str:
    """The commit the registry pins for a known repository (nomic towers, CLIP / SigLIP entries), else ``main``."""
    from .registry import pinned_revision

    return pinned_revision(repo_id) or "main"


def fetch(
    repo_id: str,
    *,
    revision: str | None = None,
    files: Sequence[str] = CONFIG_FILES,
    optional: Sequence[str] = (),
    cache_dir: str | Path | None = None,
) -> Path:
    """Download (or find in the cache) ``files`` of ``repo_id`` and return the snapshot folder.

    Raises :class:`ModelNotFoundError` naming the model, the revision and what to do, when a required file is
    neither cached nor downloadable.
    """
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    revision = revision or default_revision(repo_id)
    folder: Path | None = None
    for name in list(files) + list(optional):
        try:
            path = huggingface_hub.hf_hub_download(
                repo_id, name, revision=revision, cache_dir=str(cache_dir) if cache_dir else None
            )
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            if name in optional:
                logger.debug("optional file %s of %s not available: %s", name, repo_id, exc)
                continue
            first = (str(exc).splitlines() or [""])[0]
            first = first if len(first) <= 240 else first[:240] + "..."
            reason = "HF_HUB_OFFLINE is set" if offline_mode() else f"{type(exc).__name__}: {first}"
            raise ModelNotFoundError(
                f"model {repo_id!r} (revision {revision}) is not available: {name} is not in the Hugging Face "
                f"cache and could not be downloaded ({reason}). Download it once where the hub is reachable "
                f"(`huggingface-cli download {repo_id} --revision {revision}`), point HF_HOME at a cache that "
                f"has it, or pass a local folder instead of a hub id."
            ) from None
        folder = Path(path).parents[len(Path(name).parts) - 1]
    assert folder is not None
    return folder


def fetch_first(
    repo_id: str,
    names: Sequence[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The snapshot folder holding the first of ``names`` that the repository has (e.g. safetensors before an old
    pickle checkpoint); :class:`ModelNotFoundError` if it has none of them."""
    last: ModelNotFoundError | None = None
    for name in names:
        try:
            return fetch(repo_id, revision=revision, files=(name,), cache_dir=cache_dir)
        except ModelNotFoundError as exc:
            last = exc
    raise ModelNotFoundError(f"{repo_id!r} has none of {', '.join(names)} in the cache or on the hub; last: {last}"
                             ) from None


def resolve_folder(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    files: Sequence[str] = CONFIG_FILES,
    optional: Sequence[str] = (),
    cache_dir: str | Path | None = None,
) -> Path:
    """A local folder as it is, or a hub id fetched into the cache."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not looks_like_repo_id(name):
        raise ModelNotFoundError(f"{name!r} is neither a local folder nor a hub id of the form 'org/name'")
    return fetch(name, revision=revision, files=files, optional=optional, cache_dir=cache_dir)
