"""One work-list entry, read, hashed, decoded and preprocessed: the same code in a Beam worker
thread and in a decode process (see :mod:`pipeline.decode_pool`).

An entry becomes a failure row (uri, stage, reason), the :class:`ImageKey` of content already
embedded with the run's model (its SHA-256 is known), or a key and its (3, H, W) uint8 pixels (or,
when the run decodes JPEGs on its GPU, a key and the :class:`~pipeline.gpu_decode.Encoded` bytes).
A decoded image's key also carries what the catalog keeps of it: its size, perceptual hash and
date taken; content already embedded but not yet described that way is decoded for them only.
Every image read also has its photo metadata read from the same bytes (and its sidecars), see
:mod:`core.photometa`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import uris
from core.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image, max_file_bytes
from core.hashes import perceptual_hash
from core.models import ModelIdentity
from core.photometa import PhotoMeta, read_metadata
from pipeline.gpu_decode import PHASH_DRAFT, Encoded, Pending, nvjpeg_candidate
from pipeline.inputs import FileEntry
from pipeline.preprocess import SplitTransform, split_transform, to_pixels


@dataclass(frozen=True)
class ImageKey:
    """What the pipeline learns about an image before embedding it."""

    uri: str
    sha256: str
    size: int
    mtime: float
    width: int
    height: int
    phash: str | None = None  # perceptual hash (core.hashes); None when not decoded here
    taken: float | None = None  # EXIF date taken, seconds since the epoch
    meta: PhotoMeta | None = None  # None when the metadata was not read
    orientation: int | None = None  # the EXIF orientation (1..8) decoding applied; None when not decoded

    def row(self, row: int) -> dict[str, Any]:
        """The key as a shard meta row (see :data:`pipeline.shards.META_COLUMNS`), ``row`` its
        embedding's row (-1: none in this shard)."""
        return self._described() | {
            "uri": self.uri,
            "sha256": self.sha256,
            "size": self.size,
            "mtime": self.mtime,
            "width": self.width,
            "height": self.height,
            "row": row,
            "phash": self.phash,
            "taken": self.taken,
            "orientation": self.orientation,
        }

    def _described(self) -> dict[str, Any]:
        m = self.meta
        if m is None:
            return {}
        fields = {"camera": m.camera, "lens": m.lens, "lat": m.lat, "lon": m.lon, "sidecars": m.sidecars}
        return fields | {"keywords": json.dumps(list(m.keywords), ensure_ascii=False)}


class KnownHashes(frozenset):
    """SHA-256s of content already embedded with the run's model (a frozenset that ``shared.Shared``
    can hold: it needs weak references); ``undescribed``: those of them the catalog has no
    perceptual hash for yet (decoded for it, not embedded again)."""

    undescribed: frozenset[str] = frozenset()


def failure(uri: str, stage: str, reason: str) -> dict[str, str]:
    return {"uri": uri, "stage": stage, "reason": reason[:500]}


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"


def load_known(path: str | None) -> KnownHashes:
    if not path:
        return KnownHashes()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as fh:
        lines = [line.split() for line in fh.read().decode().splitlines() if line.strip()]
    known = KnownHashes(words[0] for words in lines)
    known.undescribed = frozenset(words[0] for words in lines if words[1:] == ["-"])
    return known


def known_lines(described: dict[str, bool]) -> str:
    """The known-hashes file of content embedded with the run's model: sha256 -> whether the
    catalog describes it (perceptual hash) already; see :func:`load_known`."""
    return "\n".join(sha if done else f"{sha} -" for sha, done in described.items())


