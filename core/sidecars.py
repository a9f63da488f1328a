"""XMP sidecars: their names beside an image, their keyword fields, read and written through pyexiv2
(Exiv2's XMP toolkit), and atomic replacement on disk.

Keyword fields (:data:`FIELDS`), each an XMP array of strings: ``dc:subject`` (flat keywords, a Bag),
``lr:hierarchicalSubject`` (Lightroom, ``parent|child``, a Bag) and ``digiKam:TagsList`` (digiKam,
``parent/child``, a Seq). Every other property of a packet is kept as Exiv2 parsed it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import SidecarError

# field -> (Exiv2 key, XMP array type)
FIELDS: dict[str, tuple[str, str]] = {
    "dc:subject": ("Xmp.dc.subject", "Bag"),
    "lr:hierarchicalSubject": ("Xmp.lr.hierarchicalSubject", "Bag"),
    "digiKam:TagsList": ("Xmp.digiKam.TagsList", "Seq"),
}
SIDECAR_NAMES = ("full", "stem")
XMP_MIME = "application/rdf+xml"
# the packet a new sidecar starts from; Exiv2 fills it and serialises it
EMPTY_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>\n'
    "</x:xmpmeta>\n"
    '<?xpacket end="w"?>'
).encode()


def sidecar_names(path: str) -> dict[str, str]:
    """The two sidecar paths of image ``path``: ``full`` (``photo.jpg.xmp``: digiKam, darktable) and
    ``stem`` (``photo.xmp``: Lightroom)."""
    return {"full": path + ".xmp", "stem": os.path.splitext(path)[0] + ".xmp"}


def choose_sidecar(path: str, new_name: str = "full") -> tuple[str, bool]:
    """(sidecar path, exists) for image ``path``: an existing ``photo.jpg.xmp``, else an existing
    ``photo.xmp``, else the ``new_name`` one (``full`` or ``stem``), not yet there."""
    names = sidecar_names(path)
    for kind in ("full", "stem"):
        if os.path.lexists(names[kind]):
            return names[kind], True
    return names[new_name], False


def _open(data: bytes):  # noqa: ANN202 (pyexiv2.ImageData; pyexiv2 is imported on first use)
    import pyexiv2

    pyexiv2.set_log_level(3)  # errors raise; warnings would go to stderr
    try:
        image = pyexiv2.ImageData(data)
    except RuntimeError as err:
        raise SidecarError(f"not a readable XMP sidecar ({_first_line(err)})") from None
    if image.get_mime_type() != XMP_MIME:
        image.close()
        raise SidecarError(f"not an XMP sidecar (it holds {image.get_mime_type() or 'unknown data'})")
    return image


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or ["unknown error"])[0]


def _read(image) -> dict[str, list[str]]:  # noqa: ANN001
    try:
        found = image.read_xmp()
    except RuntimeError as err:
        raise SidecarError(f"damaged XMP ({_first_line(err)})") from None
    out: dict[str, list[str]] = {}
    for field, (key, _) in FIELDS.items():
        value = found.get(key, [])
        out[field] = [value] if isinstance(value, str) else [str(v) for v in value]
    return out


def read_xmp(data: bytes) -> dict[str, Any]:
    """Every property of the XMP packet ``data`` (bytes of a sidecar), Exiv2 key -> text or list;
    :class:`SidecarError` when it is not a parsable XMP sidecar."""
    image = _open(data)
    try:
        return dict(image.read_xmp() or {})
    except RuntimeError as err:
        raise SidecarError(f"damaged XMP ({_first_line(err)})") from None
    finally:
        image.close()


def read_keywords(data: bytes) -> dict[str, list[str]]:
    """field -> its keywords in file order, of the XMP packet ``data`` (bytes of a sidecar);
    :class:`SidecarError` when it is not a parsable XMP sidecar."""
    image = _open(data)
    try:
        return _read(image)
    finally:
        image.close()


def with_keywords(data: bytes, keywords: Mapping[str, Sequence[str]]) -> bytes:
    """The XMP packet ``data`` with each field of ``keywords`` set to that list (an empty list removes
    the field); every other property kept. :class:`SidecarError` when ``data`` cannot be parsed."""
    image = _open(data)
    try:
        _read(image)  # a damaged packet is refused before anything is changed
        arrays = {FIELDS[f][0]: (f"type={FIELDS[f][1]}" if items else None) for f, items in keywords.items()}
        image.modify_xmp(arrays)
        staged = image.get_bytes()
    except RuntimeError as err:
        raise SidecarError(f"cannot update XMP ({_first_line(err)})") from None
    finally:
        image.close()
    return _fill(staged, keywords)


def _fill(staged: bytes, keywords: Mapping[str, Sequence[str]]) -> bytes:
    """Items appended to the empty arrays of ``staged``. Exiv2 makes an array of the type asked for only
    from an empty one parsed back, and reads a leading ``type=`` of a text as its type: ``type= ``
    (an empty type) makes any keyword, even one starting with ``type=``, a plain text."""
    items = {
        f"{FIELDS[f][0]}[{i}]": f"type= {keyword}"
        for f, values in keywords.items()
        for i, keyword in enumerate(values, 1)
    }
    if not items:
        return staged
    image = _open(staged)
    try:
        image.modify_xmp(items)
        return image.get_bytes()
    except RuntimeError as err:
        raise SidecarError(f"cannot update XMP ({_first_line(err)})") from None
    finally:
        image.close()


def replace_file(path: str, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsynced, then renamed
    over ``path`` (readers see the old file or the new one, never a part). ``mode``: the permissions
    to give it (an updated sidecar keeps its own). ``OSError`` when the folder is not writable."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.vistag-{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as err:  # name the folder, not a temporary file nobody will see
        raise type(err)(err.errno, err.strerror, folder or ".") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder or ".")


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (a no-op where folders cannot be opened for fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
