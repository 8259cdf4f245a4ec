"""Contract schemas (pydantic) for the template API."""
