"""Evaluation data sets read from local files, and their task recognised from the layout.

- ``zeroshot``: an ImageFolder tree (one subfolder per class, images anywhere below it; the label is the folder
  name with ``_`` read as a space), or a CSV / JSONL with a path column (``image``, ``path``, ``file_name``) and a
  ``label`` (or ``class``) column.
- ``image-text``: COCO-style captions JSON (``images`` with ``id`` and ``file_name``, ``annotations`` with
  ``image_id`` and ``caption``), a CSV / JSONL with a path column and a ``caption`` (or ``text``) column (several
  rows per image allowed), or a folder of images with ``.txt`` caption sidecars (first line).
- ``gallery``: a folder of images with a ``gallery.json`` giving each photo (by file name) a ``label`` and a
  ``query`` (or a list of queries), as the package's sample photos have (``mmembed eval photos/`` on the README
  Tour's folder). It is two data sets: ``zeroshot`` on the labels and ``image-text`` with the queries as captions
  (text-to-image retrieval); ``--task`` keeps one of them. Photos the file does not name are not counted.
- ``text-retrieval``: a BEIR folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
  ``text``), ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``; header line).

Data files are read as regular files only (a FIFO or device is refused at once), up to ``MAX_DATA_BYTES`` each, as
UTF-8; every error names the file and, where there is one, the line. Relative image paths are read from the data
file's folder (COCO: ``image_root`` when given). Every data set has a
``sha256`` over its files' contents (images included), which keys the embedding cache and is reported with the
results. An image that cannot be read is kept with its reason (it is reported, and left out of the scores).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..imagefiles import is_image_name, list_image_files, printable, read_text, sha256_file

logger = logging.getLogger(__name__)

TASKS = ("zeroshot", "image-text", "text-retrieval")
PATH_COLUMNS = ("image", "path", "file_name", "filepath")
LABEL_COLUMNS = ("label", "class")
CAPTION_COLUMNS = ("caption", "text")
MAX_DATA_BYTES = 1 << 30  # the largest data file read (a labels CSV, COCO JSON, BEIR corpus): 1 GiB
MAX_SIDECAR_BYTES = 1 << 20  # a caption .txt beside an image
GALLERY_FILE = "gallery.json"
MAX_GALLERY_BYTES = 16 << 20


@dataclass
class ImageSet:
    """Image files with each file's content hash (``None`` where it could not be read) and read errors."""

    files: list[str]
    hashes: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)


@dataclass
class ClassificationData:
    name: str
    path: str
    classes: list[str]
    images: ImageSet
    labels: list[int]  # class index of each image
    sha256: str
    task: str = "zeroshot"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "task": self.task, "sha256": self.sha256,
                "images": len(self.images.files), "classes": len(self.classes)}


@dataclass
class CaptionData:
    name: str
    path: str
    images: ImageSet
    captions: list[str]
    caption_image: list[int]  # image index of each caption
    sha256: str
    task: str = "image-text"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "task": self.task, "sha256": self.sha256,
                "images": len(self.images.files), "captions": len(self.captions)}


@dataclass
class TextRetrievalData:
    name: str
    path: str
    split: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: list[dict[str, int]]  # judgements of each query, in query order
    sha256: str
    task: str = "text-retrieval"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "task": self.task, "sha256": self.sha256, "split": self.split,
                "documents": len(self.docs), "queries": len(self.queries)}


Dataset = ClassificationData | CaptionData | TextRetrievalData


# -- hashing ---------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """A data file's SHA-256 (:func:`~multimodal_embed.imagefiles.sha256_file`: regular files only)."""
    return sha256_file(path)


def hash_images(files: list[str]) -> ImageSet:
    """Each file's content hash; a file that cannot be read gets ``None`` and its reason."""
    hashes: list[str | None] = []
    errors: dict[int, str] = {}
    for i, f in enumerate(files):
        try:
            hashes.append(file_sha256(f))
        except OSError as exc:
            hashes.append(None)
            errors[i] = f"cannot read: {exc.strerror or exc}"
    return ImageSet(files, hashes, errors)


