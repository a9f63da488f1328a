"""The keywords vistag wrote into XMP sidecars, so that it removes only its own on the next write.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xmp_keywords",
        sa.Column("sidecar", sa.Text, nullable=False),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("keyword", sa.Text, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.ForeignKey("runs.id")),
        sa.Column("updated", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("sidecar", "field", "keyword", name="pk_xmp_keywords"),
    )


def downgrade() -> None:
    op.drop_table("xmp_keywords")
