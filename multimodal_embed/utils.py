"""Small shared helpers: weights loading, devices and dtypes, progress bars."""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from .errors import CheckpointError, ConfigError, InvalidInputError
from .precision import warn_if_slow_dtype

logger = logging.getLogger(__name__)
T = TypeVar("T")

AUTO_PROGRESS_MIN_STEPS = 8


def load_safetensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read a folder's weights: ``model.safetensors``, a sharded safetensors index, or (last resort) a
    ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``; never arbitrary pickles."""
    from safetensors.torch import load_file

    def read(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except MemoryError:
            raise CheckpointError(f"{path}: not enough memory to load the weights") from None
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: a tampered or truncated file
            raise CheckpointError(f"{path}: not a valid safetensors file ({type(exc).__name__}: {exc})") from None

    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        return read(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from .imagefiles import read_regular

        try:
            weight_map = json.loads(read_regular(index, MAX_JSON_BYTES))["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except OSError as exc:
            raise CheckpointError(f"{index}: cannot be read ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({type(exc).__name__}: {exc})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            path = folder / shard
            if Path(shard).is_absolute() or ".." in Path(shard).parts or not path.is_file():
                raise CheckpointError(f"{index}: shard {shard!r} is not a file in {folder}")
            state.update(read(path))
        return state
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        try:
            return torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError (refused code), truncated zip, ...
            raise CheckpointError(f"{pt}: cannot be loaded as plain tensors ({type(exc).__name__}: {exc})") from None
    raise CheckpointError(f"no weights in {folder}: expected model.safetensors")


MAX_JSON_BYTES = 256 * 1024 * 1024  # the largest model JSON file read (tokenizer.json files reach tens of MB)


def read_json(path: str | Path) -> Any:
    """A model folder's JSON file (``config.json``, ``tokenizer.json``...), or :class:`ConfigError` naming the file
    when it is not JSON, not UTF-8, not a regular file (a FIFO or device is never read) or over ``MAX_JSON_BYTES``.
    A missing file raises ``FileNotFoundError`` as before."""
    from .imagefiles import read_regular

    try:
        data = read_regular(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ConfigError(f"{path}: over {MAX_JSON_BYTES} bytes, not a model file") from None
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def load_tokenizer(folder: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(folder)``, with a damaged ``tokenizer.json`` (or any other tokenizer file the
    library refuses) reported as :class:`ConfigError` naming the file or the folder."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        read_json(folder / "tokenizer.json")  # a file that is not JSON is named as such
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except ImportError:  # a missing optional dependency (sentencepiece) says so itself
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises its own Exception subclasses
        raise ConfigError(f"{folder}: the tokenizer cannot be loaded ({type(exc).__name__}: {exc})") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA, then MPS, then CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` gives bf16 on CUDA devices that support it, fp16 on other CUDA devices, fp32 elsewhere."""
    if dtype is not None:
        try:
            dtype = dtype if isinstance(dtype, torch.dtype) else _DTYPES[str(dtype).lower()]
        except KeyError:
            raise InvalidInputError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None
        warn_if_slow_dtype(dtype, device.type)  # bf16 on a CPU that only emulates it: warn once, with the reason
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def progress(
    items: Iterable[T], show: bool | None, *, desc: str, unit: str = "it", total: int | None = None
) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar: always (``True``), never (``False``), or when long enough (``None``).

    Generators are not consumed ahead: pass ``total`` for them.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if show is None:
        show = total is not None and total >= AUTO_PROGRESS_MIN_STEPS
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, total=total)


@contextmanager
def worker_pool(workers: int, name: str = "mmembed") -> Iterator[ThreadPoolExecutor]:
    """A thread pool owned by the caller's ``with`` block, shut down there on every exit path: work not yet started
    is cancelled, running work is waited for. The one way the package runs a pipeline stage in threads: a pool held
    by a generator instead would be shut down by the garbage collector, in whatever thread triggers it, when a
    caller stops iterating early (an error, a ``break``), which deadlocked long-lived processes."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ModelHolder:
    """Mixin for encoders that wrap one ``torch.nn.Module`` in ``self.model``: where and in what dtype it runs."""

    model: Any
    # which int8 export recipe of multimodal_embed.engines fits the model ("nomic", "bert", "image"; None: none)
    export_recipe: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def truncations(self) -> TruncationNotice:
        """Text towers: the once-per-model notice of truncated texts (created on first use)."""
        return self.__dict__.setdefault("_truncations", TruncationNotice())


def as_int(value: Any, name: str) -> int:
    """``value`` as an int when it is one (a Python or numpy integer, not a bool), else :class:`InvalidInputError`
    naming the argument."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be an int, got {value!r}")
    return int(value)


def check_max_tokens(max_tokens: Any) -> int | None:
    """``None`` (the encoder's default token budget) or a positive int, else :class:`InvalidInputError`."""
    if max_tokens is None:
        return None
    value = as_int(max_tokens, "max_tokens")
    if value < 1:
        raise InvalidInputError(f"max_tokens must be a positive int, got {max_tokens!r}")
    return value


def check_batch_size(batch_size: Any) -> int:
    """A positive int, or :class:`InvalidInputError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


class TruncationNotice:
    """Warns once per model (per encoder object, so per loaded model in a process) that texts were truncated, with
    the count so far; later truncations go to the debug log with the running count. A caller that embeds one text
    at a time (a server, an indexing loop) gets one warning, not one per call."""

    def __init__(self) -> None:
        self.count = 0
        self._warned = False
        self._lock = threading.Lock()

    def add(self, n_cut: int, n_texts: int, limit: int, hint: str = "") -> None:
        if not n_cut:
            return
        with self._lock:
            self.count += n_cut
            first, total = not self._warned, self.count
            self._warned = True
        if first:
            logger.warning("%d of %d texts were longer than %d tokens and were truncated%s; this model's later "
                           "truncations are logged at debug level", n_cut, n_texts, limit, hint)
        else:
            logger.debug("%d of %d texts truncated to %d tokens (%d so far by this model)", n_cut, n_texts, limit,
                         total)
