"""instances: the home holding each one's data; moves: the journal of moves between homes under way

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing instances keep their data in the fleet's own home (NULL = "fleet").
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("home", sa.String(40), nullable=True))
    op.create_table(
        "moves",
        sa.Column("instance", sa.String(63), sa.ForeignKey("instances.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("source_home", sa.String(40), nullable=False),
        sa.Column("target_home", sa.String(40), nullable=False),
        sa.Column("source_node", sa.String(255), nullable=True),
        sa.Column("target_node", sa.String(255), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("was_running", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # A move under way would be lost with its journal: refused rather than leave an instance's data
    # half copied with nothing saying so.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM moves")).scalar():
        raise RuntimeError("a move between homes is under way: start the daemon once (it finishes or rolls "
                           "it back), then downgrade")
    away = bind.execute(sa.text("SELECT name FROM instances WHERE home IS NOT NULL AND home != 'fleet'")).scalars()
    if names := list(away):
        raise RuntimeError(f"instances {', '.join(names)} keep their data in homes of their own, which the older "
                           "schema cannot say: move them to the fleet's own home first")
    op.drop_table("moves")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("home")
