"""Photo metadata: orientation, camera, lens and GPS position of each image, the state of its sidecars when read,
and the keywords people gave it.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("images", sa.Column("orientation", sa.Integer))
    op.add_column("images", sa.Column("camera", sa.Text))
    op.add_column("images", sa.Column("lens", sa.Text))
    op.add_column("images", sa.Column("lat", sa.Float))
    op.add_column("images", sa.Column("lon", sa.Float))
    op.add_column("images", sa.Column("sidecars", sa.Text))
    op.create_table(
        "image_keywords",
        sa.Column("image_id", Id, sa.ForeignKey("images.id"), nullable=False),
        sa.Column("keyword", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("image_id", "keyword", name="pk_image_keywords"),
    )
    op.create_index("ix_image_keywords_keyword", "image_keywords", ["keyword"])


def downgrade() -> None:
    op.drop_index("ix_image_keywords_keyword", table_name="image_keywords")
    op.drop_table("image_keywords")
    with op.batch_alter_table("images") as batch:
        for column in ("sidecars", "lon", "lat", "lens", "camera", "orientation"):
            batch.drop_column(column)
