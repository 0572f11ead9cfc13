"""instances: where the running task is reached (address) and its pid, as the runtime reports them

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("address", sa.String(300), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer, nullable=True))
    # Tasks recorded by the old code carry their server's pid and listen on the row's port on this
    # host's loopback: fill both in, so the edge keeps routing them until they are re-attached.
    op.execute("UPDATE instances SET address = '127.0.0.1:' || port, pid = json_extract(task, '$.pid') "
               "WHERE json_type(task) = 'object'")


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("pid")
        batch.drop_column("address")
