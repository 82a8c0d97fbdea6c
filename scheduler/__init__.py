"""DB-backed beat scheduler."""
