"""pgingest: embedding ingestion pipeline in PostgreSQL."""

__version__ = "0.1.0"
