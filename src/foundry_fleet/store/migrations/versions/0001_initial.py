"""initial schema: tenants, releases, instances, events

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("discord_id", sa.String(32), nullable=False, unique=True),
        sa.Column("display_name", sa.String(100)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("version", sa.String(20), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("build", sa.Integer, nullable=False),
        sa.Column("layout", sa.String(20), nullable=False),
        sa.Column("entry", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("zip_bytes", sa.Integer, nullable=False),
        sa.Column("unpacked_bytes", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("release_version", sa.String(20), sa.ForeignKey("releases.version"), nullable=False),
        sa.Column("port", sa.Integer, nullable=False, unique=True),
        sa.Column("uid", sa.Integer, unique=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("tenants.id")),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.Text, nullable=False),
        sa.Column("task", sa.JSON),
        sa.Column("restarts", sa.Integer, nullable=False),
        sa.Column("crash_times", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("target", sa.String(100), nullable=False, index=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in ("events", "instances", "releases", "tenants"):
        op.drop_table(table)
