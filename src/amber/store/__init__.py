"""Durable records, and every SQL statement Amber runs: ``catalog`` (templates, tags, aliases, claims, refs),
``builds`` (build rows, log entries, queue claims and leases), ``keys`` (API keys, hashed at rest; ``Caller``),
``blobs`` (blob records), ``models`` and Alembic ``migrations``; SQLite by default, PostgreSQL for many hosts.
Knows nothing of HTTP; each function takes an open session that its caller commits."""
