"""Cache of text embeddings by (model, text).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "text_embeddings",
        sa.Column("model_id", Id, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "text_sha256", name="pk_text_embeddings"),
    )


def downgrade() -> None:
    op.drop_table("text_embeddings")
