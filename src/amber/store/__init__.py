"""Durable records: SQLAlchemy models, Alembic migrations, the catalog of templates, tags, aliases and claims."""
