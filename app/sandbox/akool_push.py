"""The simulator's side of Akool's push (SPEC §1): encrypt and sign a notice as Akool does.

Written on its own, from the documented algorithm, and importing nothing from the relay
(`app.akool_push` decodes): a mistake shared by encoder and decoder would make the round-trip tests
pass while real pushes fail. The known-answer tests check both sides against vectors made by openssl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def push_signature(client_id: str, timestamp: int | str, nonce: int | str, data_encrypt: str) -> str:
    """sha1(sort([clientId, timestamp, nonce, dataEncrypt]).join('')) in lower-case hex."""
    parts = sorted([client_id, str(timestamp), str(nonce), data_encrypt])
    return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()


def encrypt_data(data: dict[str, Any], client_id: str, client_secret: str) -> str:
    """Base64 of AES-CBC(PKCS#7(JSON)); key = the secret's bytes, IV = the id's first 16 bytes, NUL-padded."""
    key = client_secret.encode("utf-8")
    if len(key) not in (16, 24, 32):
        raise ValueError(f"client secret must be 16, 24 or 32 bytes, not {len(key)}")
    iv = client_id.encode("utf-8")[:16]
    iv += b"\0" * (16 - len(iv))
    padder = padding.PKCS7(128).padder()
    plaintext = padder.update(_stringify(data)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(plaintext) + encryptor.finalize()).decode("ascii")


def encrypt_push(
    data: dict[str, Any],
    client_id: str,
    client_secret: str,
    *,
    timestamp: int | None = None,
    nonce: int | None = None,
) -> dict[str, Any]:
    """The body Akool POSTs: `signature`, `dataEncrypt`, `timestamp` (epoch ms) and `nonce` (numbers)."""
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    nc = secrets.randbelow(9000) + 1000 if nonce is None else nonce
    data_encrypt = encrypt_data(data, client_id, client_secret)
    return {
        "signature": push_signature(client_id, ts, nc, data_encrypt),
        "dataEncrypt": data_encrypt,
        "timestamp": ts,
        "nonce": nc,
    }


def _stringify(data: dict[str, Any]) -> bytes:
    """JSON as Akool's Node.js server writes it (JSON.stringify): compact, non-ASCII left as is."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