def _digest(parts: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for p in parts:
        data = str(p).encode("utf-8", "surrogateescape")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


# -- recognising the layout ----------------------------------------------------------------------------------------
def detect_task(path: str | os.PathLike) -> str:
    """The task a data path holds, from its layout (see the module docstring); InvalidInputError if none fits."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "corpus.jsonl").is_file():
            return "text-retrieval"
        if (p / GALLERY_FILE).is_file():
            return "gallery"
        files = list_image_files(p)
        if any(f.with_suffix(".txt").is_file() for f in files):
            return "image-text"
        if any(f.parent != p for f in files):
            return "zeroshot"
        raise InvalidInputError(f"{path}: not a BEIR folder (corpus.jsonl), a gallery ({GALLERY_FILE} with a label and "
                                f"a query per photo), a folder of class subfolders or of captioned images (.txt "
                                f"sidecars)")
    if not p.is_file():
        raise InvalidInputError(f"{path}: no such file or folder")
    if p.suffix.lower() == ".json":
        return "image-text"
    if p.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        columns = set(next(iter(_rows(p)), {}))
        if columns & set(LABEL_COLUMNS):
            return "zeroshot"
        if columns & set(CAPTION_COLUMNS):
            return "image-text"
        raise InvalidInputError(f"{path}: needs a label column {LABEL_COLUMNS} (zero-shot) or a caption column "
                                f"{CAPTION_COLUMNS} (image-text); found {sorted(columns)}")
    raise InvalidInputError(f"{path}: unknown data format (use a folder, .json, .csv, .tsv or .jsonl)")


def load_dataset(path: str | os.PathLike, task: str | None = None, *, split: str = "test",
                 limit_per_class: int | None = None, image_root: str | os.PathLike | None = None) -> Dataset:
    """Read the data set at ``path`` for ``task`` (default: :func:`detect_task`; a gallery folder: its zero-shot
    half, see :func:`load_datasets` for both)."""
    return load_datasets(path, task, split=split, limit_per_class=limit_per_class, image_root=image_root)[0]


def load_datasets(path: str | os.PathLike, task: str | None = None, *, split: str = "test",
                  limit_per_class: int | None = None, image_root: str | os.PathLike | None = None) -> list[Dataset]:
    """The data sets at ``path``: one, or two for a gallery folder (zero-shot on its labels, then image-text on its
    queries) unless ``task`` names one."""
    found = task or detect_task(path)
    if found not in (*TASKS, "gallery"):
        raise InvalidInputError(f"unknown task {found!r}; use one of {TASKS}")
    p = Path(path).expanduser()
    if p.is_dir() and (p / GALLERY_FILE).is_file() and found in ("gallery", "zeroshot", "image-text"):
        both = load_gallery(p, limit_per_class)
        return list(both) if found == "gallery" else [both[0] if found == "zeroshot" else both[1]]
    if found == "text-retrieval":
        return [load_beir(p, split)]
    if found == "zeroshot":
        return [load_image_folder(p, limit_per_class) if p.is_dir() else load_labelled_table(p, limit_per_class)]
    if p.is_dir():
        return [load_caption_folder(p)]
    if p.suffix.lower() == ".json":
        return [load_coco(p, image_root)]
    return [load_caption_table(p)]


def _labelled_images(pairs: list[tuple[str, str]], limit_per_class: int | None, name: str, root: Any,
                     salt: list[Any] | None = None) -> tuple[list[str], list[tuple[str, int]], ImageSet, str]:
    """The one reading of (image file, label) pairs for zero-shot (a label table, a gallery): sorted classes (at
    least 2), the first ``limit_per_class`` files of each with their class index, their hashes, and the digest of
    it all (paths relative to ``root``; ``salt`` first)."""
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise InvalidInputError(f"{name}: zero-shot needs at least 2 labels, found {classes}")
    index = {c: j for j, c in enumerate(classes)}
    seen: dict[str, int] = {}
    kept = []
    for f, label in pairs:
        seen[label] = seen.get(label, 0) + 1
        if not limit_per_class or seen[label] <= limit_per_class:
            kept.append((f, index[label]))
    images = hash_images([f for f, _ in kept])
    digest = _digest([*(salt or []), len(classes), *classes, *(f"{os.path.relpath(f, root)}\0{h}\0{y}"
                                                                for (f, y), h in zip(kept, images.hashes))])
    return classes, kept, images, digest


def load_gallery(root: Path, limit_per_class: int | None = None) -> tuple[ClassificationData, CaptionData]:
    """A gallery folder (see the module docstring): ``gallery.json`` maps photo file names (inside the folder) to
    ``{"label": ..., "query": ... or [...]}``; errors name the file and the entry."""
    meta = root / GALLERY_FILE
    name = printable(meta)
    try:
        data = json.loads(read_text(meta, MAX_GALLERY_BYTES))
    except ValueError as exc:
        raise InvalidInputError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{name}: expected an object of photo file name -> {{label, query}}")
    real_root = os.path.realpath(root)
    labelled: list[tuple[str, str]] = []
    queries: list[tuple[str, str]] = []
    for photo, entry in data.items():
        rel = Path(photo)
        if not photo or rel.is_absolute() or ".." in rel.parts or not is_image_name(photo):
            raise InvalidInputError(f"{name}: entry {photo!r}: give an image file name inside the folder")
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{name}: entry {photo!r}: expected {{\"label\": ..., \"query\": ...}}")
        file = os.path.join(real_root, photo)
        label, query = entry.get("label"), entry.get("query")
        if label is not None:
            if not isinstance(label, str) or not label.strip():
                raise InvalidInputError(f"{name}: entry {photo!r}: label must be a non-empty string")
            labelled.append((file, label.strip()))
        for q in ([query] if isinstance(query, str) else query if isinstance(query, list) else []):
            if not isinstance(q, str):
                raise InvalidInputError(f"{name}: entry {photo!r}: a query must be a string")
            queries.append((file, q))
        if query is not None and not isinstance(query, (str, list)):
            raise InvalidInputError(f"{name}: entry {photo!r}: query must be a string or a list of strings")
    classes, kept, images, digest = _labelled_images(labelled, limit_per_class, name, real_root, ["gallery"])
    zeroshot = ClassificationData(root.name, str(root), classes, images, [y for _, y in kept], digest)
    return zeroshot, _caption_data(root.name, str(root), queries)


def _name(p: Path) -> str:
    return p.stem if p.is_file() else p.name


# -- zero-shot ---------------------------------------------------------------------------------------------------
def folder_label(name: str) -> str:
    """The class label of an ImageFolder subfolder: its name with ``_`` read as a space (``golden_retriever``)."""
    return name.replace("_", " ")


def read_image_folder(root: Path, limit_per_class: int | None = None) -> list[tuple[str, list[str]]]:
    """The one ImageFolder reader (``mmembed eval`` and ``ZeroShotClassifier.evaluate``): ``(folder name, image
    files)`` of each class subfolder with images, in name order; a class's images are found anywhere below its
    folder (:func:`~multimodal_embed.imagefiles.list_image_files`: sorted, regular files only), the first
    ``limit_per_class`` of them when given. Labels come from :func:`folder_label`."""
    if not root.is_dir():
        raise InvalidInputError(f"{printable(root)} is not a folder")
    out = []
    for d in sorted(d for d in root.iterdir() if d.is_dir()):
        found = [str(f) for f in list_image_files(d)][:limit_per_class or None]
        if found:
            out.append((d.name, found))
    return out


def load_image_folder(root: Path, limit_per_class: int | None = None) -> ClassificationData:
    files: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    for name, found in read_image_folder(root, limit_per_class):
        classes.append(folder_label(name))
        files += found
        labels += [len(classes) - 1] * len(found)
    if len(classes) < 2:
        raise InvalidInputError(f"{printable(root)}: a zero-shot folder needs at least 2 class subfolders with images")
    images = hash_images(files)
    digest = _digest([len(classes), *classes, *(f"{os.path.relpath(f, root)}\0{h}\0{y}"
                                                 for f, h, y in zip(files, images.hashes, labels))])
    return ClassificationData(root.name, str(root), classes, images, labels, digest)


def _lines(text: str) -> list[str]:
    """Lines split at ``\\n`` only (``\\r\\n`` too): JSON strings may hold U+2028 and other breaks str.splitlines
    knows."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV / TSV (header line) or JSONL file; errors name the file and the line."""
    text = read_text(path, MAX_DATA_BYTES)
    name = printable(path)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(_lines(text), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InvalidInputError(f"{name} line {n}: not JSON ({getattr(exc, 'msg', exc)})") from None
                if not isinstance(row, dict):
                    raise InvalidInputError(f"{name} line {n}: not a JSON object")
                rows.append(row)
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        return list(reader)
    except csv.Error as exc:
        raise InvalidInputError(f"{name} line {reader.line_num}: {exc}") from None


def _column(path: Path, row: dict[str, Any], names: tuple[str, ...], n: int) -> str:
    for name in names:
        if row.get(name) not in (None, ""):
            return str(row[name])
    raise InvalidInputError(f"{printable(path)} row {n}: needs one of the columns {names}")


def _resolve(base: Path, item: str) -> str:
    p = Path(item).expanduser()
    return str(p if p.is_absolute() else base / p)


def load_labelled_table(path: Path, limit_per_class: int | None = None) -> ClassificationData:
    rows = _rows(path)
    pairs = [(_resolve(path.parent, _column(path, r, PATH_COLUMNS, n)), _column(path, r, LABEL_COLUMNS, n).strip())
             for n, r in enumerate(rows, 1)]
    classes, kept, images, digest = _labelled_images(pairs, limit_per_class, str(path), path.parent)
    return ClassificationData(path.stem, str(path), classes, images, [y for _, y in kept], digest)


# -- image-text ----------------------------------------------------------------------------------------------------
def _caption_data(name: str, path: str, pairs: list[tuple[str, str]]) -> CaptionData:
    """Captions grouped by image (first appearance order); empty captions dropped."""
    order: dict[str, int] = {}
    captions, owner = [], []
    for f, caption in pairs:
        caption = caption.strip()
        if not caption:
            continue
        owner.append(order.setdefault(f, len(order)))
        captions.append(caption)
    if not captions:
        raise InvalidInputError(f"{path}: no captions found")
    files = list(order)
    images = hash_images(files)
    digest = _digest([len(files), *(f"{os.path.basename(f)}\0{h}" for f, h in zip(files, images.hashes)),
                      *(f"{o}\0{c}" for o, c in zip(owner, captions))])
    return CaptionData(name, path, images, captions, owner, digest)


def load_caption_table(path: Path) -> CaptionData:
    rows = _rows(path)
    pairs = [(_resolve(path.parent, _column(path, r, PATH_COLUMNS, n)), _column(path, r, CAPTION_COLUMNS, n))
             for n, r in enumerate(rows, 1)]
    return _caption_data(path.stem, str(path), pairs)


def load_caption_folder(root: Path) -> CaptionData:
    pairs = []
    for f in list_image_files(root):
        side = f.with_suffix(".txt")
        if side.is_file():
            lines = read_text(side, MAX_SIDECAR_BYTES).splitlines()
            if lines and lines[0].strip():
                pairs.append((str(f), lines[0]))
    return _caption_data(root.name, str(root), pairs)


def load_coco(path: Path, image_root: str | os.PathLike | None = None) -> CaptionData:
    try:
        data = json.loads(read_text(path, MAX_DATA_BYTES))
        files = {img["id"]: str(img["file_name"]) for img in data["images"]}
        notes = [(a["image_id"], str(a["caption"])) for a in data["annotations"]]
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInputError(f"{printable(path)}: not COCO-style captions (images: id, file_name; annotations: image_id, "
                                f"caption): {type(exc).__name__}: {exc}") from None
    base = Path(image_root).expanduser() if image_root else path.parent
    missing = sorted({i for i, _ in notes if i not in files}, key=str)
    if missing:
        raise InvalidInputError(f"{path}: annotations name image ids not in images: {missing[:5]}")
    return _caption_data(path.stem, str(path), [(_resolve(base, files[i]), c) for i, c in notes])


# -- text retrieval ------------------------------------------------------------------------------------------------
def _id_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a BEIR JSONL file whose rows all have an ``_id``, each id once; errors name file and line."""
    name = printable(path)
    text = read_text(path, MAX_DATA_BYTES)
    out: list[tuple[int, dict[str, Any]]] = []
    first: dict[str, int] = {}
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{name} line {n}: not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(row, dict):
            raise InvalidInputError(f"{name} line {n}: not a JSON object")
        if row.get("_id") in (None, ""):
            raise InvalidInputError(f"{name} line {n}: no _id")
        key = str(row["_id"])
        if key in first:
            raise InvalidInputError(f"{name} line {n}: duplicate _id {key!r} (first on line {first[key]})")
        first[key] = n
        out.append((n, row))
    return out


def load_beir(root: Path, split: str = "test") -> TextRetrievalData:
    for f in ("corpus.jsonl", "queries.jsonl"):
        if not (root / f).is_file():
            raise InvalidInputError(f"{root}: a BEIR folder needs {f}")
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise InvalidInputError(f"{root}: no qrels/{split}.tsv (splits: "
                                f"{sorted(p.stem for p in (root / 'qrels').glob('*.tsv'))})")
    doc_ids, docs = [], []
    for n, row in _id_rows(root / "corpus.jsonl"):
        title, text = str(row.get("title") or "").strip(), str(row.get("text") or "").strip()
        doc_ids.append(str(row["_id"]))
        docs.append(f"{title} {text}".strip())
    query_text = {str(row["_id"]): str(row.get("text", "")) for _, row in _id_rows(root / "queries.jsonl")}
    judged: dict[str, dict[str, int]] = {}
    qname = printable(qrels_file)
    for n, line in enumerate(_lines(read_text(qrels_file, MAX_DATA_BYTES)), 1):
        parts = line.split("\t")
        if n == 1 and parts[0] == "query-id":
            continue
        if len(parts) < 3:
            if line.strip():
                raise InvalidInputError(f"{qname} line {n}: needs query-id, corpus-id, score")
            continue
        try:
            score = float(parts[2])
        except ValueError:
            raise InvalidInputError(f"{qname} line {n}: score {parts[2]!r} is not a number") from None
        if not math.isfinite(score) or abs(score) > 1e9:
            raise InvalidInputError(f"{qname} line {n}: score {parts[2]!r} is not a finite grade")
        judged.setdefault(parts[0], {})[parts[1]] = int(score)
    unknown = [q for q in judged if q not in query_text]
    if unknown:
        raise InvalidInputError(f"{qname}: judged queries missing from queries.jsonl: {unknown[:5]}")
    query_ids = [q for q in query_text if q in judged]  # BEIR evaluates the judged queries, in file order
    digest = _digest([file_sha256(root / "corpus.jsonl"), file_sha256(root / "queries.jsonl"),
                      file_sha256(qrels_file), split])
    return TextRetrievalData(root.name, str(root), split, doc_ids, docs, query_ids,
                             [query_text[q] for q in query_ids], [judged[q] for q in query_ids], digest)
