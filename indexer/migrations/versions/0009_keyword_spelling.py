"""Keywords keep the spelling people gave them (``display``) beside the lower-case key they are
matched by. Rows from before have none: they show lower-case until their metadata is read again,
which ``vistag index --refresh-metadata`` does for the images with keywords (their metadata is
marked as never read).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("image_keywords", sa.Column("display", sa.Text))
    op.execute("UPDATE images SET sidecars = NULL WHERE id IN (SELECT image_id FROM image_keywords)")


def downgrade() -> None:
    with op.batch_alter_table("image_keywords") as batch:
        batch.drop_column("display")
