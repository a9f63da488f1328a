"""The HTTP service against a real ``vistag serve`` process on loopback: good and bad requests.

Each server runs on a copy of the session's indexed home (the fixture home is never modified),
is waited for on /healthz with a bounded timeout, and is always stopped. Requests use the standard
library's http.client, which sends paths exactly as written (no dot-segment clean-up).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import random
import socket
import string
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devkit.http import REQUEST_TIMEOUT_S, Reply, http_request
from tests.helpers import TOKEN, Server, assert_error, copy_home, running_server, stop, thread_server
from vistag.synth.hostile import png_bomb

MAX_UPLOAD = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def server(indexed_home, tmp_path_factory) -> Iterator[Server]:
    """One server for the module, on a copy of the indexed home, write token from the environment."""
    home = copy_home(indexed_home, tmp_path_factory.mktemp("serve") / "home")
    with running_server(home, env={"VISTAG_WRITE_TOKEN": TOKEN}) as running:
        yield running


# -- request bodies ---------------------------------------------------------------------------------
def multipart(*files: bytes, field: str = "file") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload of ``files`` in form field ``field``."""
    boundary = "vistag-test-boundary-7d1e"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="image{i}.jpg"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def noise_jpeg(width: int = 256, height: int = 192) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- tests ------------------------------------------------------------------------------------------
