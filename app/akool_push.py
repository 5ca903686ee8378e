"""Decoding Akool's own webhook (SPEC §1, §7): verify the signature, then decrypt `dataEncrypt`.

A push is only a hint, never a fact: its signature is a plain SHA-1 of public values (client id,
timestamp, nonce, ciphertext) with no secret in it, so anyone who saw one push can send it again,
and only the poll that follows decides anything. The encryption does use the secret, but an
attacker can replay old ones. The route answers one fixed message per status (400 for every
`MalformedPush`, 401 for `BadSignature`: no padding oracle), and nothing here touches state.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ENVELOPE_FIELDS = ("signature", "dataEncrypt", "timestamp", "nonce")
KEY_SIZES = (16, 24, 32)
MALFORMED_MESSAGE = "not a valid Akool push"
BAD_SIGNATURE_MESSAGE = "bad signature"


class MalformedPush(Exception):
    """Not the envelope, or it does not decrypt to a notice. Always the same message (answer 400)."""

    def __init__(self) -> None:
        super().__init__(MALFORMED_MESSAGE)


class BadSignature(Exception):
    """The envelope's signature does not match its contents (answer 401)."""

    def __init__(self) -> None:
        super().__init__(BAD_SIGNATURE_MESSAGE)


class PushConfigError(ValueError):
    """The client id / secret cannot decrypt pushes at all (raised once, at start)."""


@dataclass(frozen=True)
class PushNotice:
    """A decrypted push. Every field but the id may be None; `raw` is the whole plaintext object."""

    video_model_id: str
    status: int | None
    type: str | None
    url: str | None
    progress: int | None
    error_code: int | None
    error_reason: str | None
    raw: dict[str, Any]


def signature(client_id: str, timestamp: int | str, nonce: int | str, data_encrypt: str) -> str:
    """Lower-case hex SHA-1 of the four values in str() form, sorted and concatenated."""
    joined = "".join(sorted(str(v) for v in (client_id, timestamp, nonce, data_encrypt)))
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PushKeys:
    """The client id and the AES key/IV derived from it and the secret; build once with `of`."""

    client_id: str
    key: bytes
    iv: bytes

    @classmethod
    def of(cls, client_id: str, client_secret: str) -> PushKeys:
        if not client_id:
            raise PushConfigError("AKOOL_CLIENT_ID is empty")
        key = client_secret.encode("utf-8")
        if len(key) not in KEY_SIZES:
            raise PushConfigError(f"the Akool client secret must be 16, 24 or 32 bytes long, not {len(key)}")
        return cls(client_id, key, client_id.encode("utf-8")[:16].ljust(16, b"\0"))

    def decode(self, body: bytes) -> PushNotice:
        """Parse the envelope (MalformedPush), check the signature (BadSignature), then decrypt."""
        try:
            envelope = json.loads(body)
        except (ValueError, RecursionError):
            raise MalformedPush() from None
        if not isinstance(envelope, dict) or not all(k in envelope for k in ENVELOPE_FIELDS):
            raise MalformedPush()
        sig, data, timestamp, nonce = (envelope[k] for k in ENVELOPE_FIELDS)
        if not (isinstance(sig, str) and isinstance(data, str) and _scalar(timestamp) and _scalar(nonce)):
            raise MalformedPush()
        expected = signature(self.client_id, timestamp, nonce, data)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise BadSignature()
        return _notice(self._decrypt(data))

    def _decrypt(self, data: str) -> Any:
        try:
            ciphertext = base64.b64decode(data, validate=True)
            decryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).decryptor()
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            plaintext = unpadder.update(padded) + unpadder.finalize()
            return json.loads(plaintext.decode("utf-8"))
        except (ValueError, TypeError, binascii.Error, RecursionError):
            raise MalformedPush() from None


def decode_push(body: bytes, client_id: str, client_secret: str) -> PushNotice:
    """One-off `PushKeys.of(client_id, client_secret).decode(body)`; a long-lived route keeps its PushKeys."""
    return PushKeys.of(client_id, client_secret).decode(body)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _notice(obj: Any) -> PushNotice:
    if not isinstance(obj, dict):
        raise MalformedPush()
    vid = obj.get("_id")
    if not (_scalar(vid) and str(vid)):
        raise MalformedPush()
    status = _int(obj.get("status"))
    return PushNotice(
        video_model_id=str(vid),
        status=status if status is not None else _int(obj.get("video_status")),
        type=_str(obj.get("type")),
        url=_str(obj.get("url")),
        progress=_int(obj.get("progress")),
        error_code=_int(obj.get("error_code")),
        error_reason=_str(obj.get("error_reason")),
        raw=obj,
    )


def _int(value: Any) -> int | None:
    """An int from an int, a finite float (truncated) or a numeric string; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 20:
        with contextlib.suppress(ValueError):
            return int(value)
    return None


def _str(value: Any) -> str | None:
    """A non-empty string (numbers in str() form); anything else is None."""
    if isinstance(value, str):
        return value or None
    return str(value) if _scalar(value) else None
