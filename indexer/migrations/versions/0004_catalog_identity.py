"""A key/value ``meta`` table holding the catalog's identity: a random ``catalog_id``.

Index versions record the id of the catalog they were built from, so a reader can tell when the
catalog beside an index is another one (deleted and recreated, replaced, restored elsewhere).
Existing catalogs get a new id here.

Revision ID: 0004
Revises: 0003
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "catalog_id", "value": uuid.uuid4().hex}])


def downgrade() -> None:
    op.drop_table("meta")
