"""Photo metadata the catalog keeps, read through pyexiv2 (Exiv2) from an image's bytes and from its
XMP sidecars: camera (make and model), lens, GPS position, and the keywords people gave it.

Camera, lens and position come from the first of: the local file's sidecars (``photo.jpg.xmp``,
then ``photo.xmp``: where Lightroom and darktable write a geotag or a raw file's camera, and a
position a person corrected), the file's EXIF, the file's own XMP.

Keywords come from embedded XMP ``dc:subject`` and ``lr:hierarchicalSubject`` (each path and its
leaf), IPTC ``Keywords``, and the sidecars of a local file in both conventions (``photo.jpg.xmp``,
``photo.xmp``; see :mod:`core.sidecars`). They keep their spelling (filters, facets and
truths match them case-insensitively), at most :data:`MAX_KEYWORDS` of :data:`MAX_KEYWORD_CHARS` characters each.

Metadata never fails an image: a block Exiv2 cannot parse, a garbled value or an unreadable
sidecar only leaves its fields empty.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from core import sidecars, uris

MAX_KEYWORDS = 500
MAX_KEYWORD_CHARS = 200
MAX_TEXT_CHARS = 200  # camera and lens
MAX_SIDECAR_BYTES = 16 * 2**20
_XMP_COORDINATE = re.compile(r"\d{1,3}(\.\d+)?(,\d{1,2}(\.\d+)?){0,2}[NSEW]")  # DDD,MM,SSk / DDD,MM.mmk
_HIERARCHIES = {"Xmp.lr.hierarchicalSubject": "|", "Xmp.digiKam.TagsList": "/"}


@dataclass(frozen=True)
class PhotoMeta:
    """What the catalog keeps of a photo's metadata: ``camera`` ("Make Model"), ``lens``, ``lat``
    and ``lon`` (decimal degrees, south and west negative), ``keywords`` (as spelt, file order,
    no repeats in any case) and ``sidecars`` (the state of its sidecars when read, see :func:`sidecar_state`)."""

    camera: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    keywords: tuple[str, ...] = ()
    sidecars: str = ""


def read_metadata(data: bytes, uri: str) -> PhotoMeta:
    """The :class:`PhotoMeta` of image bytes ``data`` found at ``uri`` (its sidecars are read when
    ``uri`` is local); empty fields where nothing usable was found."""
    exif, iptc, xmp = _embedded(data)
    local = not uris.is_remote(uri)
    side = _sidecar_packets(uri) if local else []
    # camera, lens and position: a sidecar's first (what a person set in Lightroom or darktable, and
    # the only place a raw file's editor writes), then the file's EXIF, then its own XMP
    sources = [*((_xmp_camera(p), _xmp_lens(p), _xmp_position(p)) for p in side)]
    sources += [(_exif_camera(exif), _exif_lens(exif), _exif_position(exif))]
    sources += [(_xmp_camera(xmp), _xmp_lens(xmp), _xmp_position(xmp))]
    camera = next((c for c, _, _ in sources if c), None)
    lens = next((x for _, x, _ in sources if x), None)
    lat, lon = next((p for _, _, p in sources if p is not None), (None, None))
    found = list(_xmp_keywords(xmp)) + _values(iptc.get("Iptc.Application2.Keywords"))
    for packet in side:
        found += list(_xmp_keywords(packet))
    return PhotoMeta(camera, lens, lat, lon, clean_keywords(found), sidecar_state(uri) if local else "")


def _exif_camera(exif: dict[str, Any]) -> str | None:
    return _join(_text(exif.get("Exif.Image.Make")), _text(exif.get("Exif.Image.Model")))


def _exif_lens(exif: dict[str, Any]) -> str | None:
    return _text(exif.get("Exif.Photo.LensModel")) or _text(exif.get("Exif.Canon.LensModel"))


def _exif_position(exif: dict[str, Any]) -> tuple[float, float] | None:
    lat = _degrees(exif.get("Exif.GPSInfo.GPSLatitude"), exif.get("Exif.GPSInfo.GPSLatitudeRef"), 90)
    lon = _degrees(exif.get("Exif.GPSInfo.GPSLongitude"), exif.get("Exif.GPSInfo.GPSLongitudeRef"), 180)
    return None if lat is None or lon is None else (lat, lon)


def _xmp_camera(xmp: dict[str, Any]) -> str | None:
    return _join(_text(xmp.get("Xmp.tiff.Make")), _text(xmp.get("Xmp.tiff.Model")))


def _xmp_lens(xmp: dict[str, Any]) -> str | None:
    return _text(xmp.get("Xmp.exifEX.LensModel")) or _text(xmp.get("Xmp.aux.Lens"))


def _xmp_position(xmp: dict[str, Any]) -> tuple[float, float] | None:
    lat = _xmp_degrees(xmp.get("Xmp.exif.GPSLatitude"), "NS", 90)
    lon = _xmp_degrees(xmp.get("Xmp.exif.GPSLongitude"), "EW", 180)
    return None if lat is None or lon is None else (lat, lon)


def _xmp_degrees(value: Any, directions: str, limit: float) -> float | None:
    """Decimal degrees of an XMP GPS coordinate, ``DDD,MM,SSk`` or ``DDD,MM.mmk`` (k one of
    ``directions``, the second one negative); None when malformed or beyond ``limit``."""
    text = value.strip().upper() if isinstance(value, str) else ""
    if not _XMP_COORDINATE.fullmatch(text) or text[-1] not in directions:
        return None
    parts = [float(p) for p in text[:-1].split(",")]
    if any(p >= 60 for p in parts[1:]):  # minutes and seconds
        return None
    degrees = sum(p / 60**i for i, p in enumerate(parts))
    if degrees > limit:
        return None
    return -degrees if text[-1] == directions[1] else degrees


def _embedded(data: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(EXIF, IPTC, XMP) of ``data`` as pyexiv2 reads them (key -> text or list); a block that
    cannot be read is empty."""
    import pyexiv2

    pyexiv2.set_log_level(4)  # mute: a damaged block is no error here
    blocks: list[dict[str, Any]] = [{}, {}, {}]
    try:
        image = pyexiv2.ImageData(data)
    except Exception:
        return blocks[0], blocks[1], blocks[2]
    try:
        for i, read in enumerate((image.read_exif, image.read_iptc, image.read_xmp)):
            try:
                blocks[i] = read(encoding="utf-8") or {}
            except Exception:  # undecodable text, a damaged block
                blocks[i] = {}
    finally:
        image.close()
    return blocks[0], blocks[1], blocks[2]


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("\x00", " ").split())
    return text[:MAX_TEXT_CHARS] or None