def test_health_schema_page_and_metrics(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    schema = server.get("/openapi.json").json()
    for path in (
        "/api/search",
        "/api/search/image",
        "/api/similar/{image_id}",
        "/api/images/{image_id}",
        "/api/images/{image_id}/thumbnail",
        "/api/labels",
        "/api/status",
        "/api/tag",
        "/api/duplicates",
        "/api/duplicates/resolve",
        "/api/facets",
        "/api/corrections",
        "/api/corrections/{correction_id}",
        "/api/images/{image_id}/corrections",
    ):
        assert path in schema["paths"], path
    assert "ErrorOut" in schema["components"]["schemas"]
    assert server.get("/docs").status == 404  # the Swagger page would load from a CDN

    page = server.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        b'src="/static/app.js"' in page.body
        and "default-src 'self'" in page.headers["content-security-policy"]
    )
    for name in ("app.js", "facets.js", "style.css", "index.html"):
        text = server.get(f"/static/{name}").body.decode()
        assert "http://" not in text and "https://" not in text, f"{name} loads something from the network"

    assert server.search("q=a+red+circle&k=3")["hits"]
    metrics = server.get("/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    assert 'vistag_search_latency_seconds_count{kind="text"}' in text
    assert 'vistag_http_requests_total{method="GET",route="/api/search",status="200"}' in text
    assert "vistag_http_request_duration_seconds_bucket" in text


def test_text_search_similar_details_and_thumbnail(server, indexed_home):
    corpus = indexed_home[1]
    good = {str(p) for p in corpus.good}
    result = server.search("q=a+blue+square&k=5")
    hits = result["hits"]
    assert len(hits) == 5 and {h["uri"] for h in hits} <= good and result["k"] == 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {"id", "uri", "score", "tags", "thumbnail"} <= set(hits[0]) and result["index_version"]

    first = hits[0]["id"]
    similar = server.get(f"/api/similar/{first}?k=3").json()["hits"]
    assert similar[0]["id"] == first and abs(similar[0]["score"] - 1) < 1e-4

    details = server.get(f"/api/images/{first}").json()
    assert details["uri"] == hits[0]["uri"] and details["status"] == "indexed" and details["width"] > 0

    thumb = server.get(f"/api/images/{first}/thumbnail?size=128")
    assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
    from PIL import Image

    assert max(Image.open(io.BytesIO(thumb.body)).size) <= 128
    cached = server.home / "thumbnails" / details["sha256"][:2] / f"{details['sha256']}-128.jpg"
    assert cached.read_bytes() == thumb.body
    assert (
        server.get(
            f"/api/images/{first}/thumbnail?size=128", **{"If-None-Match": thumb.headers["etag"]}
        ).status
        == 304
    )
    assert not list(cached.parent.glob(".*tmp*"))


@pytest.mark.parametrize(
    "query",
    [
        "k=5",
        "q=cat&k=0",
        "q=cat&k=-1",
        "q=cat&k=201",
        f"q=cat&k={10**30}",
        "q=cat&k=ten",
        "q=%20%20",
        "q=" + "a" * 1001,
        "q=cat&since=yesterday",
        "q=cat&since=2030-01-01&until=2020-01-01",
        "q=cat&until=nan",
    ],
)
def test_bad_search_requests_are_400(server, query):
    assert_error(server.get(f"/api/search?{query}"), 400)


def test_unknown_ids_and_traversal_attempts(server, indexed_home):
    from vistag import Archive

    with Archive(server.home) as archive:
        failed = archive.catalog.images(status="failed")[0]["id"]  # in the catalog, but not indexed
    for path in (
        f"/api/images/{failed}",
        f"/api/images/{failed}/thumbnail",
        f"/api/similar/{failed}",
        "/api/images/987654",
        "/api/similar/987654",
        "/api/images/987654/thumbnail",
    ):
        assert_error(server.get(path), 404)
    for path in (
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/../../etc/passwd",
        "/api/images/%2e%2e",
        "/api/images/1%2F..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/api/similar/%2Fetc%2Fpasswd",
        "/api/images/-1",
        "/api/images/99999999999999999999999",
        "/api/images/1e3",
        "/static/..%2F..%2Fquery%2Fservice.py",
        "/static/../search.py",
        "/static/%2e%2e/service.py",
        "/api/images/1/thumbnail?size=..%2F..%2Fetc%2Fpasswd",
        "/api/images/1/thumbnail?size=100",
    ):
        reply = server.get(path)
        assert_error(reply, 400, 404)
        assert b"root:" not in reply.body and b"def create_app" not in reply.body
    good = {str(p) for p in indexed_home[1].good}
    hits = server.search("q=" + quote("../../etc/passwd") + "&k=5")["hits"]
    assert {h["uri"] for h in hits} <= good
    assert server.search("q=cat&prefix=" + quote("/etc/"))["hits"] == []


def test_filters_by_prefix_and_time(server, indexed_home):
    textures = str(indexed_home[1].root / "textures")
    hits = server.search(f"q=noise&k=50&prefix={quote(textures)}")["hits"]
    assert len(hits) == 3 and all(h["uri"].startswith(textures) for h in hits)
    assert len(server.search("q=cat&k=4&since=1970-01-02")["hits"]) == 4
    assert server.search("q=cat&k=4&until=1970-01-02")["hits"] == []
    assert server.search("q=cat&k=4&since=" + str(time.time() + 86400))["hits"] == []


def test_metadata_filters_are_query_parameters(server):
    """camera, near and keyword reach the catalog (the synthetic corpus has no photo metadata)."""
    assert len(server.search("q=cat&k=4&near=0,0,20000")["hits"]) == 0
    assert server.search("q=cat&k=4&camera=canon")["hits"] == []
    assert server.search("q=cat&k=4&keyword=beach")["hits"] == []
    assert "latitude" in assert_error(server.get("/api/search?q=cat&near=91,0,5"), 400, 422)
    assert "LAT,LON,KM" in assert_error(server.get("/api/search?q=cat&near=abc"), 400, 422)


def test_search_by_uploaded_image(server, indexed_home):
    target = next(p for p in indexed_home[1].good if p.suffix == ".jpg")
    before = sorted(p for p in server.home.rglob("*") if "thumbnails" not in p.parts)
    body, ctype = multipart(target.read_bytes())
    result = server.post("/api/search/image?k=3", body, ctype)
    assert result.status == 200, result.body
    first = result.json()["hits"][0]
    assert first["uri"] == str(target) and first["score"] > 0.99
    assert (
        sorted(p for p in server.home.rglob("*") if "thumbnails" not in p.parts) == before
    )  # nothing stored


@pytest.mark.parametrize(
    "case, status",
    [
        ("text", 415),
        ("empty", 400),
        ("truncated", 400),
        ("bomb", 413),
        ("wrong field", 400),
        ("no boundary", 400),
        ("garbage multipart", 400),
        ("json", 415),
        ("two files", 400),
        ("oversize", 413),
        ("huge length", 413),
    ],
)
def test_bad_uploads(server, indexed_home, case, status):
    jpeg = next(p for p in indexed_home[1].good if p.suffix == ".jpg").read_bytes()
    bodies = {
        "text": multipart(b"<html>not an image</html>"),
        "empty": multipart(b""),
        "truncated": multipart(noise_jpeg()[:20_000]),
        "bomb": multipart(png_bomb(10_000, 10_000)),
        "wrong field": multipart(jpeg, field="image"),
        "no boundary": (b"xx", "multipart/form-data"),
        "garbage multipart": (b"\x00\xff" * 100, "multipart/form-data; boundary=zzz"),
        "json": (b'{"file": "x"}', "application/json"),
        "two files": multipart(jpeg, jpeg),
        "oversize": multipart(b"\xff" * (MAX_UPLOAD + 1)),
    }
    if case == "huge length":  # rejected from the header alone, before the body is read
        reply = _send_head_only(server.port, "/api/search/image", 10**9)
    else:
        reply = server.post("/api/search/image", *bodies[case])
    message = assert_error(reply, status)
    if case == "truncated":
        assert "truncated" in message
    assert server.get("/healthz").status == 200


def _send_head_only(port: int, path: str, length: int) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(length))
        conn.endheaders(b"--x\r\n")
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def test_tag_run_needs_the_token_then_labels_and_tag_filter(server):
    labels = {"labels": "red circle,blue square,green star", "top": 3}
    unauthorized = server.post_json("/api/tag", labels)
    assert_error(unauthorized, 401)
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    assert_error(server.post_json("/api/tag", labels, Authorization="Bearer wrong-token-0123456789"), 401)
    assert_error(server.post_json("/api/tag", labels, Authorization=TOKEN), 401)  # no scheme
    too_many = {"labels": [f"label {i}" for i in range(1001)]}
    assert_error(server.post_json("/api/tag", too_many, Authorization=f"Bearer {TOKEN}"), 400)

    run = server.post_json("/api/tag", labels, Authorization=f"Bearer {TOKEN}")
    assert run.status == 200, run.body
    assert run.json()["labels"] == ["red circle", "blue square", "green star"]
    listed = server.get("/api/labels").json()
    counts = {row["label"]: row["count"] for row in listed["labels"]}
    assert (
        set(counts) == {"red circle", "blue square", "green star"}
        and listed["tag_run"] == run.json()["run_id"]
    )

    hits = server.search("q=shape&k=200&tag=" + quote("red circle"))["hits"]
    assert len(hits) == counts["red circle"]
    assert all("red circle" in [t["label"] for t in h["tags"]] for h in hits)
    assert server.search("q=shape&tag=unicorn")["hits"] == []


