"""Thumbnails: read only the indexed regular file, only while its bytes still hash to the catalog
row's SHA-256, render within bounded work and time, cache by content hash and size."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from core import uris
from core.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from core.errors import NotFound
from vistag.http.config import MAX_SOURCE_BYTES, RENDER_SLOTS, FileChanged, Overloaded, PayloadTooLarge

log = logging.getLogger(__name__)


def thumbnail_url(image_id: int) -> str:
    """The API path of an image's thumbnail (``?size=N`` picks one of the configured sizes)."""
    return f"/api/images/{image_id}/thumbnail"


def read_catalog_file(uri: str, max_bytes: int = MAX_SOURCE_BYTES) -> bytes:
    """The bytes of a catalog image (a local regular file, opened without blocking, or any Beam
    filesystem URI); :class:`NotFound` when it can no longer be read."""
    try:
        return uris.read_bytes(uri, max_bytes)
    except ValueError as err:
        raise PayloadTooLarge(f"the image file is larger than {max_bytes} bytes") from err
    except Exception as err:  # any filesystem's error: vanished, not a file, permission, I/O
        raise NotFound(f"the image file can no longer be read ({type(err).__name__})") from err


def render_thumbnail(data: bytes, size: int, name: str = "") -> bytes:
    """JPEG bytes of the image in ``data`` scaled to fit a ``size`` x ``size`` box (``name``: its file
    name, which tells camera RAW files whose content is a plain TIFF, see :mod:`core.formats`)."""
    from PIL import Image

    try:
        image = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, draft_size=size, name=name).image
    except DecodeError as err:
        raise NotFound(f"the image file can no longer be decoded: {err.reason}") from err
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()


class ThumbnailCache:
    """JPEG thumbnails in ``root``/<sha[:2]>/<sha>-<size>.jpg, keyed by content hash and size;
    renders run in daemon threads, at most ``RENDER_SLOTS`` at once (a large image decodes to
    100s of MB), and a request waits at most ``timeout_s`` in all for a slot and its render."""

    def __init__(self, root: Path, timeout_s: float):
        self.root, self.timeout_s = root, timeout_s
        self._slots = threading.BoundedSemaphore(RENDER_SLOTS)

    def path(self, sha256: str, size: int) -> Path | None:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            return None
        return self.root / sha256[:2] / f"{sha256}-{size}.jpg"

    def cached(self, sha256: str, size: int) -> bytes | None:
        path = self.path(sha256, size)
        try:
            return path.read_bytes() if path is not None else None
        except FileNotFoundError:
            return None

    def render(self, row: dict[str, Any], size: int) -> bytes:
        """The thumbnail of a catalog image row, rendered now (and cached); :class:`Overloaded`
        when the wait runs out (the render goes on and is cached), :class:`FileChanged` if the
        file's bytes no longer hash to the row's sha256."""
        limit = self.timeout_s
        deadline = time.monotonic() + limit
        if not self._slots.acquire(timeout=limit):
            raise Overloaded(f"all {RENDER_SLOTS} thumbnail render slots stayed busy for {limit:g} s")
        result: Future[bytes] = Future()

        def work() -> None:
            try:
                result.set_result(self._render(row, size))
            except BaseException as err:  # handed to the waiting request, if it still waits
                result.set_exception(err)
            finally:
                self._slots.release()

        threading.Thread(target=work, name="vistag-thumbnail", daemon=True).start()
        try:
            return result.result(timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError as err:
            if result.done():  # the render's own error, not the wait's
                raise
            raise Overloaded(f"the thumbnail took longer than {limit:g} s to render") from err

    def _render(self, row: dict[str, Any], size: int) -> bytes:
        data = read_catalog_file(row["uri"])
        path = self.path(row["sha256"], size)
        if path is None or hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise FileChanged("the file changed since it was indexed; re-run `vistag index` to show it")
        jpeg = render_thumbnail(data, size, name=row["uri"])
        self._write(path, jpeg)
        return jpeg

    @staticmethod
    def _write(path: Path, jpeg: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
        except OSError as err:  # a read-only home still serves thumbnails, uncached
            log.warning("cannot cache thumbnail %s: %s", path, err)
            tmp.unlink(missing_ok=True)
