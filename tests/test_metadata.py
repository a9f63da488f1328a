"""Photo metadata in the catalog: camera, lens, GPS and keywords (embedded EXIF, IPTC, XMP, and XMP
sidecars of both conventions) read while indexing, the --camera, --near and --keyword filters, the
refresh of images indexed before, and the catalog upgrade."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from core.errors import InputError
from core.photometa import MAX_KEYWORDS, clean_keywords, read_metadata
from indexer.catalog import Catalog
from tests.helpers import search_names

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed")
PARIS, LONDON = (48.8566, 2.3522), (51.5074, -0.1278)  # 344 km apart
TAGS = {  # file under photos/ -> exiftool assignments written into it
    "trip/a.jpg": [
        "-Make=Canon",
        "-Model=Canon EOS R5",
        "-LensModel=RF24-70mm F2.8 L IS USM",
        f"-GPSLatitude={PARIS[0]}",
        "-GPSLatitudeRef=N",
        f"-GPSLongitude={PARIS[1]}",
        "-GPSLongitudeRef=E",
        "-Keywords=Alpha",
        "-Keywords=Shared Word",
        "-DateTimeOriginal=2019:05:01 10:00:00",
    ],
    "trip/b.jpg": [
        "-Make=NIKON CORPORATION",
        "-Model=NIKON Z 6",
        f"-GPSLatitude={LONDON[0]}",
        "-GPSLatitudeRef=N",
        f"-GPSLongitude={-LONDON[1]}",
        "-GPSLongitudeRef=W",
        "-XMP-dc:Subject=Beach",
        "-XMP-lr:HierarchicalSubject=Places|France|Lyon",
        "-DateTimeOriginal=2021:05:01 10:00:00",
    ],
    "side/c.jpg": [],
    "side/d.jpg": [],
    "side/e.jpg": [],
}
SIDECARS = {  # sidecar under photos/ -> (field, keyword)
    "side/c.jpg.xmp": ("dc:subject", "SideFull"),
    "side/d.xmp": ("lr:hierarchicalSubject", "People|Ann"),
}


def xmp_packet(field: str, keyword: str) -> bytes:
    """A sidecar holding one keyword in ``field`` (dc:subject or lr:hierarchicalSubject)."""
    ns = {"dc": "http://purl.org/dc/elements/1.1/", "lr": "http://ns.adobe.com/lightroom/1.0/"}
    prefix = field.split(":")[0]
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:{prefix}="{ns[prefix]}">'
        f"<{field}><rdf:Bag><rdf:li>{keyword}</rdf:li></rdf:Bag></{field}>"
        '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def corrupt_exif(data: bytes) -> bytes:
    """``data`` (a JPEG) with an APP1 Exif segment of garbage and an APP1 XMP one that is no XML."""
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x01" * 40
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta <<< not xml"
    segments = b"".join(b"\xff\xe1" + (len(p) + 2).to_bytes(2, "big") + p for p in (exif, xmp))
    return data[:2] + segments + data[2:]


def write_photos(photos: Path) -> None:
    for seed, (name, assignments) in enumerate(TAGS.items()):
        path = photos / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(corrupt_exif(jpeg(seed)) if name == "side/e.jpg" else jpeg(seed))
        if assignments:
            subprocess.run([EXIFTOOL, "-q", "-overwrite_original", *assignments, str(path)], check=True)
    for name, (field, keyword) in SIDECARS.items():
        (photos / name).write_bytes(xmp_packet(field, keyword))


@pytest.fixture(scope="module")
def meta_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    from vistag import Archive

    root = tmp_path_factory.mktemp("meta")
    photos = root / "photos"
    write_photos(photos)
    with Archive(root / "home") as archive:
        archive.index([photos], model=tiny_model, batch_size=8)
    return root / "home", photos


def stored(home: Path, uri: Path) -> dict:
    """The catalog's camera, lens, lat, lon and keywords of one image."""
    from vistag import Archive

    with Archive(home) as archive:
        row = archive.catalog.image(str(uri))
        words = archive.catalog.keywords(row["id"])
    return {k: row[k] for k in ("camera", "lens", "lat", "lon", "status")} | {"keywords": words}


