"""State: SQLite (WAL) through SQLAlchemy 2, schema managed by Alembic."""
