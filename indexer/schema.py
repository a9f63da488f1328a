"""Catalog tables (SQLAlchemy 2 Core). Changes go through Alembic migrations in ``migrations/``.

FAISS id = ``images.id`` (int64): the index is built with ``add_with_ids(vectors, image_ids)``,
so a search hit's id is the catalog row, and nothing else maps between the two.
Times are seconds since the epoch (float), portable across SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()
HEAD_REVISION = "0009"  # the newest migration in migrations/versions (a test checks it is Alembic's head)

models = Table(
    "models",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(32), nullable=False, unique=True),
    Column("model", Text, nullable=False),
    Column("pretrained", Text),
    Column("embed_dim", Integer, nullable=False),
    Column("preprocess", Text, nullable=False),
    Column("fingerprint", String(64), nullable=False, default=""),
    Column("created", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("model_id", Id, ForeignKey("models.id")),
    Column("started", Float, nullable=False),
    Column("finished", Float),
    Column("listed", Integer, nullable=False, default=0),
    Column("new", Integer, nullable=False, default=0),
    Column("changed", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("deleted", Integer, nullable=False, default=0),
    Column("embedded", Integer, nullable=False, default=0),
    Column("reused", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("params", Text, nullable=False, default="{}"),
    Column("message", Text),
)

images = Table(
    "images",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uri", Text, nullable=False, unique=True),
    Column("sha256", String(64)),
    Column("size", BigInteger),
    Column("mtime", Float),
    Column("width", Integer),
    Column("height", Integer),
    Column("status", String(16), nullable=False),
    Column("phash", String(16)),  # perceptual hash, 16 hex digits (core.hashes)
    Column("taken", Float),  # EXIF date taken, seconds since the epoch
    Column("orientation", Integer),  # the EXIF orientation (1..8) decoding applied; NULL: unknown
    Column("camera", Text),  # EXIF make and model, "Make Model" (core.photometa)
    Column("lens", Text),
    Column("lat", Float),  # GPS position, decimal degrees (south and west negative)
    Column("lon", Float),
    Column("sidecars", Text),  # its XMP sidecars' state when its metadata was read; NULL: never read
    Column("first_run", Id, ForeignKey("runs.id")),
    Column("last_run", Id, ForeignKey("runs.id")),
    Column("updated", Float, nullable=False),
    Index("ix_images_sha256", "sha256"),
    Index("ix_images_status", "status"),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("sha256", String(64), nullable=False),
    Column("model_id", Id, ForeignKey("models.id"), nullable=False),
    Column("shard_dir", Text, nullable=False),
    Column("shard", String(128), nullable=False),
    Column("row", Integer, nullable=False),
    Column("run_id", Id, ForeignKey("runs.id")),
    PrimaryKeyConstraint("sha256", "model_id", name="pk_embeddings"),
)

failures = Table(
    "failures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uri", Text, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("run_id", Id, ForeignKey("runs.id")),
    Column("created", Float, nullable=False),
    Index("ix_failures_uri", "uri"),
)

index_versions = Table(
    "index_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("model_id", Id, ForeignKey("models.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("index_type", String(128), nullable=False),
    Column("metric", String(16), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("run_id", Id, ForeignKey("runs.id")),
    Column("created", Float, nullable=False),
)

labels = Table(
    "labels",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
)

tags = Table(
    "tags",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("image_id", Id, ForeignKey("images.id"), nullable=False),
    Column("label_id", Id, ForeignKey("labels.id"), nullable=False),
    Column("score", Float, nullable=False),
    Column("confidence", Float),
    Column("rank", Integer, nullable=False),
    Column("method", String(16), nullable=False),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Index("ix_tags_run_image", "run_id", "image_id"),
    Index("ix_tags_image", "image_id"),
)

text_embeddings = Table(
    "text_embeddings",
    metadata,
    Column("model_id", Id, ForeignKey("models.id"), nullable=False),
    Column("text_sha256", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    PrimaryKeyConstraint("model_id", "text_sha256", name="pk_text_embeddings"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# people's decisions about duplicate groups, by content: a kept group ("keep": one member "keep",
# the others "other") or a pair that is not one ("not_duplicates": both members "pair")
duplicate_decisions = Table(
    "duplicate_decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("created", Float, nullable=False),
)

duplicate_members = Table(
    "duplicate_members",
    metadata,
    Column("decision_id", Id, ForeignKey("duplicate_decisions.id"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("role", String(8), nullable=False),
    PrimaryKeyConstraint("decision_id", "sha256"),
    Index("ix_duplicate_members_sha256", "sha256"),
)

# the keywords people gave an image (embedded IPTC and XMP, its sidecars): matched lower case
# (keyword), shown as first spelt in the image (display; NULL in rows from before 0009); replaced
# whenever its metadata is read
image_keywords = Table(
    "image_keywords",
    metadata,
    Column("image_id", Id, ForeignKey("images.id"), nullable=False),
    Column("keyword", Text, nullable=False),
    Column("display", Text),
    PrimaryKeyConstraint("image_id", "keyword", name="pk_image_keywords"),
    Index("ix_image_keywords_keyword", "keyword"),
)

# the keywords vistag wrote into XMP sidecars (``write-xmp``), per sidecar (its path as an image URI)
# and field: "written" (vistag's; removed when vistag no longer gives it) or "declined" (vistag wrote
# it and a person removed it: not written again)
xmp_keywords = Table(
    "xmp_keywords",
    metadata,
    Column("sidecar", Text, nullable=False),
    Column("field", String(32), nullable=False),
    Column("keyword", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("run_id", Id, ForeignKey("runs.id")),
    Column("updated", Float, nullable=False),
    PrimaryKeyConstraint("sidecar", "field", "keyword", name="pk_xmp_keywords"),
)

# people's corrections of tags, by content: ``verdict`` "yes" (confirmed) or "no" (rejected) for a
# label, from ``source`` "person" or "keywords" (an image's own keywords); ``uri`` where the image was
# when corrected (for people; the content is what counts); ``withdrawn`` set when taken back or
# replaced by a newer correction of the same content and label
corrections = Table(
    "corrections",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("label", Text, nullable=False),
    Column("verdict", String(3), nullable=False),
    Column("source", String(16), nullable=False),
    Column("uri", Text),
    Column("created", Float, nullable=False),
    Column("withdrawn", Float),
    Index("ix_corrections_sha256", "sha256"),
    Index("ix_corrections_label", "label"),
)