def test_host_header_and_concurrent_requests(server):
    assert_error(server.get("/healthz", Host="attacker.example"), 400)
    assert server.get("/healthz", Host=f"localhost:{server.port}").status == 200
    queries = [f"/api/search?q=shape+{i}&k=5" for i in range(12)] + [
        f"/api/similar/{i}?k=3" for i in range(1, 5)
    ]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(server.get, queries, timeout=120))
    assert [r.status for r in replies] == [200] * len(queries)


def test_new_index_version_is_served_without_restart(indexed_home, tiny_model, tmp_path):
    """Publish a new version in the home while the server runs; it answers from it at once."""
    from PIL import Image

    from vistag import Archive

    home = copy_home(indexed_home, tmp_path / "home")
    added = tmp_path / "added"
    added.mkdir()
    Image.new("RGB", (64, 48), (250, 120, 10)).save(added / "orange.png")
    with running_server(home) as server:  # no write token: writes are disabled
        assert_error(server.post_json("/api/tag", {"labels": "cat"}, Authorization=f"Bearer {TOKEN}"), 403)
        before = server.get("/api/status").json()
        assert server.search("q=orange&k=1")["index_version"] == before["index"]["version"]

        with Archive(home) as archive:
            result = archive.index([indexed_home[1].root, added], model=tiny_model, batch_size=8)
            new_id = archive.catalog.image(str((added / "orange.png").resolve()))["id"]
        assert result.embedded == 1 and result.index_version != before["index"]["version"]

        assert server.search("q=orange&k=1")["index_version"] == result.index_version
        similar = server.get(f"/api/similar/{new_id}?k=1").json()["hits"]
        assert similar[0]["id"] == new_id and abs(similar[0]["score"] - 1) < 1e-4
        assert server.get(f"/api/images/{new_id}/thumbnail").status == 200
        assert server.get("/api/status").json()["index"]["count"] == before["index"]["count"] + 1
        code = stop(server)
    log = server.log.read_text()
    assert code == 0 and "Traceback" not in log and "server stopped" in log, log[-2000:]