@needs_exiftool
def test_the_catalog_keeps_camera_lens_position_and_keywords_of_every_source(meta_home):
    home, photos = meta_home
    a = stored(home, photos / "trip/a.jpg")
    assert a["camera"] == "Canon EOS R5" and a["lens"] == "RF24-70mm F2.8 L IS USM"
    assert a["lat"] == pytest.approx(PARIS[0], abs=1e-6) and a["lon"] == pytest.approx(PARIS[1], abs=1e-6)
    assert a["keywords"] == ["Alpha", "Shared Word"]
    b = stored(home, photos / "trip/b.jpg")
    assert b["camera"] == "NIKON CORPORATION NIKON Z 6" and b["lens"] is None
    assert b["lon"] == pytest.approx(LONDON[1], abs=1e-6)  # west: negative
    assert b["keywords"] == ["Beach", "Lyon", "Places|France|Lyon"]
    assert stored(home, photos / "side/c.jpg")["keywords"] == ["SideFull"]
    assert stored(home, photos / "side/d.jpg")["keywords"] == ["Ann", "People|Ann"]
    e = stored(home, photos / "side/e.jpg")  # a damaged EXIF and XMP block: indexed, no metadata
    assert e == {"camera": None, "lens": None, "lat": None, "lon": None, "status": "indexed", "keywords": []}


@needs_exiftool
def test_camera_near_and_keyword_filters_alone_and_combined(cli, meta_home):
    home, photos = meta_home
    paris = f"{PARIS[0]},{PARIS[1]}"
    for options, want in [
        (("--keyword", "ALPHA"), {"trip/a.jpg"}),  # IPTC
        (("--keyword", "shared  word"), {"trip/a.jpg"}),
        (("--keyword", "Beach"), {"trip/b.jpg"}),  # XMP dc:subject
        (("--keyword", "lyon"), {"trip/b.jpg"}),  # lr:hierarchicalSubject leaf and path
        (("--keyword", "Places|France|Lyon"), {"trip/b.jpg"}),
        (("--keyword", "france"), set()),  # exact, not a part of a path
        (("--keyword", "sidefull"), {"side/c.jpg"}),  # photo.jpg.xmp
        (("--keyword", "ann"), {"side/d.jpg"}),  # photo.xmp
        (("--camera", "canon"), {"trip/a.jpg"}),
        (("--camera", "nikon z"), {"trip/b.jpg"}),
        (("--camera", "%"), set()),
        (("--near", f"{paris},10"), {"trip/a.jpg"}),
        (("--near", f"{paris},330"), {"trip/a.jpg"}),
        (("--near", f"{paris},360"), {"trip/a.jpg", "trip/b.jpg"}),
        (("--near", f"{paris},360", "--since", "2020-01-01"), {"trip/b.jpg"}),
        (("--near", f"{paris},360", "--camera", "canon"), {"trip/a.jpg"}),
        (("--keyword", "sidefull", "--path", photos / "side"), {"side/c.jpg"}),
        (("--keyword", "sidefull", "--path", photos / "trip"), set()),
    ]:
        if want:
            assert search_names(cli, home, photos, *options) == want, options
        else:
            out = cli("search", "a photo", "--home", home, *options)
            assert out.code == 0 and "no indexed image matches" in out.err, (options, out.err)
    out = cli("similar", photos / "trip/a.jpg", "--home", home, "--json", "--keyword", "beach")
    assert out.code == 0 and [Path(h["uri"]).name for h in out.json()] == ["b.jpg"]


@needs_exiftool
def test_bad_near_values_are_one_line_errors(cli, meta_home):
    home, _ = meta_home
    for value, message in [
        ("91,0,5", "latitude must be within"),
        ("0,181,5", "longitude within ±180"),
        ("abc", "LAT,LON,KM"),
        ("1,2", "LAT,LON,KM"),
        ("1,2,0", "more than 0 km"),
        ("nan,2,3", "finite"),
    ]:
        out = cli("search", "a photo", "--home", home, "--near", value)
        assert out.code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err


