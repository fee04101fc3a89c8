"""Durable storage: the spool of received files and the index (SQLite by default, PostgreSQL)."""