def test_in_process_app_on_a_home_without_index(tmp_path):
    from indexer.catalog import Catalog
    from indexer.home import Home
    from vistag import Archive
    from vistag.http import ServiceConfig, create_app

    Catalog(Home.resolve(tmp_path / "empty").ensure().db_url).close()  # an archive that never published
    with (
        Archive(tmp_path / "empty") as archive,
        thread_server(create_app(archive, ServiceConfig(max_k=5))) as port,
    ):
        status = http_request(port, "GET", "/api/status").json()
        assert status["index"] is None and not status["writes_enabled"] and status["limits"]["max_k"] == 5
        assert "vistag index" in assert_error(http_request(port, "GET", "/api/search?q=cat"), 503)
        assert_error(
            http_request(
                port, "POST", "/api/search/vector", b'{"vector": [1.0]}', {"Content-Type": "application/json"}
            ),
            503,
        )
        assert_error(http_request(port, "GET", "/api/search?q=cat&k=6"), 400)
        assert "vistag index" in assert_error(http_request(port, "GET", "/api/duplicates"), 503)
        assert_error(http_request(port, "GET", "/api/similar/1"), 404)
        assert http_request(port, "GET", "/api/labels").json() == {"tag_run": None, "labels": []}
        tag = http_request(
            port,
            "POST",
            "/api/tag",
            b'{"labels": "cat"}',
            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        assert "--write-token" in assert_error(tag, 403)


def test_config_and_listen_errors():
    from core.errors import InputError
    from query.filters import parse_filter, parse_time
    from vistag.http import ServiceConfig, listen

    with pytest.raises(InputError, match="at least 16"):
        ServiceConfig(write_token="short")
    with pytest.raises(InputError, match="max-k"):
        ServiceConfig(max_k=0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InputError, match="cannot listen"):
            listen("127.0.0.1", taken.getsockname()[1])
    assert parse_time("2024-05-01") == 1714521600.0
    assert parse_time("2024-05-01", end=True) == pytest.approx(1714521600.0 + 86400, abs=0.01)
    assert (
        parse_time("2024-05-01T02:00:00+02:00") == 1714521600.0 and parse_time("1714521600") == 1714521600.0
    )
    assert not parse_filter(None, None, None, None) and parse_filter("cat", None, None, None)


def test_serve_warms_the_searcher_that_answers_queries(home_copy, monkeypatch):
    """The index and model are loaded before the first request into the service's searcher, the
    one that answers, and not into the archive's (a second copy of both, and a slow first query)."""
    import uvicorn

    from vistag import Archive
    from vistag.http import ServiceConfig, listen, serve

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets: served.append(server.config.app))
    with Archive(home_copy[0]) as archive, listen("127.0.0.1", 0) as sock:
        serve(archive, ServiceConfig(), sock=sock)
        searcher = served[0].state.service.searcher
        assert searcher._version is not None and searcher._model is not None
        assert archive._searcher is None


# -- hardening: thumbnails from the indexed bytes only, bounded waits, labels and connections -------
def thumbnail_of(port: int, image_id: int, size: int = 128) -> Reply:
    return http_request(port, "GET", f"/api/images/{image_id}/thumbnail?size={size}")


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):  # a server that never answers raises TimeoutError here
            chunks.append(chunk)
    return b"".join(chunks)


