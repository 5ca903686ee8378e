"""Opaque paging cursors: sealed (Fernet: AES-CBC with an HMAC) so they reveal no row id and cannot be
forged, and bound to the caller's scope so one tenant's cursor never pages another's jobs (SPEC §3)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

NOT_OURS = "not a cursor this service issued"


def new_key() -> str:
    return Fernet.generate_key().decode()


class Cursors:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, scope: str, row_id: int) -> str:
        return self._fernet.encrypt(f"{scope}:{row_id}".encode()).decode()

    def open(self, scope: str, cursor: str) -> int:
        """The row id a cursor points past; ValueError when it is not ours, or not for this scope."""
        try:
            raw = self._fernet.decrypt(cursor.encode()).decode()
        except (InvalidToken, UnicodeError, ValueError):
            raise ValueError(NOT_OURS) from None
        sealed_scope, _, number = raw.rpartition(":")
        if sealed_scope != scope or not number.isdigit():
            raise ValueError(NOT_OURS)
        return int(number)
