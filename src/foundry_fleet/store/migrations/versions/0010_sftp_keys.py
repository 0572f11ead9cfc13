"""sftp_keys: the public keys that may sign in over SFTP as an instance

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sftp_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        # A deleted instance's keys go with it: a new instance of the same name must not inherit them.
        sa.Column("instance", sa.String(63), sa.ForeignKey("instances.name", ondelete="CASCADE"), nullable=False),
        sa.Column("fingerprint", sa.String(100), nullable=False),
        sa.Column("key_type", sa.String(40), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("added_by", sa.String(100), nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.UniqueConstraint("instance", "fingerprint"),
    )


def downgrade() -> None:
    # IF EXISTS: SQLite's DDL is not rolled back with the version, so a downgrade an older migration
    # refused further down comes here again with the table already gone.
    op.execute("DROP TABLE IF EXISTS sftp_keys")
