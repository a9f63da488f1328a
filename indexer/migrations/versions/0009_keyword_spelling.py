"""Keywords keep the spelling people gave them (``display``) beside the lower-case key they are
matched by, and camera, lens and position are also read from XMP (sidecars first). Rows from
before have no spelling: they show lower-case until their metadata is read again. The images with
keywords or a sidecar get a sidecar state no listing gives (``STALE``), so the next
``vistag index`` reads their metadata again by itself (a read, no embedding); the others keep
theirs.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STALE = "stale"  # never a state core.photometa.sidecar_state gives: the sidecars count as changed


def upgrade() -> None:
    op.add_column("image_keywords", sa.Column("display", sa.Text))
    op.execute(
        f"UPDATE images SET sidecars = '{STALE}' WHERE (sidecars IS NOT NULL AND sidecars <> '')"
        " OR id IN (SELECT image_id FROM image_keywords)"
    )


def downgrade() -> None:
    with op.batch_alter_table("image_keywords") as batch:
        batch.drop_column("display")
