"""Files on disk: the one list of image extensions, the one folder walker, and the one reader and writer of files.

Every caller that turns a folder into image paths (the index's scanner, ``mmembed embed/classify``, the Ray
lister, ``ZeroShotClassifier.evaluate``) goes through :func:`list_images`, so a rule about which files count
(extensions, regular files, links leaving the folder) is written once, here. Every file read from outside goes
through :func:`open_regular` (regular files only, never blocking): :func:`read_regular` (bounded),
:func:`sha256_file`, :func:`read_text`; every output file through :func:`write_atomic`, after
:func:`check_output_path`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["IMAGE_EXTENSIONS", "check_output_path", "data_uri", "file_url_path", "image_mime", "is_image_name",
           "iter_images", "list_image_files", "list_image_paths", "list_images", "open_regular", "printable",
           "read_image_file", "read_regular", "read_text", "sha256_file", "utf8_name", "utf8_text", "write_atomic"]

logger = logging.getLogger(__name__)
NOT_REGULAR = "not a regular file (FIFO, device, socket or a link to one)"
# Unicode bidirectional controls (embeddings, overrides, isolates, marks): a name holding them prints reordered
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# what Pillow (with pillow-avif / pillow-heif where installed) can open; lower case, with the dot
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".avif",
    ".avifs", ".heic", ".heif", ".ico", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".psd", ".tga", ".pcx",
    ".sgi", ".dds", ".icns", ".im", ".qoi",
})


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether a file name has an image extension (case-insensitive)."""
    return os.path.splitext(os.fspath(name))[1].lower() in IMAGE_EXTENSIONS


def printable(path: str | os.PathLike) -> str:
    """A file name safe to print on one line: control characters (newlines included), bidirectional controls
    (``\\u202e`` and the other embeddings, overrides, isolates and marks), backslashes and bytes that are not UTF-8
    are escaped (``\\n``, ``\\x1b``; an undecodable byte as ``\\xff``), so a name cannot forge output lines,
    drive the terminal, or display reordered (``gpj.exe`` shown as ``exe.jpg``)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode keeps it (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif (code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or 0xD800 <= code < 0xE000 or ch in "\u2028\u2029"
              or ch in BIDI_CONTROLS):
            out.append(ch.encode("unicode_escape").decode("ascii") if code < 0xD800 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def open_regular(path: str | bytes | os.PathLike) -> BinaryIO:
    """Open a file for binary reading only if it is a regular file (after links), without ever blocking: a FIFO, a
    device or a socket given directly raises ``OSError(EINVAL)`` at once instead of waiting in ``open()`` for a
    writer (or reading ``/dev/zero`` forever). The rule the folder walkers apply, for paths given one by one."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, os.fsdecode(path))
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | bytes | os.PathLike, max_bytes: int) -> bytes:
    """A regular file's bytes (:func:`open_regular`), at most ``max_bytes``: a larger file raises
    ``OSError(EFBIG)`` after reading only ``max_bytes + 1`` of them, so ``/dev/zero``-like or huge files cost the cap."""
    with open_regular(path) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", os.fsdecode(path))
    return data


def read_text(path: str | os.PathLike, max_bytes: int) -> str:
    """A UTF-8 text file (a BOM is dropped) through :func:`read_regular`; :class:`InvalidInputError` naming the file
    (and, for bytes that are not UTF-8, the line) when it cannot be read."""
    from .errors import InvalidInputError

    name = printable(path)
    try:
        data = read_regular(path, max_bytes)
    except OSError as exc:
        raise InvalidInputError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(f"{name} line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def sha256_file(path: str | bytes | os.PathLike) -> str:
    """The SHA-256 of a regular file's bytes, read in 1 MiB blocks through :func:`open_regular` (a FIFO or device,
    even one swapped in after a scan, raises ``OSError`` at once instead of blocking or reading forever)."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a file this package may write (:func:`write_atomic`), checked before any work: it is absent or a
    regular file, in an existing folder. A symbolic link is refused, never followed (a link planted at an output
    path cannot redirect the write; give the link's target instead), as are a folder, a device, a FIFO or a socket
    (renaming over them would replace them with a regular file). :class:`InvalidInputError` says which."""
    from .errors import InvalidInputError

    target = Path(os.path.expanduser(os.fspath(path)))
    name = printable(target)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        parent = target.parent
        if not parent.is_dir():
            raise InvalidInputError(f"{name}: cannot write it: the folder {printable(parent)} does not exist") from None
        return target
    except OSError as exc:
        raise InvalidInputError(f"{name}: cannot write it ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInputError(f"{name} is a symbolic link (to {printable(os.readlink(target))}); outputs are not "
                                f"written through links: give the file itself")
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"{name} is a folder; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{name} is {NOT_REGULAR}; outputs are written to regular files only "
                                f"(- writes to stdout where a command offers it)")
    return target


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(output: str | os.PathLike, write: Any) -> Path:
    """``write(fh)`` (a binary file) into a temporary file beside ``output``, then rename it over ``output``: a
    failure (full disk, interrupt) leaves the old file as it was and no partial file. ``output`` must pass
    :func:`check_output_path` (checked again here: a link, folder or device is never replaced). The file gets the mode
    any new file gets (``0o666`` less the umask), or the mode of the file it replaces."""
    import tempfile

    target = check_output_path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    try:
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)  # mkstemp made it 0600
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_image_file(path: str | bytes | os.PathLike, max_bytes: int) -> bytes:
    """A local image file's bytes, for sending it elsewhere (a service, a data URI): opened with
    :func:`read_regular` (a FIFO, a device or a socket is refused at once, never read or waited on) and read to
    ``max_bytes`` (callers pass the image loader's cap, ``images.URL_MAX_BYTES``); a larger file raises
    ``ValueError`` after reading at most one byte past the cap (a sparse 3 GB file costs 50 MB, not 3 GB)."""
    try:
        return read_regular(path, max_bytes)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ValueError(f"{printable(path)}: over {max_bytes} bytes, the most an image file may be") from None
        raise


