"""Finding model files: local folders, or the Hugging Face hub through ``huggingface_hub`` (cache-aware).

Only the files a model needs are fetched, at a pinned revision for the known nomic repositories. The hub
cache, ``HF_HUB_CACHE``/``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE=1`` are honoured because all
downloads go through ``huggingface_hub.hf_hub_download``. No code from the hub is ever executed. The cache is
looked up first; a file it lacks is downloaded only after one quick probe shows the hub is reachable, otherwise
:class:`HubUnreachableError` says in one line what to run (``hf download``, ``mmembed download``, or the
built-in offline model).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import HubUnreachableError, ModelNotFoundError

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.json",)
WEIGHT_FILES = ("model.safetensors",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
IMAGE_FILES = ("preprocessor_config.json",)

OFFLINE_MODEL = "minilm-efficientnet-lite0"
PROBE_TIMEOUT_S = 3.0  # the whole probe, connect and answer: a few seconds, never huggingface_hub's retries
_DEFAULT_ENDPOINT = "https://huggingface.co"
_probe_cache: dict[str, tuple[float, str | None]] = {}  # route -> (when, reason it failed or None)


def offline_reason() -> str | None:
    """``"HF_HUB_OFFLINE is set"`` (or ``TRANSFORMERS_OFFLINE``) when the environment asks for cache-only operation,
    else None. Read as ``huggingface_hub`` reads it: ``HF_HUB_OFFLINE``, or when that is unset or empty,
    ``TRANSFORMERS_OFFLINE``."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:
            return f"{name} is set" if value.upper() in ("1", "ON", "YES", "TRUE") else None
    return None


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for cache-only operation."""
    return offline_reason() is not None


def hub_endpoint() -> str:
    """The hub URL ``huggingface_hub`` uses (``HF_ENDPOINT``, read now rather than at its import)."""
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def _route_key(url: str) -> str:
    """``url`` plus the proxy settings that decide how it is reached (a probe's answer holds for that route only)."""
    proxies = sorted((k.lower(), v) for k, v in os.environ.items() if k.lower().endswith("_proxy"))
    return f"{url} {proxies}"


def _short(exc: BaseException) -> str:
    """One line for a failed request: ``HTTP 404 from URL`` for an answer, else the exception's type and message."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status} from {getattr(response, 'url', '') or 'the hub'}"
    first = (str(exc).splitlines() or [""])[0] or repr(exc)
    return f"{type(exc).__name__}: {first if len(first) <= 200 else first[:200] + '...'}"


def _bounded(probe: Callable[[], str | None], timeout: float, what: str) -> str | None:
    """``probe()``'s reason, or one saying that ``what`` gave no answer within ``timeout`` s. It runs in a daemon
    thread: a name look-up with no DNS server, or a proxy that accepts and never answers, can hang far longer than
    any socket timeout, and the caller waits ``timeout`` seconds at most."""
    outcome: list[str | None] = []

    def run() -> None:
        try:
            outcome.append(probe())
        except Exception as exc:  # noqa: BLE001 - any failure to reach or read the hub is a reason, never a crash
            outcome.append(_short(exc))

    worker = threading.Thread(target=run, name="mmembed-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer from {what} within {timeout:g} s"


def hub_unreachable_reason(endpoint: str | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (DNS failure, refused or timed-out connection, a proxy that refuses, a TLS
    error), or None if it answers at all.

    One HEAD request to the endpoint by the route ``huggingface_hub`` takes (its HTTP session: the same proxies,
    certificates and headers), given at most ``timeout`` seconds in all and remembered for 60 s per route, so that a
    missing network costs seconds once instead of ``huggingface_hub``'s retries for every file. Any HTTP answer,
    even an error status, counts as reachable: whether a file is there is :func:`file_unavailable_reason`'s question.
    """
    endpoint = endpoint or hub_endpoint()
    key = _route_key(endpoint)
    cached = _probe_cache.get(key)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]

    def probe() -> str | None:
        from huggingface_hub.utils import get_session

        get_session().head(endpoint + "/", timeout=timeout, follow_redirects=False)
        return None

    reason = _bounded(probe, timeout, urllib.parse.urlsplit(endpoint).netloc or endpoint)
    _probe_cache[key] = (time.monotonic(), reason)
    return reason


