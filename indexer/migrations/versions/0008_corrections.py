"""People's corrections of tags: an image's content (sha256) confirmed or rejected for a label.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("verdict", sa.String(3), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("uri", sa.Text),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("withdrawn", sa.Float),
    )
    op.create_index("ix_corrections_sha256", "corrections", ["sha256"])
    op.create_index("ix_corrections_label", "corrections", ["label"])


def downgrade() -> None:
    op.drop_table("corrections")
