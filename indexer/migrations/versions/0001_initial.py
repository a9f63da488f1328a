"""Initial catalog: models, runs, images, embeddings, failures, index versions, labels, tags.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column:
    return sa.Column("id", Id, primary_key=True, autoincrement=True)


def _fk(name: str, target: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, Id, sa.ForeignKey(target), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "models",
        _id(),
        sa.Column("key", sa.String(32), nullable=False, unique=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("pretrained", sa.Text),
        sa.Column("embed_dim", sa.Integer, nullable=False),
        sa.Column("preprocess", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    counts = ["listed", "new", "changed", "unchanged", "deleted", "embedded", "reused", "failed"]
    op.create_table(
        "runs",
        _id(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _fk("model_id", "models.id"),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("finished", sa.Float),
        *[sa.Column(name, sa.Integer, nullable=False) for name in counts],
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("message", sa.Text),
    )
    op.create_table(
        "images",
        _id(),
        sa.Column("uri", sa.Text, nullable=False, unique=True),
        sa.Column("sha256", sa.String(64)),
        sa.Column("size", sa.BigInteger),
        sa.Column("mtime", sa.Float),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        _fk("first_run", "runs.id"),
        _fk("last_run", "runs.id"),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_status", "images", ["status"])
    op.create_table(
        "embeddings",
        sa.Column("sha256", sa.String(64), nullable=False),
        _fk("model_id", "models.id", nullable=False),
        sa.Column("shard_dir", sa.Text, nullable=False),
        sa.Column("shard", sa.String(128), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        _fk("run_id", "runs.id"),
        sa.PrimaryKeyConstraint("sha256", "model_id", name="pk_embeddings"),
    )
    op.create_table(
        "failures",
        _id(),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        _fk("run_id", "runs.id"),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_index("ix_failures_uri", "failures", ["uri"])
    op.create_table(
        "index_versions",
        _id(),
        _fk("model_id", "models.id", nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("index_type", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        _fk("run_id", "runs.id"),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table("labels", _id(), sa.Column("name", sa.Text, nullable=False, unique=True))
    op.create_table(
        "tags",
        _id(),
        _fk("image_id", "images.id", nullable=False),
        _fk("label_id", "labels.id", nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        _fk("run_id", "runs.id", nullable=False),
    )
    op.create_index("ix_tags_run_image", "tags", ["run_id", "image_id"])
    op.create_index("ix_tags_image", "tags", ["image_id"])


def downgrade() -> None:
    for name in ["tags", "labels", "index_versions", "failures", "embeddings", "images", "runs", "models"]:
        op.drop_table(name)
