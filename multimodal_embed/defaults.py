"""The one default-model rule of the toolkit (library, CLI, demo, quickstart).

:func:`choose_model` answers "which model, when the user named none": the configured model (an explicit name,
else ``$MMEMBED_MODEL``, else ``model = "..."`` in the config file ``$MMEMBED_CONFIG`` or
``$XDG_CONFIG_HOME/mmembed/config.toml`` / ``~/.config/mmembed/config.toml``), else ``nomic-embed-v1.5`` when its
files are in the Hugging Face cache or the hub serves them (asked once, within a few seconds, by the route
``huggingface_hub`` takes: proxies included), else the built-in offline model, with a one-line notice
saying how to get the better one. Nothing heavy is imported and nothing is downloaded here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

logger = logging.getLogger(__name__)

PREFERRED_MODEL = "nomic-embed-v1.5"
BUILTIN_MODEL = "minilm-efficientnet-lite0"
MODEL_ENV = "MMEMBED_MODEL"
CONFIG_ENV = "MMEMBED_CONFIG"
CACHE_ENV = "MMEMBED_CACHE"
# what the built-in model cannot do (measured on the gallery: README "Set-up"), said in the fallback notice
BUILTIN_BLIND_SPOTS = "a small model with no sense of colour, weak on scenes, reading no text in images"


@dataclass(frozen=True)
class ModelChoice:
    """The model to load, why (``"given"``, ``"environment"``, ``"config"``, ``"cached"``, ``"reachable"``,
    ``"fallback"``), and a one-line notice for the user when the built-in model stands in (else None)."""

    name: str
    source: str
    notice: str | None = None


def config_path() -> Path:
    """The config file: ``$MMEMBED_CONFIG``, else ``$XDG_CONFIG_HOME/mmembed/config.toml`` (``~/.config``)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "mmembed" / "config.toml"


def configured_model() -> tuple[str, str] | None:
    """``($MMEMBED_MODEL, "environment")``, else the config file's ``model`` (``(name, "config")``), else None.
    A config file that is not TOML or whose ``model`` is not a non-empty string raises :class:`ConfigError`."""
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        return env, "environment"
    path = config_path()
    if not path.is_file():
        return None
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML config file ({exc})") from None
    model = data.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{path}: 'model' must be a model name (a non-empty string), got {model!r}")
    return model.strip(), "config"


def cache_home() -> Path:
    """The package's cache folder (label embeddings, exported graphs, evaluation embeddings): ``$MMEMBED_CACHE``,
    else ``$XDG_CACHE_HOME/multimodal_embed``, else ``~/.cache/multimodal_embed``. Not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "multimodal_embed"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``): ``huggingface_hub`` reads these once, at its import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def preferred_is_cached() -> bool:
    """Whether every file nomic-embed-v1.5 needs, at its pinned revisions, is in the Hugging Face cache."""
    from .hub import CONFIG_FILES, WEIGHT_FILES
    from .registry import lookup

    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    spec = lookup(PREFERRED_MODEL)
    cache = hub_cache_dir()
    for role, repo in spec.repos.items():
        needed = CONFIG_FILES + WEIGHT_FILES + (("tokenizer.json",) if role == "text" else ())
        for name in needed:
            hit = try_to_load_from_cache(repo, name, revision=spec.revisions.get(role), cache_dir=cache)
            if not isinstance(hit, str):
                return False
    return True


def preferred_unavailable_reason() -> str | None:
    """Why nomic-embed-v1.5 cannot be downloaded now (offline mode, or any failure to reach or read its files on the
    hub: DNS, a refusing proxy, TLS, an error status from a mirror, no answer within a few seconds), else None."""
    from .hub import CONFIG_FILES, file_unavailable_reason, offline_reason
    from .registry import lookup

    spec = lookup(PREFERRED_MODEL)
    files = [(repo, CONFIG_FILES[0], spec.revisions.get(role, "main")) for role, repo in spec.repos.items()]
    return offline_reason() or file_unavailable_reason(files)


def choose_model(name: str | None = None) -> ModelChoice:
    """The model to use when ``name`` may be None: see the module docstring for the order."""
    if name:
        return ModelChoice(str(name), "given")
    configured = configured_model()
    if configured:
        return ModelChoice(*configured)
    if preferred_is_cached():
        return ModelChoice(PREFERRED_MODEL, "cached")
    reason = preferred_unavailable_reason()
    if reason is None:
        return ModelChoice(PREFERRED_MODEL, "reachable")
    notice = (f"using the built-in offline model {BUILTIN_MODEL} ({BUILTIN_BLIND_SPOTS}; README \"Which model\"): "
              f"{PREFERRED_MODEL} is neither cached nor downloadable here ({reason}); for better results run "
              f"`mmembed download {PREFERRED_MODEL}` where the hub is reachable, or pick a model with --model or "
              f"${MODEL_ENV} (`mmembed models`)")
    return ModelChoice(BUILTIN_MODEL, "fallback", notice)


def default_model_name() -> str:
    """:func:`choose_model`'s name for a caller that named no model; its notice, if any, logged as a warning."""
    choice = choose_model()
    if choice.notice:
        logger.warning("%s", choice.notice)
    return choice.name
