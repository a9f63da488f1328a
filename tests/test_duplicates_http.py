"""Duplicate review over HTTP: the listing is the API's (with thumbnails), cached until the archive
changes; decisions need the write token, are remembered, and take the group out of the listing;
every input is bounded. An archive of planted families (vistag.synth.families) indexed once with
the tiny model; each test serves its own copy in-process on loopback."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.http import Reply, http_request
from tests.helpers import TOKEN, assert_error, thread_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def home(family_home: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(family_home, tmp_path / "home"))


@contextlib.contextmanager
def serving(home: Path, token: str | None = TOKEN) -> Iterator[tuple[int, Any]]:
    """(port, app) of the app on ``home`` in this process."""
    from vistag import Archive
    from vistag.http import ServiceConfig, create_app

    with Archive(home) as archive:
        app = create_app(archive, ServiceConfig(write_token=token))
        with thread_server(app) as port:
            yield port, app


def listing(port: int, query: str = "") -> dict[str, Any]:
    reply = http_request(port, "GET", f"/api/duplicates{query}")
    assert reply.status == 200, reply.body[:300]
    return reply.json()


def resolve(port: int, body: object, headers: dict[str, str] | None = None) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http_request(
        port, "POST", "/api/duplicates/resolve", data, {"Content-Type": "application/json", **(headers or {})}
    )


def without_thumbnails(found: dict[str, Any]) -> dict[str, Any]:
    """``found`` as :meth:`Archive.duplicates` gives it (members without their thumbnail URL)."""
    for group in found["groups"]:
        for member in group["members"]:
            assert member.pop("thumbnail") == f"/api/images/{member['id']}/thumbnail"
    return found


def archive_listing(home: Path, **options: Any) -> dict[str, Any]:
    """What the Python API lists, through JSON (as the HTTP listing is)."""
    from vistag import Archive

    with Archive(home) as archive:
        return json.loads(json.dumps(archive.duplicates(**options)))


def test_listing_is_the_apis_with_thumbnails_and_cached(home, monkeypatch):
    import query.dedupe

    calls = []
    real = query.dedupe.find_duplicates
    monkeypatch.setattr(query.dedupe, "find_duplicates", lambda *a: calls.append(a[-1]) or real(*a))
    with serving(home) as (port, _):
        found = listing(port)
        assert listing(port) == found and len(calls) == 1  # cached
        member = found["groups"][0]["members"][0]
        thumb = http_request(port, "GET", f"{member['thumbnail']}?size=128")
        assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert without_thumbnails(found) == archive_listing(home)
        assert {g["kind"] for g in found["groups"]} == {"exact", "near"}
        for query, options in (
            ("?kind=exact", {"kind": "exact"}),
            ("?kind=near&threshold=0", {"kind": "near", "threshold": 0}),
            ("?kind=similar&threshold=64", {"kind": "similar", "threshold": 64}),
        ):
            assert without_thumbnails(listing(port, query)) == archive_listing(home, **options), query
        assert len(calls) == 4 + 4  # the service computed each of its four listings once; the API too
        schema = http_request(port, "GET", "/openapi.json").json()
        assert {"/api/duplicates", "/api/duplicates/resolve"} <= set(schema["paths"])


def test_resolve_needs_the_token_and_the_group_leaves_the_listing(home):
    from vistag import Archive

    with serving(home) as (port, _):
        groups = listing(port)["groups"]  # a cached listing, which the decisions must invalidate
        near = [g for g in groups if g["kind"] == "near"]
        other = next(m["id"] for m in near[0]["members"] if m["id"] != near[0]["keep"])
        keep = {"group": near[0]["id"], "keep": other}
        assert_error(resolve(port, keep), 401)
        assert_error(resolve(port, keep, {"Authorization": "Bearer wrong-token-0123456789"}), 401)
        assert_error(resolve(port, keep, {"Authorization": TOKEN}), 401)  # no scheme
        assert listing(port)["groups"] == groups  # nothing recorded

        done = resolve(port, keep, AUTH)
        assert done.status == 200, done.body
        assert done.json()["group"] == near[0]["id"] and done.json()["decision"] >= 1
        after = listing(port)
        assert near[0]["id"] not in {g["id"] for g in after["groups"]}
        assert without_thumbnails(after) == archive_listing(home)

        refused = resolve(port, {"group": near[1]["id"], "not_duplicates": True}, AUTH)
        assert refused.status == 200, refused.body
        assert near[1]["id"] not in {g["id"] for g in listing(port)["groups"]}
        exact = next(g for g in listing(port)["groups"] if g["kind"] == "exact")
        with Archive(home) as archive:  # a decision from elsewhere (the command line) counts too
            archive.resolve_duplicates(exact["id"], keep=exact["keep"])
            decisions = archive.catalog.duplicate_decisions()
        last = listing(port)
        assert exact["id"] not in {g["id"] for g in last["groups"]}
        assert without_thumbnails(last) == archive_listing(home)
    assert [d["kind"] for d in decisions] == ["keep", "not_duplicates", "keep"]
    roles = decisions[0]["members"]
    assert set(roles) == set(near[0]["contents"]) and list(roles.values()).count("keep") == 1
    kept_sha = next(m["sha256"] for m in near[0]["members"] if m["id"] == other)
    assert roles[kept_sha] == "keep"


def test_writes_off_without_a_token_and_one_write_at_a_time(home):
    from indexer.home import Home
    from indexer.lock import WriterLock

    with serving(home, token=None) as (port, _):
        group = listing(port)["groups"][0]
        body = {"group": group["id"], "keep": group["keep"]}
        assert "--write-token" in assert_error(resolve(port, body, AUTH), 403)
    with serving(home) as (port, app):
        service = app.state.service
        assert service._write_lock.acquire(blocking=False)  # a tag run, say
        try:
            assert "another write" in assert_error(resolve(port, body, AUTH), 409)
        finally:
            service._write_lock.release()
        with WriterLock(Home.resolve(home).lock_path):  # another vistag process writing to the home
            assert "another vistag run" in assert_error(resolve(port, body, AUTH), 409)
        assert resolve(port, body, AUTH).status == 200
        assert_error(resolve(port, body, AUTH), 404)  # resolved: no longer listed


def test_a_new_index_version_refreshes_the_listing(home, family_home, tiny_model, tmp_path):
    from vistag import Archive

    photos = family_home.parent / "photos"
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(photos / "photo-00004.jpg", extra / "again.jpg")  # a picture without copies so far
    with serving(home) as (port, _):
        before = listing(port)
        with Archive(home) as archive:
            archive.index([photos, extra], model=tiny_model, batch_size=8)
        after = listing(port)
    added = [g for g in after["groups"] if g not in before["groups"]]
    assert [g["kind"] for g in added] == ["exact"]
    assert {Path(m["uri"]).name for m in added[0]["members"]} == {"photo-00004.jpg", "again.jpg"}
    assert without_thumbnails(after) == archive_listing(home)


BAD_LISTINGS = ["threshold=65", "threshold=-1", "threshold=ten", "threshold=1e3", "kind=fuzzy", "kind="]
BAD_DECISIONS = [
    {"group": "../../etc/passwd", "keep": 1},
    {"group": "near-0123456789" + "0" * 5000, "keep": 1},
    {"group": "near-ABCDEF0123", "keep": 1},
    {"group": "blurry-0123456789", "keep": 1},
    {"group": "near-0123456789", "keep": 0},
    {"group": "near-0123456789", "keep": 2**63},
    {"group": "near-0123456789", "keep": "one"},
    {"group": "near-0123456789", "keep": 1, "threshold": 65},
    {"group": "near-0123456789", "keep": 1, "move_to": "/tmp/elsewhere"},
    {"group": "near-0123456789"},
    {"group": "near-0123456789", "keep": 1, "not_duplicates": True},
    {"keep": 1},
    b'{"group": "near-0123456789", "keep": ',
    b"[1, 2]",
]


def test_bad_inputs_are_400_and_an_unknown_group_404(home):
    with serving(home) as (port, _):
        for query in BAD_LISTINGS:
            assert_error(http_request(port, "GET", f"/api/duplicates?{query}"), 400)
        for body in BAD_DECISIONS:
            assert_error(resolve(port, body, AUTH), 400)
        groups = listing(port)["groups"]
        exact = next(g for g in groups if g["kind"] == "exact")
        near = next(g for g in groups if g["kind"] == "near")
        stranger = next(
            m["id"] for m in near["members"] if m["id"] not in {x["id"] for x in exact["members"]}
        )
        assert "identical" in assert_error(
            resolve(port, {"group": exact["id"], "not_duplicates": True}, AUTH), 400
        )
        assert "not a member" in assert_error(
            resolve(port, {"group": exact["id"], "keep": stranger}, AUTH), 400
        )
        assert_error(resolve(port, {"group": "near-0123456789", "keep": 1}, AUTH), 404)
        assert listing(port)["groups"] == groups  # nothing was recorded
