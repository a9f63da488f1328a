"""A real photo folder, end to end: JPEGs with EXIF, HEIC, PNG, TIFF and sidecars of both
conventions indexed with no failure; date and keyword filters exact; tags written to XMP sidecars
read back by exiftool, people's keywords kept, originals untouched, a second write a no-op."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistag import Archive, synth

SHAPES_MODEL = "local-dir:" + str(Path(__file__).resolve().parent / "fixtures" / "shapes-clip")
EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool (Debian libimage-exiftool-perl) reads back"
)
SIDECAR = """<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">
<xmp:Rating>3</xmp:Rating><dc:subject><rdf:Bag><rdf:li>{keyword}</rdf:li></rdf:Bag></dc:subject>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


def _shape(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return synth.draw([synth.random_spec(rng)], image_size=96, rng=rng)


def _exif_jpeg(image: Image.Image, taken: str, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = taken
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def _archive(root: Path) -> dict[str, Path]:
    """Ten files of six kinds; every mtime in 2023, dates taken from EXIF where there is one."""
    import pillow_heif

    root.mkdir()
    files = {
        "spring.jpg": _exif_jpeg(_shape(1), "2019:04:02 10:00:00"),
        "summer.jpg": _exif_jpeg(_shape(2), "2019:07:14 18:00:00", orientation=6),
        "winter.jpg": _exif_jpeg(_shape(3), "2021:01:05 09:30:00"),
        "beach.jpg": _exif_jpeg(_shape(4), "2019:08:01 12:00:00"),
        "garden.jpg": _exif_jpeg(_shape(5), "2020:05:20 16:00:00"),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    heif = pillow_heif.from_pillow(_shape(6))
    heif.save(str(root / "phone.heic"), quality=90)
    _shape(7).save(root / "drawing.png")
    pages = [_shape(8), _shape(9)]
    pages[0].save(root / "scan.tif", save_all=True, append_images=pages[1:])
    (root / "beach.jpg.xmp").write_text(SIDECAR.format(keyword="Seaside"))  # digiKam / darktable
    (root / "garden.xmp").write_text(SIDECAR.format(keyword="Grandma"))  # Lightroom
    subprocess.run(
        [EXIFTOOL, "-q", "-overwrite_original", "-IPTC:Keywords=Holiday", str(root / "summer.jpg")],
        check=True,
    )
    for path in root.iterdir():
        os.utime(path, (1.69e9, 1.69e9))
    return {p.name: p for p in root.iterdir()}


def _found(cli, home: Path, *options: object) -> set[str]:
    out = cli("search", "a shape", "--home", home, "-k", 50, "--json", *options)
    assert out.code == 0, out.err
    return {Path(h["uri"]).name for h in out.json()}


def _read_back(path: Path) -> dict[str, list]:
    fields = ["-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-xmp:Rating"]
    run = subprocess.run([EXIFTOOL, "-j", *fields, str(path)], capture_output=True, text=True, check=True)
    (found,) = json.loads(run.stdout)
    return {k: v if isinstance(v, list) else [v] for k, v in found.items() if k != "SourceFile"}


def test_a_photo_folder_in_and_tags_out(cli, tmp_path):
    files = _archive(tmp_path / "photos")
    home = tmp_path / "home"
    out = cli("index", tmp_path / "photos", "--home", home, "--model", SHAPES_MODEL, "--json")
    assert out.code == 0, out.err
    assert (out.json()["embedded"], out.json()["failed"]) == (
        8,
        0,
    )  # sidecars are neither images nor failures
    status = cli("status", "--home", home, "--json").json()
    assert (status["indexed"], status["failed"]) == (8, 0)

    assert _found(cli, home, "--since", "2019-01-01", "--until", "2019-12-31") == {
        "spring.jpg",
        "summer.jpg",
        "beach.jpg",
    }
    assert _found(cli, home, "--since", "2022-01-01") == {"phone.heic", "drawing.png", "scan.tif"}  # mtime
    assert _found(cli, home, "--keyword", "seaside") == {"beach.jpg"}  # a digiKam sidecar
    assert _found(cli, home, "--keyword", "GRANDMA") == {"garden.jpg"}  # a Lightroom sidecar, any case
    assert _found(cli, home, "--keyword", "holiday") == {"summer.jpg"}  # embedded IPTC
    with Archive(home) as archive:  # the catalog keeps what was read: camera-upright size, orientation
        summer = archive.catalog.image(str(files["summer.jpg"]))
        assert (summer["orientation"], summer["width"], summer["height"]) == (6, 96, 96)
        assert archive.catalog.image(str(files["spring.jpg"]))["orientation"] == 1

    labels = "red circle,blue square,green triangle,yellow star,purple circle"
    assert cli("tag", "--labels", labels, "--home", home).code == 0
    originals = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}
    out = cli("write-xmp", "--home", home, "--min-confidence", 0, "--top", 2, "--json")
    assert out.code == 0 and out.json()["totals"]["failed"] == 0, out.err
    written = {Path(e["uri"]).name: e for e in out.json()["images"]}
    tags = {Path(r["uri"]).name: [t["label"] for t in r["tags"]][:2] for r in _export(cli, home)}
    for name in ("spring.jpg", "phone.heic", "scan.tif"):  # new sidecars, digiKam naming
        assert _read_back(Path(str(files[name]) + ".xmp"))["Subject"] == tags[name]
    beach = _read_back(Path(str(files["beach.jpg"]) + ".xmp"))
    assert beach["Subject"] == ["Seaside", *tags["beach.jpg"]] and beach["Rating"] == [3]
    garden = _read_back(tmp_path / "photos" / "garden.xmp")
    assert garden["Subject"] == ["Grandma", *tags["garden.jpg"]] and garden["Rating"] == [3]
    assert not (tmp_path / "photos" / "garden.jpg.xmp").exists()
    assert written["garden.jpg"]["status"] == "updated"
    after = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}
    assert {k: v for k, v in after.items() if not k.endswith(".xmp")} == {
        k: v for k, v in originals.items() if not k.endswith(".xmp")
    }
    sidecars = {p.name: p.read_bytes() for p in (tmp_path / "photos").glob("*.xmp")}
    again = cli("write-xmp", "--home", home, "--min-confidence", 0, "--top", 2, "--json").json()
    assert {e["status"] for e in again["images"]} == {"unchanged"}
    assert {p.name: p.read_bytes() for p in (tmp_path / "photos").glob("*.xmp")} == sidecars
    # the sidecars changed, so metadata is read again: people's keywords only, nothing re-embedded
    out = cli("index", tmp_path / "photos", "--home", home, "--json")
    assert out.code == 0 and out.json()["embedded"] == 0
    assert _found(cli, home, "--keyword", "seaside") == {"beach.jpg"}
    assert _found(cli, home, "--keyword", tags["spring.jpg"][0]) == set()


def _export(cli, home: Path) -> list[dict]:
    return [r for r in cli("export", "--home", home, "--format", "json").json() if r["status"] == "indexed"]
