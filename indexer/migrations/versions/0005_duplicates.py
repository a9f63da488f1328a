"""What duplicate finding needs: each image's perceptual hash and date taken, and people's
decisions about duplicate groups, kept by content (SHA-256) so they survive moves and re-indexing.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("phash", sa.String(16)))
        batch.add_column(sa.Column("taken", sa.Float))
    op.create_table(
        "duplicate_decisions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "duplicate_members",
        sa.Column(
            "decision_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("duplicate_decisions.id"),
            nullable=False,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", "sha256"),
    )
    op.create_index("ix_duplicate_members_sha256", "duplicate_members", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_duplicate_members_sha256", "duplicate_members")
    op.drop_table("duplicate_members")
    op.drop_table("duplicate_decisions")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("taken")
        batch.drop_column("phash")
