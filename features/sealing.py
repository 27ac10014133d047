"""Sealed state: what a worker writes to Redis to load back later is signed, and checked first.

River checkpoints (``ss:g:ckpt:*``) and each item's pricing bandit (the ``model`` field of
``ss:i:{item}:bandit``) are Python objects serialised with :mod:`pickle`, and unpickling runs
code. So whoever can write one Redis key would run code in every worker and HTTP service that
reads it. A :class:`Sealer` closes that: every stored state is

    MAGIC | HMAC-SHA256(STATE_HMAC_SECRET, MAGIC | purpose | 0x00 | payload) | payload

and :meth:`Sealer.open` checks the tag (constant time) before anything parses the payload. The
key lives in the environment of the processes, never in Redis. ``purpose`` names the place the
state belongs to (``checkpoint:fraud-online``, ``bandit:<item>``), so a state signed for one
place is refused in another (no bandit state loaded as a fraud model, no item's bandit moved to
another item). What this does not stop: someone holding the key, or rolling a place back to an
older state that was signed for it.

A refused state is never parsed; the caller counts it
(``streamscore_state_refused_total{state,reason}``) and goes on with what it has (a fresh model,
the model already loaded).

>>> s = Sealer("k" * 32)
>>> blob = s.seal("checkpoint:fraud-online", b"state")
>>> s.open("checkpoint:fraud-online", blob)
b'state'
>>> s.open("bandit:i1", blob)
Traceback (most recent call last):
...
features.sealing.RefusedState: bad_signature
>>> Sealer("another key, as long as the first").open("checkpoint:fraud-online", blob)
Traceback (most recent call last):
...
features.sealing.RefusedState: bad_signature
>>> s.open("checkpoint:fraud-online", b"\\x80\\x04unsigned pickle")
Traceback (most recent call last):
...
features.sealing.RefusedState: unsigned
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"ss-seal1"
TAG_BYTES = 32  # SHA-256
REASONS = ("unsigned", "bad_signature")  # values of the refusal metric's ``reason`` label


class RefusedState(Exception):
    """A stored state whose signature is missing or wrong: never parsed. ``reason`` in :data:`REASONS`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Sealer:
    def __init__(self, secret: str):
        if not secret:
            raise ValueError("STATE_HMAC_SECRET must not be empty")
        self._key = secret.encode()

    def _tag(self, purpose: str, payload: bytes) -> bytes:
        return hmac.new(self._key, MAGIC + purpose.encode() + b"\x00" + payload, hashlib.sha256).digest()

    def seal(self, purpose: str, payload: bytes) -> bytes:
        """``payload`` signed for ``purpose`` (the place it is stored)."""
        return MAGIC + self._tag(purpose, payload) + payload

    def open(self, purpose: str, blob: bytes) -> bytes:
        """The payload of ``blob`` if it was sealed for ``purpose`` with this key; else :class:`RefusedState`."""
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + TAG_BYTES:
            raise RefusedState("unsigned")
        tag, payload = blob[len(MAGIC):len(MAGIC) + TAG_BYTES], blob[len(MAGIC) + TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(purpose, payload)):
            raise RefusedState("bad_signature")
        return payload
