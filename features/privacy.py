"""Pseudonymisation of personal identifiers (privacy by design).

User, payment-instrument, device and IP identifiers never reach Redis, output topics,
logs or metrics in clear: they are replaced by a keyed hash,
``HMAC-SHA256(secret, kind + ":" + value)`` truncated to 128 bits, in unpadded base64url: 22
characters of ``[A-Za-z0-9_-]`` (key-safe as they are; 32 hex characters would cost 10 bytes more
in every key of a person, ~6 bytes per click over the Taobao sample).
The ``kind`` prefix keeps equal strings of different kinds apart. Rotating the secret
(``PII_HMAC_SECRET``) unlinks all stored features from their people.

>>> p = Pseudonymiser("k")
>>> p("user", "42") == p("user", "42") != p("device", "42")
True
>>> len(p("user", "42"))
22
"""

from __future__ import annotations

import base64
import hmac
from functools import lru_cache

CACHED = 1 << 16  # pseudonyms kept per process: a batch of clicks repeats its users (an HMAC is ~2 us)


class Pseudonymiser:
    def __init__(self, secret: str):
        if not secret:
            raise ValueError("PII_HMAC_SECRET must not be empty")
        self._key = secret.encode()
        self._cached = lru_cache(maxsize=CACHED)(self._hash)

    def _hash(self, kind: str, value: str) -> str:
        # hmac.digest: the one-shot C path (~4x faster than hmac.new(...).digest(), the same bytes)
        digest = hmac.digest(self._key, f"{kind}:{value}".encode(), "sha256")[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def __call__(self, kind: str, value: str) -> str:
        return self._cached(kind, value)
