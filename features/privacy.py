"""Pseudonymisation of personal identifiers (privacy by design).

User, payment-instrument, device and IP identifiers never reach Redis, output topics,
logs or metrics in clear: they are replaced by a keyed hash,
``HMAC-SHA256(secret, kind + ":" + value)`` truncated to 128 bits (32 hex chars).
The ``kind`` prefix keeps equal strings of different kinds apart. Rotating the secret
(``PII_HMAC_SECRET``) unlinks all stored features from their people.

>>> p = Pseudonymiser("k")
>>> p("user", "42") == p("user", "42") != p("device", "42")
True
>>> len(p("user", "42"))
32
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymiser:
    def __init__(self, secret: str):
        if not secret:
            raise ValueError("PII_HMAC_SECRET must not be empty")
        self._key = secret.encode()

    def __call__(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]