class EntryDecoder:
    """Read, hash, decode and preprocess one work-list entry; the same code in a Beam worker thread
    and in a decode process (see :mod:`pipeline.decode_pool`). Picklable until :meth:`setup`."""

    def __init__(
        self,
        identity: ModelIdentity,
        known_hashes_file: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        defer_jpeg: bool = False,
    ):
        self.identity = identity
        self.known_hashes_file = known_hashes_file
        self.max_pixels = max_pixels
        self.defer_jpeg = defer_jpeg  # JPEGs nvJPEG decodes are left encoded (see pipeline.gpu_decode)

    def setup(self, known: frozenset[str] | None = None) -> EntryDecoder:
        self._split: SplitTransform = split_transform(self.identity)
        self._draft = int(max(self._split.shape[1:]))
        self._known = known if known is not None else load_known(self.known_hashes_file)
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._split.shape

    def one(self, entry: FileEntry) -> dict[str, str] | ImageKey | tuple[ImageKey, np.ndarray | Encoded]:
        """A failure row, a key of already-embedded content, or a key and its (3, H, W) pixels (or its
        :class:`Encoded` bytes when ``defer_jpeg`` and nvJPEG decodes it)."""
        data = self._read(entry)
        if isinstance(data, dict):
            return data
        sha = hashlib.sha256(data).hexdigest()
        meta = _metadata(data, entry.uri)
        if sha in self._known and sha not in self._known.undescribed:
            return ImageKey(entry.uri, sha, len(data), entry.mtime, 0, 0, meta=meta)
        defer = self.defer_jpeg and sha not in self._known and nvjpeg_candidate(data)
        try:  # a deferred JPEG: decoded here at a small scale only, for its hash and size
            draft = min(self._draft, PHASH_DRAFT) if defer else self._draft
            decoded = decode_image(data, max_pixels=self.max_pixels, draft_size=draft, name=entry.uri)
            key = ImageKey(
                entry.uri,
                sha,
                len(data),
                entry.mtime,
                decoded.width,
                decoded.height,
                perceptual_hash(decoded.image),
                decoded.taken,
                meta,
                decoded.orientation,
            )
        except DecodeError as err:
            return failure(entry.uri, "decode", err.reason)
        except Exception as err:  # a bad file must never stop the run
            return failure(entry.uri, "preprocess", _reason(err))
        if sha in self._known:  # embedded already: described now, not embedded again
            return key
        if defer:
            return key, Encoded(data, decoded.orientation, decoded.width * decoded.height)
        try:
            arr = to_pixels(self._split.to_image(decoded.image))
            if arr.shape != self._split.shape:
                raise ValueError(f"preprocessed to {arr.shape}, expected {self._split.shape}")
        except Exception as err:
            return failure(entry.uri, "preprocess", _reason(err))
        return key, arr

    def _read(self, entry: FileEntry) -> bytes | dict[str, str]:
        """The entry's bytes, or a ``read`` failure row."""
        limit = max_file_bytes(self.max_pixels)
        if entry.size > limit:
            return failure(
                entry.uri,
                "read",
                f"file of {entry.size} bytes is larger than the {limit} bytes read for an image",
            )
        try:
            return uris.read_bytes(entry.uri, max_bytes=limit)
        except Exception as err:  # any filesystem's error: vanished, permission, I/O, not a regular file
            return failure(entry.uri, "read", _reason(err))


def _metadata(data: bytes, uri: str) -> PhotoMeta:
    """The photo metadata of ``data``; empty when reading it fails (it never fails the image)."""
    try:
        return read_metadata(data, uri)
    except Exception:
        return PhotoMeta()


Outcome = dict[str, str] | tuple[ImageKey, int]
Pixels = np.ndarray | Pending  # a chunk's (E, 3, H, W) uint8 pixels, or those with JPEGs still encoded


def number(outcomes: Sequence[Any]) -> tuple[list[Outcome], list[int], list[tuple[int, Encoded]]]:
    """Per-entry outcomes (failure row, key, (key, slot of decoded pixels) or (key, Encoded)) ->
    outcomes with rows numbered in entry order (-1 for a key alone), the slots of the decoded rows
    in order, and the (row, Encoded) of the others."""
    numbered: list[Outcome] = []
    slots: list[int] = []
    encoded: list[tuple[int, Encoded]] = []
    for outcome in outcomes:
        if isinstance(outcome, ImageKey):
            numbered.append((outcome, -1))
        elif isinstance(outcome, tuple):
            key, where = outcome
            row = len(slots) + len(encoded)
            numbered.append((key, row))
            if isinstance(where, Encoded):
                encoded.append((row, where))
            else:
                slots.append(where)
        else:
            numbered.append(outcome)
    return numbered, slots, encoded


def with_encoded(pixels: np.ndarray, encoded: Sequence[tuple[int, Encoded]]) -> Pixels:
    """``pixels`` alone, or as :class:`Pending` with the ``encoded`` rows."""
    return Pending(pixels, tuple(encoded)) if encoded else pixels


def decode_entries(entries: Sequence[FileEntry], decoder: EntryDecoder) -> tuple[list[Outcome], Pixels]:
    """Decode ``entries`` in this thread: per entry a failure row or (key, row in pixels; -1 when
    already embedded), and the (E, 3, H, W) uint8 pixels of the decoded ones (:class:`Pending`
    when some are left encoded)."""
    raw: list[Any] = []
    pixels: list[np.ndarray] = []
    for entry in entries:
        outcome = decoder.one(entry)
        if isinstance(outcome, tuple) and isinstance(outcome[1], np.ndarray):
            raw.append((outcome[0], len(pixels)))
            pixels.append(outcome[1])
        else:
            raw.append(outcome)
    outcomes, _, encoded = number(raw)
    batch = np.stack(pixels) if pixels else np.zeros((0, *decoder.shape), np.uint8)
    return outcomes, with_encoded(batch, encoded)


def pixel_rows(pixels: Pixels) -> int:
    """Rows of a chunk's pixels, encoded ones included."""
    return pixels.rows if isinstance(pixels, Pending) else len(pixels)
