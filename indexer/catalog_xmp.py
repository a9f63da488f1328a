"""The catalog's record of the keywords vistag wrote into XMP sidecars (a part of
:class:`indexer.catalog.Catalog`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import uris
from core.photometa import sidecar_paths
from indexer import schema as t
from indexer.database import chunks

#: sidecar URI -> field -> keyword -> state ("written" or "declined")
XmpRecords = dict[str, dict[str, dict[str, str]]]


class XmpQueries:
    """What ``write-xmp`` remembers per sidecar; mixed into :class:`indexer.catalog.Catalog`."""

    engine: Engine

    def xmp_records(self, sidecars: Sequence[str]) -> XmpRecords:
        """The recorded keywords of the sidecars (URIs) asked for; a sidecar without any is absent."""
        x = t.xmp_keywords
        out: XmpRecords = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(sidecars))):
                query = sa.select(x.c.sidecar, x.c.field, x.c.keyword, x.c.state).where(
                    x.c.sidecar.in_(chunk)
                )
                for sidecar, field, keyword, state in conn.execute(query):
                    out.setdefault(sidecar, {}).setdefault(field, {})[keyword] = state
        return out

    def set_xmp_records(
        self, sidecar: str, records: Mapping[str, Mapping[str, str]], run_id: int | None
    ) -> None:
        """Replace what is recorded for ``sidecar`` (URI) by ``records``: field -> keyword -> state."""
        x = t.xmp_keywords
        now = time.time()
        rows = [
            {"sidecar": sidecar, "field": f, "keyword": k, "state": s, "run_id": run_id, "updated": now}
            for f, keywords in records.items()
            for k, s in keywords.items()
        ]
        with self.engine.begin() as conn:
            conn.execute(x.delete().where(x.c.sidecar == sidecar))
            if rows:
                conn.execute(x.insert(), rows)

    def vistag_keywords(self, image_uris: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """image uri -> field -> the keywords vistag wrote (and still counts as written) into either
        sidecar of that local image: what reading its sidecars must not take for a person's keywords."""
        by_sidecar: dict[str, str] = {}
        for uri in image_uris:
            for path in sidecar_paths(uri):
                by_sidecar[uris.from_path(path)] = uri
        out: dict[str, dict[str, list[str]]] = {}
        for sidecar, fields in self.xmp_records(list(by_sidecar)).items():
            mine = out.setdefault(by_sidecar[sidecar], {})
            for field, keywords in fields.items():
                mine.setdefault(field, []).extend(k for k, state in keywords.items() if state == "written")
        return out