def _unblock_fifo(path: Path) -> None:
    """Let a reader blocked on the FIFO at ``path`` go on (it reads EOF)."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_thumbnails_only_from_the_indexed_regular_file(home_copy, tiny_model, tmp_path):
    """A FIFO, a symlink to another image and a rewritten file at indexed paths are all refused."""
    from PIL import Image

    from vistag import Archive
    from vistag.http import ServiceConfig, create_app

    home, corpus = home_copy
    folder = tmp_path / "mutable"
    folder.mkdir()
    colours = {"fifo": (200, 0, 0), "link": (0, 200, 0), "changed": (0, 0, 200), "kept": (200, 200, 0)}
    for name, colour in colours.items():
        Image.new("RGB", (40, 30), colour).save(folder / f"{name}.png")
    with Archive(home) as archive:
        archive.index([corpus.root, folder], model=tiny_model, batch_size=8)
        rows = {name: archive.catalog.image(str((folder / f"{name}.png").resolve())) for name in colours}
    ids = {name: row["id"] for name, row in rows.items()}
    fifo = folder / "fifo.png"
    fifo.unlink()
    os.mkfifo(fifo)
    (folder / "link.png").unlink()
    (folder / "link.png").symlink_to(next(p for p in corpus.good if p.suffix == ".png"))
    Image.new("RGB", (40, 30), (9, 9, 9)).save(folder / "changed.png")

    with Archive(home) as archive, thread_server(create_app(archive, ServiceConfig())) as port:
        try:
            assert "can no longer be read" in assert_error(thumbnail_of(port, ids["fifo"]), 404)
        finally:
            _unblock_fifo(fifo)  # before the fix the render blocked in open() until a writer came
        for name in ("link", "changed"):
            assert "changed since it was indexed" in assert_error(thumbnail_of(port, ids[name]), 409)
        kept = thumbnail_of(port, ids["kept"])  # the other render slot was not lost to the FIFO
        assert kept.status == 200, kept.body
        red, green, blue = Image.open(io.BytesIO(kept.body)).convert("RGB").getpixel((5, 5))
        assert red > 150 and green > 150 and blue < 60  # the yellow that was indexed
    cached = [p.name for p in (home / "thumbnails").rglob("*.jpg")]
    assert cached == [f"{rows['kept']['sha256']}-128.jpg"]  # nothing of the refused files


def test_slow_renders_and_busy_render_slots_answer_503(home_copy, monkeypatch):
    """A render past render_timeout_s answers 503 and goes on (cached when done); with both render
    slots held, the next thumbnail request gets 503 too instead of waiting."""
    import vistag.http.thumbnails as service_module
    from vistag import Archive
    from vistag.http import ServiceConfig, create_app
    from vistag.http.config import RENDER_SLOTS

    gate, real_render = threading.Event(), service_module.render_thumbnail

    def held_render(data: bytes, size: int, **kwargs: str) -> bytes:
        gate.wait(REQUEST_TIMEOUT_S * 2)
        return real_render(data, size, **kwargs)

    monkeypatch.setattr(service_module, "render_thumbnail", held_render)
    home, corpus = home_copy
    config = ServiceConfig(render_timeout_s=0.5)
    with Archive(home) as archive, thread_server(create_app(archive, config)) as port:
        ids = [archive.catalog.image(str(p.resolve()))["id"] for p in corpus.good[: RENDER_SLOTS + 1]]
        try:
            for image_id in ids[:RENDER_SLOTS]:
                assert "longer than 0.5 s" in assert_error(thumbnail_of(port, image_id, 512), 503)
            assert "slots stayed busy" in assert_error(thumbnail_of(port, ids[-1], 512), 503)
        finally:
            gate.set()
        for _ in range(100):  # the held renders end and free their slots
            reply = thumbnail_of(port, ids[-1], 512)
            if reply.status == 200:
                break
            time.sleep(0.1)
        assert reply.status == 200
        assert sorted(p.name for p in (home / "thumbnails").rglob("*-512.jpg")) == sorted(
            f"{archive.catalog.image(i)['sha256']}-512.jpg" for i in ids
        )  # the two renders that answered 503 finished and were cached


def test_metric_labels_stay_bounded_whatever_the_method(server):
    rng = random.Random(0)
    methods = [
        "".join(rng.choices(string.ascii_uppercase + string.digits, k=rng.randint(3, 12))) for _ in range(300)
    ]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
    try:
        for method in [*methods, "get", "PROPFIND"]:
            conn.request(method, "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status in (400, 405), (method, response.status)
    finally:
        conn.close()
    text = server.get("/metrics").body.decode()
    series = [line for line in text.splitlines() if line.startswith("vistag_http_requests_total{")]
    labels = {line.split('method="')[1].split('"')[0] for line in series}
    assert labels <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}, len(labels)
    others = sum(float(line.rsplit(" ", 1)[1]) for line in series if 'method="other"' in line)
    assert others >= 1 and len(series) < 60 and len(text) < 100_000  # PROPFIND gets through the parser
    from vistag.http.metrics import Metrics  # and whatever a parser lets through is bounded too

    metrics = Metrics()
    for method in methods:
        metrics.observe_request(method, "/healthz", 405, 0.001)
    rendered = metrics.render().decode().splitlines()
    series = [line for line in rendered if line.startswith("vistag_http_requests_total{")]
    assert {line.split('method="')[1].split('"')[0] for line in series} == {"other"}


def test_loopback_bind_answers_for_its_own_address(home_copy, monkeypatch):
    import argparse

    from vistag import Archive
    from vistag.cli.parser import add_serve_parser
    from vistag.cli.serve import service_config
    from vistag.http import create_app

    monkeypatch.delenv("VISTAG_WRITE_TOKEN", raising=False)
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))

    def config(host: str) -> Any:
        return service_config(parser.parse_args(["serve", "--host", host]))

    assert config("0.0.0.0").allowed_hosts is None  # reachable from elsewhere: any Host, as before
    with (
        Archive(home_copy[0]) as archive,
        thread_server(create_app(archive, config("127.0.0.2"))) as port,
    ):
        for host in ("127.0.0.2:8000", "127.0.0.2", "localhost:8000", "LOCALHOST"):
            assert http_request(port, "GET", "/healthz", headers={"Host": host}).status == 200, host
        assert_error(http_request(port, "GET", "/healthz", headers={"Host": "127.0.0.2.evil.example"}), 400)


def test_slow_bodies_get_408_and_connections_are_bounded(home_copy):
    from vistag import Archive
    from vistag.http import ServiceConfig, create_app

    def head(method: str, path: str, length: int, ctype: str = "application/json") -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    config = ServiceConfig(body_timeout_s=1.0, max_connections=3)
    with Archive(home_copy[0]) as archive, thread_server(create_app(archive, config)) as port:
        json_half = head("POST", "/api/search/vector", 200) + b'{"vector": [1.0, '
        upload_half = head("POST", "/api/search/image", 5000, "multipart/form-data; boundary=x") + b"--x\r\n"
        for request in (json_half, upload_half):  # the client stops sending: 408, connection closed
            reply = raw_exchange(port, request)
            assert reply.startswith(b"HTTP/1.1 408 ") and b"within 1 s" in reply, reply[:300]
        unread = raw_exchange(port, head("GET", "/healthz", 100) + b"0123456789")
        assert unread.startswith(b"HTTP/1.1 200 ") and b"connection: close" in unread.lower()

        idle = [socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) for _ in range(3)]
        try:
            assert http_request(port, "GET", "/healthz").status == 503  # limit_concurrency
        finally:
            for sock in idle:
                sock.close()
        for _ in range(100):  # the server notices the closed connections
            if (status := http_request(port, "GET", "/healthz").status) == 200:
                break
            time.sleep(0.1)
        assert status == 200


def test_hits_and_details_carry_calibrated_confidence(server):
    from vistag import Archive

    auth = {"Authorization": f"Bearer {TOKEN}"}
    labels = {"labels": "red circle,blue square,green star,noise", "top": 3}
    run = server.post_json("/api/tag", labels, **auth)
    assert run.status == 200, run.body
    hits = server.search("q=shape&k=8")["hits"]
    details = server.get(f"/api/images/{hits[0]['id']}").json()["tags"]
    with Archive(server.home) as archive:
        rows = archive.catalog.tags(run.json()["run_id"])
    stored = {(r["image_id"], r["label"]): r["confidence"] for r in rows}
    shown = [(h["id"], tag) for h in hits for tag in h["tags"]] + [(hits[0]["id"], tag) for tag in details]
    assert all(len(h["tags"]) == 3 for h in hits) and len(details) >= 3
    for image_id, tag in shown:
        assert {"label", "score", "rank", "method", "confidence"} <= set(tag)  # keys of before stay
        assert 0 <= tag["confidence"] <= 1
        assert tag["confidence"] == pytest.approx(stored[(image_id, tag["label"])], abs=1e-6)