@needs_exiftool
def test_refresh_metadata_fills_older_images_and_a_changed_sidecar_is_read_again(cli, tmp_path, tiny_model):
    photos, home = tmp_path / "photos", tmp_path / "home"
    write_photos(photos)
    assert cli("index", photos, "--home", home, "--model", tiny_model).code == 0
    from vistag import Archive

    with Archive(home) as archive, archive.catalog.engine.begin() as conn:  # as vistag before 0007 left it
        conn.execute(
            sa.text("UPDATE images SET camera = NULL, lens = NULL, lat = NULL, lon = NULL, sidecars = NULL")
        )
        conn.execute(sa.text("DELETE FROM image_keywords"))
    out = cli("index", photos, "--home", home, "--json")
    assert out.code == 0 and out.json()["plan"]["refresh"] == 0  # only when asked
    out = cli("index", photos, "--home", home, "--refresh-metadata", "--json")
    assert out.code == 0 and out.json()["embedded"] == 0 and out.json()["plan"]["refresh"] == len(TAGS)
    a = stored(home, photos / "trip/a.jpg")
    assert a["camera"] == "Canon EOS R5" and a["keywords"] == ["Alpha", "Shared Word"]
    assert stored(home, photos / "side/d.jpg")["keywords"] == ["Ann", "People|Ann"]

    sidecar = photos / "side/d.xmp"  # a person retags d in Lightroom
    sidecar.write_bytes(xmp_packet("dc:subject", "Retagged"))
    os.utime(sidecar, ns=(sidecar.stat().st_mtime_ns + 10**9,) * 2)
    out = cli("index", photos, "--home", home, "--json")
    assert out.code == 0 and out.json()["embedded"] == 0 and out.json()["plan"]["refresh"] == 1
    assert stored(home, photos / "side/d.jpg")["keywords"] == ["Retagged"]
    assert search_names(cli, home, photos, "--keyword", "retagged") == {"side/d.jpg"}  # any case


def test_a_catalog_at_0006_is_upgraded_in_place(tmp_path):
    from tests.helpers import catalog_at_revision

    url = catalog_at_revision(
        tmp_path / "old.db",
        "0006",
        ["INSERT INTO images (uri, status, updated) VALUES ('/p/a.jpg', 'indexed', 0)"],
    )
    catalog = Catalog(url)
    try:
        row = catalog.image("/p/a.jpg")
        assert {k: row[k] for k in ("camera", "lens", "lat", "lon", "sidecars")} == dict.fromkeys(
            ("camera", "lens", "lat", "lon", "sidecars")
        )
        catalog.replace_keywords({"/p/a.jpg": ["x", "y"]})
        catalog.replace_keywords({"/p/a.jpg": ["z"]})
        assert catalog.keywords(row["id"]) == ["z"]
        assert "ix_image_keywords_keyword" in {
            i["name"] for i in sa.inspect(catalog.engine).get_indexes("image_keywords")
        }
    finally:
        catalog.close()


def test_a_catalog_at_0008_marks_images_with_keywords_or_sidecars_to_be_read_again(tmp_path):
    from tests.helpers import catalog_at_revision

    states = {"a": "", "b": "", "c": "full:10:20", "d": None}  # a has a keyword, c a sidecar
    url = catalog_at_revision(
        tmp_path / "old.db",
        "0008",
        [
            *(
                f"INSERT INTO images (uri, status, sidecars, updated) VALUES ('/p/{n}.jpg', 'indexed', "
                f"{'NULL' if v is None else repr(v)}, 0)"
                for n, v in states.items()
            ),
            "INSERT INTO image_keywords (image_id, keyword) VALUES (1, 'grandma')",
        ],
    )
    catalog = Catalog(url)
    try:
        after = {u[3]: s["sidecars"] for u, s in catalog.image_states().items()}
        assert after == {"a": "stale", "b": "", "c": "stale", "d": None}
        assert catalog.keywords(1) == ["grandma"] and catalog.images_with_keywords(["Grandma"]) == {
            1: {"grandma"}
        }
        catalog.replace_keywords({"/p/a.jpg": ["Grandma"]})  # its metadata read again
        assert catalog.keywords(1) == ["Grandma"] and catalog.images_with_keywords(["GRANDMA"]) == {
            1: {"grandma"}
        }
    finally:
        catalog.close()


