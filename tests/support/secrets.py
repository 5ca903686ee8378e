"""The distinctive secrets the test_secrets_*.py files look for (issue 3 item 7)."""

from __future__ import annotations

import base64

API_KEY = "akool-key-SENTINEL-1"
TOKENS = ("tok-SENTINEL-2", "tok-SENTINEL-3")
ADMIN_TOKEN = "adm-SENTINEL-7"
CLIENT_ID = "client-id-public"  # an identifier, not a secret
CLIENT_SECRET = "cs-SENTINEL-4"
WEBHOOK_KEY = b"SENTINEL-5 webhook signing key!!"  # 32 bytes of key material
WEBHOOK_B64 = base64.b64encode(WEBHOOK_KEY).decode()
WEBHOOK_SECRET = "whsec_" + WEBHOOK_B64

SECRETS = [
    API_KEY,
    *TOKENS,
    ADMIN_TOKEN,
    CLIENT_SECRET,
    WEBHOOK_SECRET,
    WEBHOOK_B64,
    WEBHOOK_B64.rstrip("="),
    WEBHOOK_KEY.decode(),
    base64.urlsafe_b64encode(WEBHOOK_KEY).decode(),
    "SENTINEL",  # every secret above carries it; nothing else in these runs does
]
