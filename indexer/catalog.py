"""The catalog: every write and read of the SQL database goes through :class:`Catalog`.

Any SQLAlchemy URL works (SQLite file by default, ``postgresql+psycopg://`` at scale). The schema
is brought up to date with Alembic on open. All statements are parameterised; batches of rows
are written in one transaction each, so a failure mid-batch leaves no partial rows.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from core.errors import CatalogError, LockHeld, NotFound
from core.models import ModelIdentity
from indexer import database
from indexer import schema as t
from indexer.catalog_corrections import CorrectionQueries
from indexer.catalog_duplicates import DuplicateQueries
from indexer.catalog_facets import FacetQueries
from indexer.catalog_meta import FILE_FIELDS, PHOTO_FIELDS, MetaQueries, bounding_box, within
from indexer.catalog_tags import TagQueries
from indexer.catalog_xmp import XmpQueries
from indexer.database import WRITER_LOCK_KEY, chunks, insert_many, parse_db_url


@dataclass(frozen=True)
class ImageFilter:
    """Which indexed images a search may return: a label among an image's ``tag_ranks`` best tags of
    the latest tag run, a uri prefix, a range of the date taken (seconds since the epoch; the EXIF
    date taken, else the file's modification time), a ``camera`` (case-insensitive substring of
    "Make Model"), a ``near`` circle (lat, lon in decimal degrees, radius in km) and a ``keyword``
    (one an image was given, case-insensitive)."""

    tag: str | None = None
    prefix: str | None = None
    since: float | None = None
    until: float | None = None
    tag_ranks: int = 3
    camera: str | None = None
    near: tuple[float, float, float] | None = None
    keyword: str | None = None

    def __bool__(self) -> bool:
        values = (self.tag, self.prefix, self.since, self.until, self.camera, self.near, self.keyword)
        return any(v is not None for v in values)


class Catalog(TagQueries, DuplicateQueries, XmpQueries, MetaQueries, FacetQueries, CorrectionQueries):
    """Typed operations on the catalog database."""

    def __init__(self, url: str):
        self.url = url
        self.engine = database.engine(url)
        try:
            database.migrate(self.engine)
        except sa.exc.OperationalError as err:
            raise CatalogError(f"cannot open catalog {self.display_url(url)}: {err.orig}") from err

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the catalog's writer lock: a PostgreSQL advisory lock, shared by every machine
        using this database (SQLite catalogs rely on the home's file lock). Raises LockHeld."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            if not conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": WRITER_LOCK_KEY}
            ).scalar():
                raise LockHeld(
                    "another vistag run is writing to this catalog database; try again when it ends"
                )
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": WRITER_LOCK_KEY})
                conn.commit()

    @staticmethod
    def display_url(url: str) -> str:
        """The URL with any password masked, for messages and status output."""
        return parse_db_url(url).render_as_string(hide_password=True)

    # identity -------------------------------------------------------------------------------
    def catalog_id(self) -> str:
        """This catalog's random identity (``meta`` table), recorded in the index versions built
        from it; made here if the row is missing."""
        query = sa.select(t.meta.c.value).where(t.meta.c.key == "catalog_id")
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        if found is not None:
            return str(found)
        with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as conn:
            conn.execute(t.meta.insert().values(key="catalog_id", value=uuid.uuid4().hex))
        with self.engine.connect() as conn:
            return str(conn.execute(query).scalar())

    # models ---------------------------------------------------------------------------------
    def model_id(self, identity: ModelIdentity) -> int:
        """The id of ``identity``'s row, inserting it on first use."""
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(t.models.c.id).where(t.models.c.key == identity.key)).scalar()
            if found is not None:
                return int(found)
            row = {
                "key": identity.key,
                "model": identity.model,
                "pretrained": identity.pretrained,
                "embed_dim": identity.embed_dim,
                "preprocess": json.dumps(identity.preprocess),
                "fingerprint": identity.fingerprint,
                "created": time.time(),
            }
            return int(conn.execute(t.models.insert().values(**row)).inserted_primary_key[0])

    def find_model_id(self, identity: ModelIdentity) -> int | None:
        """The id of ``identity``'s row, or None (a reader's lookup: nothing is written)."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(t.models.c.id).where(t.models.c.key == identity.key)).scalar()
        return int(found) if found is not None else None

    def model(self, model_id: int) -> ModelIdentity:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.models).where(t.models.c.id == model_id)).mappings().first()
        if row is None:
            raise NotFound(f"no model with id {model_id}")
        return ModelIdentity(
            row["model"],
            row["pretrained"],
            row["embed_dim"],
            json.loads(row["preprocess"]),
            row["fingerprint"],
        )

    # runs -----------------------------------------------------------------------------------
    def start_run(self, kind: str, model_id: int | None, params: dict[str, Any] | None = None) -> int:
        row = {
            "kind": kind,
            "status": "running",
            "model_id": model_id,
            "started": time.time(),
            "params": json.dumps(params or {}, default=str),
        }
        row |= dict.fromkeys(
            ("listed", "new", "changed", "unchanged", "deleted", "embedded", "reused", "failed"), 0
        )
        with self.engine.begin() as conn:
            return int(conn.execute(t.runs.insert().values(**row)).inserted_primary_key[0])

    def finish_run(
        self, run_id: int, status: str, counts: dict[str, int], message: str | None = None
    ) -> None:
        values = {k: v for k, v in counts.items() if k in t.runs.c}
        with self.engine.begin() as conn:
            conn.execute(
                t.runs.update()
                .where(t.runs.c.id == run_id)
                .values(status=status, finished=time.time(), message=message, **values)
            )

    def update_run_params(self, run_id: int, params: dict[str, Any]) -> None:
        """Merge ``params`` into a run's recorded parameters."""
        with self.engine.begin() as conn:
            old = conn.execute(sa.select(t.runs.c.params).where(t.runs.c.id == run_id)).scalar() or "{}"
            merged = json.loads(old) | params
            conn.execute(
                t.runs.update().where(t.runs.c.id == run_id).values(params=json.dumps(merged, default=str))
            )

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Runs, newest first."""
        query = sa.select(t.runs).order_by(t.runs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """Run ``run_id`` as a row of :meth:`runs`, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.runs).where(t.runs.c.id == run_id)).mappings().first()
        return dict(row) if row is not None else None

    # images ---------------------------------------------------------------------------------
    def image_states(self) -> dict[str, dict[str, Any]]:
        """uri -> {id, sha256, size, mtime, status, phash, sidecars} for every image row (for planning)."""
        cols = [
            t.images.c.uri,
            t.images.c.id,
            t.images.c.sha256,
            t.images.c.size,
            t.images.c.mtime,
            t.images.c.status,
            t.images.c.phash,
            t.images.c.sidecars,
        ]
        with self.engine.connect() as conn:
            return {r["uri"]: dict(r) for r in conn.execute(sa.select(*cols)).mappings()}

    def upsert_images(self, rows: Sequence[dict[str, Any]], run_id: int) -> None:
        """Insert or update image rows by uri (one transaction per chunk of rows)."""
        now = time.time()
        for chunk in chunks(rows):
            with self.engine.begin() as conn:
                uris = [r["uri"] for r in chunk]
                existing = dict(
                    conn.execute(
                        sa.select(t.images.c.uri, t.images.c.id).where(t.images.c.uri.in_(uris))
                    ).all()
                )
                fresh = [
                    r | {"first_run": run_id, "last_run": run_id, "updated": now}
                    for r in chunk
                    if r["uri"] not in existing
                ]
                if fresh:
                    insert_many(conn, t.images, fresh)
                updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for r in chunk:
                    if r["uri"] in existing:
                        values = {k: v for k, v in r.items() if k != "uri"} | {
                            "last_run": run_id,
                            "updated": now,
                        }
                        updates.setdefault(tuple(sorted(values)), []).append(
                            values | {"_id": existing[r["uri"]]}
                        )
                for keys, batch in updates.items():  # one executemany per set of columns
                    stmt = t.images.update().where(t.images.c.id == sa.bindparam("_id"))
                    conn.execute(stmt.values({k: sa.bindparam(k) for k in keys}), batch)

    def set_status(self, uris: Iterable[str], status: str, run_id: int) -> int:
        uris = list(uris)
        now = time.time()
        with self.engine.begin() as conn:
            for chunk in chunks(uris):
                conn.execute(
                    t.images.update()
                    .where(t.images.c.uri.in_(chunk))
                    .values(status=status, last_run=run_id, updated=now)
                )
        return len(uris)

    def decoded_by_sha(self, shas: Sequence[str]) -> dict[str, dict[str, Any]]:
        """sha256 -> ``width``, ``height``, ``phash``, ``taken``, ``orientation`` of any already-decoded image with
        that content (content the pipeline did not decode again takes them from it)."""
        i = t.images
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(shas)):
                query = sa.select(
                    i.c.sha256, i.c.width, i.c.height, i.c.phash, i.c.taken, i.c.orientation
                ).where(i.c.sha256.in_(chunk), i.c.width > 0)
                for row in conn.execute(query.order_by(i.c.phash.is_(None))).mappings():
                    described = ("width", "height", "phash", "taken", "orientation")
                    out.setdefault(row["sha256"], {k: row[k] for k in described})
        return out

    def described_hashes(self, model_id: int) -> dict[str, bool]:
        """sha256 of every content embedded with this model -> whether an image of it has a
        perceptual hash in the catalog (else the pipeline decodes it again, for that only)."""
        i = t.images
        described = sa.select(i.c.sha256).where(i.c.phash.is_not(None)).distinct()
        with self.engine.connect() as conn:
            have = set(conn.execute(described).scalars())
        return {sha: sha in have for sha in self.known_hashes(model_id)}

    def images(
        self, ids: Sequence[int] | None = None, status: str | None = "indexed"
    ) -> list[dict[str, Any]]:
        """Image rows by id (in the given order) or all of them, optionally of one status.

        By id, the status is checked on the rows found rather than in SQL: PostgreSQL, with
        statistics older than a bulk insert, otherwise intersects the primary key with a scan of
        the status index over every image (0.9 ms a search at 50,000 images, growing with them)."""
        query = sa.select(t.images)
        with self.engine.connect() as conn:
            if ids is None:
                if status:
                    query = query.where(t.images.c.status == status)
                return [dict(r) for r in conn.execute(query.order_by(t.images.c.id)).mappings()]
            found: dict[int, dict[str, Any]] = {}
            for chunk in chunks([int(i) for i in ids]):
                found.update(
                    {r["id"]: dict(r) for r in conn.execute(query.where(t.images.c.id.in_(chunk))).mappings()}
                )
        return [
            found[int(i)]
            for i in ids
            if int(i) in found and (not status or found[int(i)]["status"] == status)
        ]

    def matching_ids(self, where: ImageFilter) -> np.ndarray:
        """(n,) int64 ids of the indexed images that pass every condition of ``where``."""
        i = t.images
        query = sa.select(i.c.id).where(i.c.status == "indexed")
        if where.prefix is not None:  # substr, not LIKE: exact and case-sensitive on every backend
            query = query.where(sa.func.substr(i.c.uri, 1, len(where.prefix)) == where.prefix)
        taken = sa.func.coalesce(i.c.taken, i.c.mtime)
        if where.since is not None:
            query = query.where(taken >= where.since)
        if where.until is not None:
            query = query.where(taken <= where.until)
        if where.tag is not None:
            run_id = self.latest_tag_run()
            if run_id is None:
                return np.empty(0, dtype=np.int64)
            query = query.where(i.c.id.in_(self.tagged_with(run_id, where.tag, where.tag_ranks)))
        query = query.where(*self.metadata_conditions(where.camera, where.keyword))
        if where.near is not None:  # a box in SQL, the exact distance here
            query = query.add_columns(i.c.lat, i.c.lon).where(*bounding_box(*where.near))
            with self.engine.connect() as conn:
                return within([tuple(r) for r in conn.execute(query)], where.near)
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(query).scalars(), dtype=np.int64)

    def hit_rows(self) -> Iterator[tuple[int, str, int | None, int | None, str | None]]:
        """(id, uri, width, height, sha256) of every indexed image, by id: what a search hit shows."""
        i = t.images
        query = sa.select(i.c.id, i.c.uri, i.c.width, i.c.height, i.c.sha256).where(i.c.status == "indexed")
        with self.engine.connect() as conn:
            yield from conn.execute(query.order_by(i.c.id).execution_options(yield_per=10_000))

    def image(self, id_or_uri: int | str) -> dict[str, Any]:
        column = t.images.c.id if isinstance(id_or_uri, int) else t.images.c.uri
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.images).where(column == id_or_uri)).mappings().first()
        if row is None:
            raise NotFound(f"no image {id_or_uri!r} in the catalog")
        return dict(row)

    def details(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """What a person reads about the image of a catalog ``row`` (:meth:`image`): its file and
        photo metadata (None where unknown), its keywords and its content's active corrections."""
        fixed = self.corrections(contents=[row["sha256"]]) if row["sha256"] else []
        fields = {key: row[key] for key in (*FILE_FIELDS, *PHOTO_FIELDS)}
        return fields | {"keywords": self.keywords(int(row["id"])), "corrections": fixed}

    def counts(self) -> dict[str, int]:
        query = sa.select(t.images.c.status, sa.func.count()).group_by(t.images.c.status)
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(query).all())
        return {s: int(by_status.get(s, 0)) for s in ("indexed", "failed", "deleted")}

    # embeddings and failures -----------------------------------------------------------------
    def known_hashes(self, model_id: int) -> list[str]:
        query = sa.select(t.embeddings.c.sha256).where(t.embeddings.c.model_id == model_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def has_indexed_images(self) -> bool:
        query = sa.select(t.images.c.id).where(t.images.c.status == "indexed").limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def has_embeddings(self, model_id: int) -> bool:
        query = sa.select(t.embeddings.c.sha256).where(t.embeddings.c.model_id == model_id).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def embedding_shards(self) -> list[tuple[str, str, int]]:
        """(shard_dir, shard, embeddings recorded) of every shard the embeddings table points into."""
        e = t.embeddings
        query = sa.select(e.c.shard_dir, e.c.shard, sa.func.count()).group_by(e.c.shard_dir, e.c.shard)
        with self.engine.connect() as conn:
            return sorted((str(d), str(s), int(n)) for d, s, n in conn.execute(query))

    def drop_shard_embeddings(self, shard_dir: str, shard: str) -> int:
        """Forget the embeddings stored in one shard (it is damaged): their content is embedded again."""
        e = t.embeddings
        with self.engine.begin() as conn:
            gone = conn.execute(e.delete().where(e.c.shard_dir == shard_dir, e.c.shard == shard))
        return int(gone.rowcount)

    def embedding_sources(self, model_id: int, shas: Sequence[str]) -> dict[str, tuple[str, str]]:
        """sha256 -> (shard_dir, shard) holding its embedding for this model."""
        e = t.embeddings
        out: dict[str, tuple[str, str]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(shas)):
                query = sa.select(e.c.sha256, e.c.shard_dir, e.c.shard)
                query = query.where(e.c.model_id == model_id, e.c.sha256.in_(chunk))
                out.update({sha: (d, s) for sha, d, s in conn.execute(query)})
        return out

    def add_embeddings(self, rows: Sequence[dict[str, Any]]) -> int:
        """Record where each (sha256, model) embedding lives; content already recorded is skipped."""
        added = 0
        for chunk in chunks(rows):
            with self.engine.begin() as conn:
                model_ids = {r["model_id"] for r in chunk}
                have = set(
                    conn.execute(
                        sa.select(t.embeddings.c.sha256, t.embeddings.c.model_id).where(
                            t.embeddings.c.sha256.in_([r["sha256"] for r in chunk]),
                            t.embeddings.c.model_id.in_(model_ids),
                        )
                    ).all()
                )
                fresh = {
                    (r["sha256"], r["model_id"]): r for r in chunk if (r["sha256"], r["model_id"]) not in have
                }
                if fresh:
                    insert_many(conn, t.embeddings, list(fresh.values()))
                added += len(fresh)
        return added

    def vector_locations(
        self, model_id: int, ids: Sequence[int] | None = None, live_only: bool = True
    ) -> list[tuple[int, str, str, int]]:
        """(image id, shard_dir, shard, row) of images with an embedding of this model, by id.

        All indexed images by default; ``ids`` restricts to those images, and ``live_only=False``
        includes images deleted since (their vectors stay in the shards).
        """
        e, i = t.embeddings, t.images
        query = sa.select(i.c.id, e.c.shard_dir, e.c.shard, e.c.row).join(e, e.c.sha256 == i.c.sha256)
        query = query.where(e.c.model_id == model_id).order_by(i.c.id)
        if live_only:
            query = query.where(i.c.status == "indexed")
        with self.engine.connect() as conn:
            if ids is None:
                return [tuple(r) for r in conn.execute(query).all()]
            out: list[tuple[int, str, str, int]] = []
            for chunk in chunks([int(x) for x in ids]):
                out += [tuple(r) for r in conn.execute(query.where(i.c.id.in_(chunk))).all()]
        return sorted(out)

    def live_state(self, model_id: int) -> str:
        """A token that changes whenever the set of indexed images or their content changes."""
        i = t.images
        query = sa.select(sa.func.count(), sa.func.max(i.c.id), sa.func.max(i.c.updated)).where(
            i.c.status == "indexed"
        )
        with self.engine.connect() as conn:
            count, max_id, updated = conn.execute(query).one()
        return f"{model_id}:{count}:{max_id}:{updated!r}"

    def images_touched(self, run_id: int, described: Collection[str] = ()) -> list[int]:
        """Ids of indexed images that run ``run_id`` added or re-read (new, changed, moved), but
        those at the uris ``described`` (unchanged images whose metadata alone it read again)."""
        i = t.images
        query = sa.select(i.c.id, i.c.uri).where(i.c.last_run == run_id, i.c.status == "indexed")
        with self.engine.connect() as conn:
            return sorted(int(x) for x, uri in conn.execute(query) if uri not in described)

    def add_failures(self, rows: Sequence[dict[str, str]], run_id: int) -> None:
        now = time.time()
        for chunk in chunks(rows):
            with self.engine.begin() as conn:
                insert_many(conn, t.failures, [dict(r) | {"run_id": run_id, "created": now} for r in chunk])

    def last_failure(self, uri: str) -> dict[str, Any] | None:
        """The newest failure row recorded for ``uri`` (stage, reason, run_id), or None."""
        query = sa.select(t.failures).where(t.failures.c.uri == uri).order_by(t.failures.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def failures(self, limit: int | None = None) -> list[dict[str, Any]]:
        query = sa.select(t.failures).order_by(t.failures.c.id.desc())
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query.limit(limit)).mappings()]

    # index versions --------------------------------------------------------------------------
    def add_index_version(
        self, model_id: int, path: str, index_type: str, count: int, run_id: int | None
    ) -> int:
        row = {
            "model_id": model_id,
            "path": path,
            "index_type": index_type,
            "metric": "ip",
            "count": count,
            "run_id": run_id,
            "created": time.time(),
        }
        with self.engine.begin() as conn:
            return int(conn.execute(t.index_versions.insert().values(**row)).inserted_primary_key[0])
