"""Errors of the document-chat layer, with the HTTP status the API should answer."""

from __future__ import annotations


class RagError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