@needs_exiftool
def test_a_stale_sidecar_state_makes_the_next_index_read_the_metadata_again(cli, tmp_path, tiny_model):
    """What migration 0009 leaves for images with keywords or sidecars: a plain re-index reads
    them again (no embedding) and restores spelling and XMP fields; the others are left alone."""
    photos, home = tmp_path / "photos", tmp_path / "home"
    write_photos(photos)
    assert cli("index", photos, "--home", home, "--model", tiny_model).code == 0
    from vistag import Archive

    with Archive(home) as archive, archive.catalog.engine.begin() as conn:  # as 0009 leaves older rows
        conn.execute(sa.text("UPDATE image_keywords SET keyword = lower(keyword), display = NULL"))
        conn.execute(sa.text("UPDATE images SET sidecars = 'stale' WHERE uri LIKE '%/side/c.jpg'"))
        conn.execute(sa.text("UPDATE images SET sidecars = 'stale' WHERE uri LIKE '%/trip/a.jpg'"))
    assert stored(home, photos / "trip/a.jpg")["keywords"] == ["alpha", "shared word"]
    out = cli("index", photos, "--home", home, "--json")
    assert out.code == 0 and out.json()["embedded"] == 0 and out.json()["plan"]["refresh"] == 2, out.out
    assert stored(home, photos / "trip/a.jpg")["keywords"] == ["Alpha", "Shared Word"]
    assert stored(home, photos / "side/c.jpg")["keywords"] == ["SideFull"]
    assert stored(home, photos / "trip/b.jpg")["keywords"] == [
        "beach",
        "lyon",
        "places|france|lyon",
    ]  # not read


def test_damaged_or_odd_metadata_leaves_fields_empty_and_keywords_are_bounded():
    assert read_metadata(b"not an image at all", "/nowhere/x.jpg").keywords == ()
    assert read_metadata(corrupt_exif(jpeg(1)), "gs://bucket/x.jpg").camera is None
    from core.photometa import MAX_TEXT_CHARS, _join

    assert len(_join("M" * 150, "X " * 150)) <= MAX_TEXT_CHARS  # what the camera filter accepts
    words = clean_keywords([" A  b ", "a B", "", "x" * 300, *(f"k{i}" for i in range(1000))])
    assert words[0] == "A b" and words[1] == "x" * 200 and len(words) == MAX_KEYWORDS  # "a B" repeats it


def test_metadata_filters_in_sql_on_every_backend_and_across_the_antimeridian(db_url):
    from indexer.catalog import ImageFilter

    catalog = Catalog(db_url)
    try:
        run_id = catalog.start_run("index", None)
        rows = [  # uri, camera, lat, lon
            ("/p/fiji.jpg", "Canon EOS R5", -17.7, 179.9),
            ("/p/samoa.jpg", "Sony ILCE-7M3 100%", -17.7, -179.9),
            ("/p/paris.jpg", None, *PARIS),
            ("/p/none.jpg", "Canon PowerShot", None, None),
        ]
        catalog.upsert_images(
            [{"uri": u, "status": "indexed", "camera": c, "lat": la, "lon": lo} for u, c, la, lo in rows],
            run_id,
        )
        catalog.replace_keywords({"/p/fiji.jpg": ["Beach", "beach", "Île"], "/p/paris.jpg": ["city"]})
        ids = {r["uri"]: r["id"] for r in catalog.images()}
        assert catalog.keywords(ids["/p/fiji.jpg"]) == ["Beach", "Île"]  # as first spelt
        shown = [(f["value"], f["count"]) for f in catalog.facets(None, 3, 10)["keywords"]]
        assert shown == [("Beach", 1), ("city", 1), ("Île", 1)]
        catalog.replace_keywords({"/p/samoa.jpg": ["beach"], "/p/none.jpg": ["bEach"]})
        shown = [(f["value"], f["count"]) for f in catalog.facets(None, 3, 10)["keywords"]]
        assert shown == [("Beach", 3), ("city", 1), ("Île", 1)]  # a tie of spellings: code point order
        catalog.replace_keywords({"/p/none.jpg": ["beach"]})
        assert catalog.facets(None, 3, 1)["keywords"] == [{"value": "beach", "count": 3}]  # the most common
        cameras = [(f["value"], f["count"]) for f in catalog.facets(None, 3, 10)["cameras"]]
        assert cameras == [("Canon EOS R5", 1), ("Canon PowerShot", 1), ("Sony ILCE-7M3 100%", 1)]
        more = [("/p/a.jpg", "NIKON Z 6"), ("/p/b.jpg", "Nikon Z 6"), ("/p/c.jpg", "NIKON Z 6")]
        catalog.upsert_images([{"uri": u, "status": "indexed", "camera": c} for u, c in more], run_id)
        assert catalog.facets(None, 3, 1)["cameras"] == [{"value": "NIKON Z 6", "count": 3}]  # in any case
        catalog.upsert_images([{"uri": u, "status": "deleted"} for u, _ in more], run_id)
        catalog.replace_keywords({"/p/samoa.jpg": [], "/p/none.jpg": []})

        def found(**kw: object) -> set[str]:
            hits = set(catalog.matching_ids(ImageFilter(**kw)).tolist())
            return {u for u, i in ids.items() if i in hits}

        assert found(camera="canon") == {"/p/fiji.jpg", "/p/none.jpg"}
        assert found(camera="100%") == {"/p/samoa.jpg"} and found(camera="_") == set()
        assert found(keyword="bEACH") == {"/p/fiji.jpg"} and found(keyword="beac") == set()
        assert found(keyword="île") == {"/p/fiji.jpg"}  # lower-cased in Python, not by the database
        assert found(near=(-17.7, 179.95, 30.0)) == {"/p/fiji.jpg", "/p/samoa.jpg"}  # 16 km across 180°
        assert found(near=(-17.7, 179.95, 8.0)) == {"/p/fiji.jpg"}
        assert found(near=(*PARIS, 1.0), keyword="city") == {"/p/paris.jpg"}
        assert found(near=(90.0, 0.0, 20_000.0)) == {"/p/fiji.jpg", "/p/samoa.jpg", "/p/paris.jpg"}
    finally:
        catalog.close()


