"""instances: their own idle time before sleeping, and since when they have been idle

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
    # NULL: every existing instance follows [instances] idle_after, which is off until it is set.
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("idle_after", sa.Float(), nullable=True))
        batch.add_column(sa.Column("idle_since", sa.Float(), nullable=True))


def downgrade() -> None:
    # The older schema has no sleeping state: a sleeping instance becomes a stopped one that is to run,
    # which the older daemon starts.
    op.execute("UPDATE instances SET state = 'stopped' WHERE state = 'sleeping'")
    # In place (SQLite >= 3.35 drops columns itself): re-creating the table would delete, by their
    # ON DELETE CASCADE, the rows that refer to its instances (a journalled move).
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.drop_column("idle_since")
        batch.drop_column("idle_after")
