"""GET /api/facets on a real server: the most common keywords and tags with the counts the
keyword and tag filters give, and the range of dates taken (else modified)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from tests.conftest import FACET_LABELS, FACET_MTIME, FACET_PHOTOS
from tests.helpers import running_server


def _epoch(exif: str) -> float:
    return datetime.strptime(exif, "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def test_facets_count_keywords_and_tags_as_the_filters_match(facet_home, tmp_path):
    home = Path(shutil.copytree(facet_home[0], tmp_path / "home"))
    with running_server(home) as server:
        reply = server.get("/api/facets")
        assert reply.status == 200, reply.body
        facets = reply.json()
        assert facets["keywords"] == [
            {"value": "Beach", "count": 4},  # and "beach" once: one keyword in any case
            {"value": "City", "count": 2},
            {"value": "Alpha", "count": 1},
        ]
        assert facets["cameras"] == [
            {"value": "Canon EOS R5", "count": 2},
            {"value": "NIKON Z 6", "count": 1},
        ]
        for facet in facets["cameras"]:  # the count is what the camera filter passes
            value = facet["value"].replace(" ", "+")
            assert len(server.search(f"q=photo&k=50&camera={value}")["hits"]) == facet["count"]
        taken = [_epoch(t) for _, t in FACET_PHOTOS.values() if t]
        assert facets["taken"] == {"min": FACET_MTIME, "max": max(taken)}
        assert facets["tag_run"] == server.get("/api/labels").json()["tag_run"] is not None

        tags = facets["tags"]
        assert {t["value"] for t in tags} <= set(FACET_LABELS)
        assert sum(t["count"] for t in tags) == 3 * len(FACET_PHOTOS)  # each image's 3 best
        assert [t["count"] for t in tags] == sorted((t["count"] for t in tags), reverse=True)
        for facet in tags:  # the count is what the tag filter passes
            hits = server.search(f"q=photo&k=50&tag={facet['value'].replace(' ', '+')}")["hits"]
            assert len(hits) == facet["count"], facet
        for facet in facets["keywords"]:
            assert len(server.search(f"q=photo&k=50&keyword={facet['value']}")["hits"]) == facet["count"]


def test_facets_of_an_archive_without_a_tag_run_or_keywords(indexed_home, tmp_path):
    home = Path(shutil.copytree(indexed_home[0], tmp_path / "home"))
    with running_server(home) as server:
        facets = server.get("/api/facets").json()
    assert facets["keywords"] == [] and facets["tags"] == [] and facets["cameras"] == []
    assert facets["tag_run"] is None
    assert facets["taken"]["min"] <= facets["taken"]["max"]
