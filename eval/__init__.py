"""Retrieval evaluation: the project's question set through the SQL API (``make eval``,
eval/README.md)."""