def file_unavailable_reason(files: Sequence[tuple[str, str, str]], *, timeout: float = PROBE_TIMEOUT_S
                            ) -> str | None:
    """Why one of ``files`` (``(repo_id, filename, revision)`` triples) cannot be read from the hub now, or None when
    every one answers. One metadata request each (HEAD, no retries) by ``huggingface_hub``'s route, all within
    ``timeout`` seconds: a refused connection, a proxy error, a TLS error, a timeout and an error status (a mirror
    answering 404 or 5xx) are all reasons."""
    endpoint = hub_endpoint()
    urls = [f"{endpoint}/{repo}/resolve/{urllib.parse.quote(rev, safe='')}/{name}" for repo, name, rev in files]
    key = _route_key(" ".join(urls))
    cached = _probe_cache.get(key)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    deadline = time.monotonic() + timeout

    def probe() -> str | None:
        from huggingface_hub import get_hf_file_metadata

        for url in urls:
            get_hf_file_metadata(url, timeout=max(0.1, deadline - time.monotonic()), retry_on_errors=False)
        return None

    reason = _bounded(probe, timeout, urllib.parse.urlsplit(endpoint).netloc or endpoint)
    _probe_cache[key] = (time.monotonic(), reason)
    return reason


def _registry_name(repo_id: str) -> str | None:
    from .registry import MODELS

    for spec in MODELS:
        if repo_id in (spec.text, spec.vision, spec.ref, f"hf-hub:{repo_id}" if spec.ref else None):
            return spec.name
    return None


def unreachable_message(repo_id: str, revision: str, reason: str) -> str:
    """The one line telling a user without the hub what to run."""
    name = _registry_name(repo_id)
    fetch_cmd = f"`mmembed download {name}` or `hf download {repo_id} --revision {revision}`" if name else \
        f"`hf download {repo_id} --revision {revision}`"
    return (f"{repo_id!r} is not in the Hugging Face cache and the hub ({hub_endpoint()}) is unreachable "
            f"({reason}): run {fetch_cmd} where the hub is reachable, pass a local folder, or use the built-in "
            f"offline model (--model {OFFLINE_MODEL})")


@contextmanager
def _quiet_hub_retries() -> Iterator[None]:
    """Keep huggingface_hub's per-retry WARNING lines out of the user's terminal (our error says it all)."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        hub_logger.setLevel(level)


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
        kwargs = {"revision": revision, "cache_dir": str(cache_dir) if cache_dir else None}
        try:
            try:  # the cache first: no network at all for a model that is already here
                path = huggingface_hub.hf_hub_download(repo_id, name, local_files_only=True, **kwargs)
            except (LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError):
                if offline_mode():
                    raise
                reason = hub_unreachable_reason()
                if reason is not None:
                    if name in optional:
                        continue
                    raise HubUnreachableError(unreachable_message(repo_id, revision, reason)) from None
                with _quiet_hub_retries():
                    path = huggingface_hub.hf_hub_download(repo_id, name, **kwargs)
        except HubUnreachableError:
            raise
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            if name in optional:
                logger.debug("optional file %s of %s not available: %s", name, repo_id, exc)
                continue
            first = (str(exc).splitlines() or [""])[0]
            first = first if len(first) <= 240 else first[:240] + "..."
            reason = offline_reason() or f"{type(exc).__name__}: {first}"
            raise ModelNotFoundError(
                f"model {repo_id!r} (revision {revision}) is not available: {name} is not in the Hugging Face "
                f"cache and could not be downloaded ({reason}). Download it once where the hub is reachable "
                f"(`hf download {repo_id} --revision {revision}`), point HF_HOME at a cache that has it, pass a "
                f"local folder instead of a hub id, or use the built-in offline model (--model {OFFLINE_MODEL})."
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
        except HubUnreachableError:
            raise
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
