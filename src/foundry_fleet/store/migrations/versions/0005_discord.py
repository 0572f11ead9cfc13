"""invites, code failures, setup wizards, sign-in sessions and tickets, notifications; suspended instances

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("suspended_reason", sa.Text, nullable=True))
    op.create_table(
        "invites",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("discord_user_id", sa.String(32), nullable=True),
        sa.Column("code_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
        sa.Column("used_by", sa.String(32), nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_invites_discord_user_id", "invites", ["discord_user_id"])
    op.create_table(
        "code_failures",
        sa.Column("discord_user_id", sa.String(32), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("first_at", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
    )
    op.create_table(
        "wizards",
        sa.Column("discord_user_id", sa.String(32), primary_key=True),
        sa.Column("invite_id", sa.Integer, sa.ForeignKey("invites.id"), nullable=False),
        sa.Column("step", sa.String(20), nullable=False),
        sa.Column("instance_name", sa.String(63), nullable=True),
        sa.Column("release_version", sa.String(20), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("discord_user_id", sa.String(32), nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_web_sessions_discord_user_id", "web_sessions", ["discord_user_id"])
    op.create_table(
        "used_tickets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_used_tickets_expires_at", "used_tickets", ["expires_at"])
    op.create_table(
        "notifications",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("last_sent_at", sa.Float, nullable=False),
        sa.Column("suppressed", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("notifications", "used_tickets", "web_sessions", "wizards", "code_failures", "invites"):
        op.drop_table(table)
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("suspended_reason")