def test_the_listing_says_which_sidecars_are_surely_absent_so_a_reindex_need_not_stat_them(tmp_path):
    from core import uris
    from core.photometa import sidecar_state
    from pipeline.inputs import expand_inputs

    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"not read")
    (tmp_path / "b.jpg.XMP").write_text("x")
    listing = expand_inputs([str(tmp_path)])
    assert [e.uri.rsplit("/", 1)[1] for e in listing.entries] == ["a.jpg", "b.jpg"]
    assert not listing.may_exist(str(tmp_path / "a.jpg.xmp"))
    assert not listing.may_exist(str(tmp_path / "a.xmp"))
    assert listing.may_exist(str(tmp_path / "b.jpg.xmp"))  # in another case: a stat decides
    assert listing.may_exist(str(tmp_path / "elsewhere" / "c.jpg.xmp"))  # a folder it did not walk
    (tmp_path / "a.jpg.xmp").write_text("written after the listing")
    image = uris.from_path(str(tmp_path / "a.jpg"))
    assert sidecar_state(image).startswith("full:")
    assert sidecar_state(image, listing.may_exist) == ""  # no stat where the listing knows


@needs_exiftool
def test_an_images_details_carry_its_metadata_in_the_api_and_over_http(cli, meta_home):
    from devkit.http import http_request
    from tests.helpers import thread_server
    from vistag import Archive
    from vistag.http import ServiceConfig, create_app

    home, photos = meta_home
    with Archive(home) as archive:
        a = archive.describe(photos / "trip/a.jpg")
        assert a["uri"] == str(photos / "trip/a.jpg") and a["status"] == "indexed"
        assert (a["camera"], a["lens"]) == ("Canon EOS R5", "RF24-70mm F2.8 L IS USM")
        assert (a["lat"], a["lon"]) == pytest.approx(PARIS, abs=1e-6)
        assert a["taken"] == pytest.approx(1556704800.0)  # 2019-05-01 10:00:00, no offset: UTC
        assert a["keywords"] == ["Alpha", "Shared Word"] and a["corrections"] == []
        plain = archive.describe(str(photos / "side/c.jpg"))  # no EXIF, a sidecar keyword
        assert archive.describe(plain["id"]) == plain and plain["keywords"] == ["SideFull"]
        assert all(plain[k] is None for k in ("taken", "camera", "lens", "lat", "lon"))
        with thread_server(create_app(archive, ServiceConfig())) as port:
            detail = http_request(port, "GET", f"/api/images/{a['id']}").json()
    assert {k: detail[k] for k in a} == a
    assert detail["tags"] == [] and detail["thumbnail"] == f"/api/images/{a['id']}/thumbnail"
    shown = cli("explain", photos / "trip/a.jpg", "--home", home)
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[:5] == [
        f"image     {a['id']}  {photos / 'trip/a.jpg'}",
        "taken     2019-05-01 10:00:00 UTC",  # no offset recorded: the camera's clock
        "camera    Canon EOS R5 / RF24-70mm F2.8 L IS USM",
        "place     48.85660, 2.35220",
        "keywords  Alpha, Shared Word",
    ]
    assert "no tags for this image yet" in shown.out