def _join(make: str | None, model: str | None) -> str | None:
    """ "Make Model", without the make twice when the model repeats it (``Canon`` ``Canon EOS R5``),
    at most :data:`MAX_TEXT_CHARS` characters (what the ``camera`` filter accepts)."""
    if make and model and model.lower().startswith(make.lower()):
        return model
    return " ".join(p for p in (make, model) if p)[:MAX_TEXT_CHARS].strip() or None


def _degrees(value: Any, ref: Any, limit: float) -> float | None:
    """Decimal degrees of an EXIF rational triple ``"d/1 m/1 s/100"`` signed by ``ref`` (S, W
    negative); None when malformed or beyond ``limit``."""
    try:
        parts = [Fraction(p) for p in str(value).split()]
        if len(parts) != 3 or any(p < 0 for p in parts):
            return None
        degrees = float(parts[0] + parts[1] / 60 + parts[2] / 3600)
    except (ValueError, ZeroDivisionError, TypeError):
        return None
    if degrees > limit:
        return None
    return -degrees if str(ref).strip().upper()[:1] in ("S", "W") else degrees


def _values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def _xmp_keywords(fields: dict[str, Any]) -> Iterable[str]:
    """Flat keywords, then each hierarchical path's leaf and the path itself."""
    yield from _values(fields.get("Xmp.dc.subject"))
    for key, separator in _HIERARCHIES.items():
        for path in _values(fields.get(key)):
            yield path.rsplit(separator, 1)[-1]
            yield path


def _sidecar_packets(uri: str) -> list[dict[str, Any]]:
    """The XMP properties of the local image's sidecars (``photo.jpg.xmp``, then ``photo.xmp``);
    an unreadable or oversized one gives none."""
    found: list[dict[str, Any]] = []
    for path in sidecar_paths(uri):
        try:
            if os.path.getsize(path) > MAX_SIDECAR_BYTES:
                continue
            with open(path, "rb") as fh:
                found.append(sidecars.read_xmp(fh.read()))
        except Exception:  # vanished, unreadable, not XMP
            continue
    return found


def sidecar_paths(uri: str) -> list[str]:
    """The paths of a local image's two possible sidecars (``photo.jpg.xmp``, ``photo.xmp``); none
    for a remote image."""
    try:
        names = sidecars.sidecar_names(uris.to_path(uri))
    except Exception:
        return []
    return list(dict.fromkeys(names[kind] for kind in sidecars.SIDECAR_NAMES))


def sidecar_state(uri: str, may_exist: Callable[[str], bool] | None = None) -> str:
    """The state of a local image's sidecars, to tell when one changes: ``kind:size:mtime_ns`` of
    each present, ``;``-joined ("" without any, and for remote images). ``may_exist(path)`` False
    says a sidecar is surely absent, without a ``stat`` (a folder listing knows)."""
    if uris.is_remote(uri):
        return ""
    parts = []
    for kind, path in zip(sidecars.SIDECAR_NAMES, sidecar_paths(uri), strict=False):
        if may_exist is not None and not may_exist(path):
            continue
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        parts.append(f"{kind}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def keyword_forms(by_field: Mapping[str, Sequence[str]]) -> set[str]:
    """The catalog keywords (see :func:`clean_keywords`) that keywords written into sidecar fields
    (field -> values, as :data:`core.sidecars.FIELDS` names them) account for alone: the flat ones
    of ``dc:subject`` and the hierarchical paths of more than one level. A path's leaf, or a
    one-level path, reads the same as a flat keyword, which a person may hold on their own: the
    flat field decides for it."""
    return set(
        keyword_key(w)
        for w in clean_keywords(
            v
            for f, values in by_field.items()
            if f in sidecars.FIELDS
            for v in values
            if f == "dc:subject" or "|" in v or "/" in v
        )
    )


def clean_keywords(words: Iterable[str]) -> tuple[str, ...]:
    """``words`` with runs of white space made one space, cut to :data:`MAX_KEYWORD_CHARS`, without
    empties and repeats in any case (the first spelling stays), at most :data:`MAX_KEYWORDS` of
    them, in order. The catalog matches them lower-case (:func:`keyword_key`)."""
    out: dict[str, str] = {}
    for word in words:
        text = " ".join(str(word).replace("\x00", " ").split())[:MAX_KEYWORD_CHARS]
        if text and keyword_key(text) not in out:
            out[keyword_key(text)] = text
            if len(out) >= MAX_KEYWORDS:
                break
    return tuple(out.values())


def keyword_key(word: str) -> str:
    """What a keyword is matched by (filters, facets, ``eval --truth keywords``): lower case, at
    most :data:`MAX_KEYWORD_CHARS` characters (lower-casing may lengthen a text: ``İ``)."""
    return word.lower()[:MAX_KEYWORD_CHARS]
