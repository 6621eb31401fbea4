"""Exceptions raised by multimodal_embed.

Every error derives from :class:`MultimodalEmbedError`; specific errors also derive from the builtin they
resemble, so ``except ValueError`` keeps working for callers who do not know this package.
"""

from __future__ import annotations


class MultimodalEmbedError(Exception):
    """Base class of every error raised by this package."""


class InvalidInputError(MultimodalEmbedError, ValueError):
    """An argument or an input item is not acceptable (the message names it)."""


class InputTypeError(MultimodalEmbedError, TypeError):
    """An input item has the wrong type (the message names its index)."""


class ConfigError(MultimodalEmbedError, ValueError):
    """A model configuration asks for something this package cannot compute exactly."""


class CheckpointError(MultimodalEmbedError, ValueError):
    """Weights do not match the model they are loaded into (missing, unexpected or mis-shaped keys)."""


class ModelNotFoundError(MultimodalEmbedError, FileNotFoundError):
    """A model could not be found locally and could not be downloaded."""


class NotAModelFolderError(InvalidInputError):
    """A folder given as a model holds no model (no ``config.json``, ``modules.json`` or a family's marker file);
    the CLI treats it as a usage error (exit code 2)."""


class IncompatibleModelsError(MultimodalEmbedError, ValueError):
    """Two towers that were not trained together were paired."""


class ImageDecodeError(MultimodalEmbedError, ValueError):
    """An image could not be read or decoded. ``item`` names the input, ``reason`` says why."""

    def __init__(self, item: str, reason: str):
        self.item = item
        self.reason = reason
        super().__init__(f"cannot use image {item}: {reason}")


class MissingDependencyError(MultimodalEmbedError, ImportError):
    """An optional dependency is needed for this feature."""


class IndexMismatchError(MultimodalEmbedError, ValueError):
    """An index was opened with a model (or dimension) other than the one that built it."""


class IndexCorruptError(MultimodalEmbedError):
    """An index file failed an integrity check."""


class IndexAccessError(MultimodalEmbedError, OSError):
    """An index could not be read or written (a read-only file or folder, a full disk, an I/O error, a lock held
    too long); the message names the index and the cause. What was committed before stays consistent."""


class HubUnreachableError(ModelNotFoundError):
    """A model is not cached and the Hugging Face hub cannot be reached (the message says what to run)."""


class ServingError(MultimodalEmbedError, RuntimeError):
    """The server could not start or stopped on its own (its cause in the message)."""