@needs_exiftool
def test_camera_lens_and_position_from_xmp_a_persons_sidecar_first(tmp_path):
    """Lightroom and darktable write a raw file's geotag and camera into its sidecar: read there
    first, then the file's EXIF, then the file's own XMP (each written here by exiftool)."""
    sydney, lima = (-33.8568, 151.2153), (-12.0464, -77.0428)
    for seed, name in enumerate(("side.jpg", "both.jpg", "embedded.jpg")):
        (tmp_path / name).write_bytes(jpeg(seed))

    def exiftool(*args: object) -> None:
        subprocess.run([EXIFTOOL, "-q", *map(str, args)], check=True)

    geotag = [f"-XMP-exif:GPSLatitude={sydney[0]}", f"-XMP-exif:GPSLongitude={sydney[1]}"]
    exiftool("-o", tmp_path / "side.xmp", *geotag, "-XMP-tiff:Make=FUJIFILM", "-XMP-tiff:Model=X-T4",
             "-XMP-exifEX:LensModel=XF35mmF1.4 R", tmp_path / "side.jpg")  # fmt: skip
    exiftool("-overwrite_original", "-Make=Canon", "-Model=Canon EOS R5", f"-GPSLatitude={PARIS[0]}",
             "-GPSLatitudeRef=N", f"-GPSLongitude={PARIS[1]}", "-GPSLongitudeRef=E", tmp_path / "both.jpg")  # fmt: skip
    (tmp_path / "blank.jpg").write_bytes(jpeg(9))  # (from both.jpg, exiftool would copy its EXIF position)
    exiftool("-o", tmp_path / "both.jpg.xmp", *geotag, tmp_path / "blank.jpg")  # a corrected position
    exiftool("-overwrite_original", f"-XMP-exif:GPSLatitude={lima[0]}", f"-XMP-exif:GPSLongitude={lima[1]}",
             tmp_path / "embedded.jpg")  # fmt: skip

    def read(name: str):  # noqa: ANN202
        path = tmp_path / name
        return read_metadata(path.read_bytes(), path.as_uri())

    side, both, embedded = read("side.jpg"), read("both.jpg"), read("embedded.jpg")
    assert (side.camera, side.lens) == ("FUJIFILM X-T4", "XF35mmF1.4 R")
    assert (side.lat, side.lon) == pytest.approx(sydney, abs=1e-5)  # exiftool writes 33,51.408S
    assert both.camera == "Canon EOS R5" and (both.lat, both.lon) == pytest.approx(sydney, abs=1e-5)
    assert (embedded.lat, embedded.lon) == pytest.approx(lima, abs=1e-5) and embedded.camera is None
    (tmp_path / "both.jpg.xmp").unlink()
    assert (read("both.jpg").lat, read("both.jpg").lon) == pytest.approx(PARIS, abs=1e-6)


def test_xmp_gps_coordinates_parse_or_are_left_out():
    from core.photometa import _xmp_degrees

    assert _xmp_degrees("48,51.396N", "NS", 90) == pytest.approx(48.8566)
    assert _xmp_degrees("2,21,7.92W", "EW", 180) == pytest.approx(-2.3522)
    assert _xmp_degrees("12.5s", "NS", 90) == -12.5
    bad_values = ("48,51.396", "91,0N", "181,0E", "a,bN", "nan,0N", "-3,0N", "1,2,3,4N", "48,75N", "1_0N", "")
    for bad in (*bad_values, "48,30,60N", None, ["1N"]):
        assert (
            _xmp_degrees(bad, "NS" if "E" not in str(bad) else "EW", 90 if "E" not in str(bad) else 180)
            is None
        ), bad


