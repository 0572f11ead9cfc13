"""replication: per instance and backup destination, the newest snapshot it holds and the last attempt

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replication",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance", sa.String(63), nullable=False),
        sa.Column("destination", sa.String(40), nullable=False),
        sa.Column("last_snapshot", sa.Text, nullable=True),
        sa.Column("last_snapshot_at", sa.Float, nullable=True),
        sa.Column("last_sync_at", sa.Float, nullable=True),
        sa.Column("last_attempt_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("bytes_sent", sa.Integer, nullable=False),
        sa.UniqueConstraint("instance", "destination"),
    )
    op.create_index("ix_replication_instance", "replication", ["instance"])


def downgrade() -> None:
    op.drop_index("ix_replication_instance", "replication")
    op.drop_table("replication")