_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"BM", "image/bmp"),
          (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


def image_mime(data: bytes) -> str:
    """The MIME type of image bytes from their first bytes (``application/octet-stream`` when unknown)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_uri(data: bytes) -> str:
    """Image bytes as a ``data:<mime>;base64,...`` URI (the type read from the bytes, not from a file name): how
    the adapters and ``mmembed search --server`` send an image to a service, byte for byte."""
    import base64

    return f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def file_url_path(text: str) -> str | None:
    """The local path of a ``file:`` URL (``file:///x/cat.jpg``, ``file://localhost/x/cat.jpg``; percent-escapes
    decoded), or None when ``text`` is not one. A ``file:`` URL naming another host raises ``ValueError``."""
    if text[:5].lower() != "file:":
        return None
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{printable(text)}: a file: URL on another host ({parts.netloc}) cannot be read")
    return url2pathname(parts.path)


def utf8_text(path: str) -> str:
    """A path as UTF-8 text for formats that hold nothing else (Parquet strings): bytes that are not UTF-8 become
    ``\\xNN``. Not reversible: keep ``os.fsencode(path)`` beside it where the exact name matters."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_name(path: str) -> bool:
    """Whether a path (as ``os`` returns it, undecodable bytes as surrogates) is valid UTF-8 text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inside(path: str, root: str) -> bool:
    """Whether ``path`` (already resolved) lies in ``root`` (already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def iter_images(
    root: str | os.PathLike,
    *,
    recursive: bool = True,
    follow_symlinks: bool = False,
    contain: bool = False,
    on_outside: Callable[[str], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    utf8_only: bool = False,
) -> Iterator[tuple[str, os.stat_result]]:
    """``(path, stat)`` of each regular image file under ``root``, folder by folder in sorted name order.

    ``follow_symlinks`` enters linked folders. ``contain=True`` keeps the walk inside ``root``'s real path:
    linked folders leaving it are not entered, and linked files leaving it go to ``on_outside`` instead of
    being yielded. Only regular files are yielded (after following a link): FIFOs, devices, sockets (and links
    to them, e.g. to ``/dev/zero``) go to ``on_skip(path, reason)``, as do entries that cannot be stat-ed;
    entries that vanish while walking are left out silently. Names that are not valid UTF-8 (Latin-1 names from
    older cameras and Windows shares) are yielded as ``os`` gives them (undecodable bytes as surrogates, so the
    path opens the same file); ``utf8_only=True`` sends them to ``on_skip`` instead, for writers of formats that
    hold UTF-8 text only (Parquet strings).
    """
    top = os.fspath(root)
    real_root = os.path.realpath(top)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=follow_symlinks):
        dirnames.sort()
        if not recursive:
            dirnames[:] = []
        elif contain:
            dirnames[:] = [d for d in dirnames if inside(os.path.realpath(os.path.join(dirpath, d)), real_root)]
        for name in sorted(filenames):
            if not is_image_name(name):
                continue
            path = os.path.join(dirpath, name)
            if contain and not inside(os.path.realpath(path), real_root):
                if on_outside is not None:
                    on_outside(path)
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if on_skip is not None:
                    on_skip(path, f"cannot stat: {exc.strerror or exc}")
                continue
            if not stat.S_ISREG(st.st_mode):
                if on_skip is not None:
                    on_skip(path, NOT_REGULAR)
                continue
            if utf8_only and not utf8_name(path):
                if on_skip is not None:
                    on_skip(path, "the file name is not valid UTF-8")
                continue
            yield path, st


def list_images(root: str | os.PathLike, *, recursive: bool = True,
                on_skip: Callable[[str, str], None] | None = None, utf8_only: bool = False) -> list[str]:
    """Every regular image file under ``root`` (``~`` expanded; linked folders not entered), sorted by path:
    a stable order, so row ``i`` of a listing is the same file on every run. Special files (and, with
    ``utf8_only``, names that are not UTF-8) go to ``on_skip(path, reason)`` (default: a logged warning)."""
    return [str(p) for p in list_image_files(root, recursive=recursive, on_skip=on_skip, utf8_only=utf8_only)]


def list_image_files(root: str | os.PathLike, *, recursive: bool = True,
                     on_skip: Callable[[str, str], None] | None = None, utf8_only: bool = False) -> list[Path]:
    """:func:`list_images` as :class:`~pathlib.Path` objects, sorted part by part (the order ``align.load_pairs``
    uses for its folders of captioned or class-sorted images)."""
    top = os.path.expanduser(os.fspath(root))
    return sorted(Path(path) for path, _ in iter_images(top, recursive=recursive, on_skip=on_skip or _log_skip,
                                                        utf8_only=utf8_only))


def _log_skip(path: str, reason: str) -> None:
    logger.warning("skipped %s: %s", printable(path), reason)


def list_image_paths(items: Sequence[str], on_skip: Callable[[str, str], None] | None = None) -> list[str]:
    """Folders expanded to their images (:func:`list_images`); anything else kept as given, in order."""
    out: list[str] = []
    for item in items:
        if Path(item).expanduser().is_dir():
            out += list_images(item, on_skip=on_skip)
        else:
            out.append(item)
    return out