@needs_exiftool
def test_refresh_metadata_all_reads_every_unchanged_image_again_without_embedding(cli, tmp_path, tiny_model):
    photos, home = tmp_path / "photos", tmp_path / "home"
    write_photos(photos)
    assert cli("index", photos, "--home", home, "--model", tiny_model).code == 0
    from vistag import Archive

    with Archive(home) as archive, archive.catalog.engine.begin() as conn:  # described, but without GPS
        conn.execute(sa.text("UPDATE images SET lat = NULL, lon = NULL"))
    out = cli("index", photos, "--home", home, "--refresh-metadata", "--json")
    assert out.code == 0 and out.json()["plan"]["refresh"] == 0  # every image is described
    assert stored(home, photos / "trip/a.jpg")["lat"] is None
    out = cli("index", photos, "--home", home, "--refresh-metadata-all", "--json")
    assert out.code == 0 and out.json()["embedded"] == 0 and out.json()["plan"]["refresh"] == len(TAGS)
    assert stored(home, photos / "trip/a.jpg")["lat"] == pytest.approx(PARIS[0], abs=1e-6)
    with Archive(home) as archive, pytest.raises(InputError, match="refresh_metadata"):
        archive.index([photos], refresh_metadata="everything")


@needs_exiftool
def test_export_carries_each_images_photo_metadata_and_keywords_in_json_and_csv(cli, meta_home, tmp_path):
    import csv
    import json

    home, photos = meta_home
    rows = {r["uri"]: r for r in cli("export", "--home", home, "--format", "json").json()}
    a, e = rows[str(photos / "trip/a.jpg")], rows[str(photos / "side/e.jpg")]
    assert (a["camera"], a["lens"], a["keywords"]) == (
        "Canon EOS R5",
        "RF24-70mm F2.8 L IS USM",
        ["Alpha", "Shared Word"],
    )
    assert (a["lat"], a["lon"]) == pytest.approx(PARIS, abs=1e-6) and a["taken"] == pytest.approx(
        1556704800.0
    )
    assert {k: e[k] for k in ("taken", "camera", "lens", "lat", "lon", "keywords")} == {
        "taken": None, "camera": None, "lens": None, "lat": None, "lon": None, "keywords": []
    }  # fmt: skip
    assert cli("export", "--home", home, "--format", "csv", "-o", tmp_path / "out.csv").code == 0
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:9] == ["id", "uri", "status", "sha256", "size", "mtime", "width", "height", "tags"]
    b = next(r for r in table if r["uri"] == str(photos / "trip/b.jpg"))
    assert (
        json.loads(b["keywords"]) == ["Beach", "Lyon", "Places|France|Lyon"]
        and b["camera"] == "NIKON CORPORATION NIKON Z 6"
    )
    assert float(b["lon"]) == pytest.approx(LONDON[1], abs=1e-6) and json.loads(b["tags"]) == []


@needs_exiftool
def test_reading_metadata_again_leaves_the_tags_of_unchanged_images_alone(tmp_path, tiny_model):
    """--refresh-metadata-all and a changed sidecar describe unchanged images again: their tags
    (here ZLaP's, which tagging them as new would replace with zlap-inductive ones) stay."""
    from vistag import Archive

    photos = tmp_path / "photos"
    write_photos(photos)
    with Archive(tmp_path / "home") as archive:
        archive.index([photos], model=tiny_model, batch_size=8)
        run = archive.tag(["a cat", "a dog", "a car"], method="zlap", top=2).run_id
        before = sorted(
            (r["image_id"], r["label"], r["method"], r["score"]) for r in archive.catalog.tags(run)
        )
        sidecar = photos / "side/d.xmp"
        sidecar.write_bytes(xmp_packet("dc:subject", "Retagged"))
        os.utime(sidecar, ns=(sidecar.stat().st_mtime_ns + 10**9,) * 2)
        changed = archive.index([photos])
        everything = archive.index([photos], refresh_metadata="all")
        after = sorted(
            (r["image_id"], r["label"], r["method"], r["score"]) for r in archive.catalog.tags(run)
        )
    assert len(changed.plan.refresh) == 1 and len(everything.plan.refresh) == len(TAGS)
    assert changed.tag_runs == everything.tag_runs == () and after == before
    assert {m for _, _, m, _ in after} == {"zlap"}
