"""Raw documents: fetching (``fetch``), type detection (``detect``) and parsing into structured
text (``parse``), as libraries. The worker and ``add_source`` wire them in (docs/raw-documents.md).

Every failure is a :class:`RawDocumentError` with an ``error_class`` the worker can dead-letter
or retry by (``permanent``), and a ``scope``: ``"object"`` for one document, ``"source"`` for an
error that every document of the source would hit (a bucket the credentials cannot read), which
pauses the source the way a 401 pauses a model.
"""

from __future__ import annotations

from pgingest.raw.errors import RawDocumentError

__all__ = ["RawDocumentError"]
