"""Dead letters that keep no personal data in clear, and the operator's tools to read and replay them.

A rejected input message becomes one :class:`~streamscore.events.DeadLetter` on the dead-letter
topic. The original may be anything (not JSON, cut, hostile) and holds user, card, device and IP
values, so a dead letter carries:

* ``key``: the pseudonym of the original message key, ``HMAC(PII_HMAC_SECRET, "key:" + key)``
  (:class:`features.privacy.Pseudonymiser`); also the Kafka key of the dead-letter record, so the
  letters of one key stay on one partition and in order. ``list --key RAW`` finds them.
* ``original_enc`` / ``key_enc``: the original bytes (up to ``DEAD_LETTER_MAX_ORIGINAL_BYTES``) and
  key, encrypted with ``DEAD_LETTER_KEY`` (Fernet: AES-128-CBC + HMAC-SHA256, from the
  ``cryptography`` package; the Fernet key is SHA-256 of a label and the secret). Only an operator
  holding the key can read or replay them.
* ``original_redacted``: for triage without the key, a JSON-object original with every personal
  field (:data:`PERSONAL_FIELDS`, at any depth) replaced by ``"<encrypted>"``, cut to
  :data:`REDACTED_MAX_CHARS`; empty for an original that is not a JSON object (it could hold
  anything).
* ``reason``, ``error``, ``original_size``, ``original_sha256``, ``original_truncated`` as before.

``streamscore dead-letters list|show|replay`` (:func:`main`): list letters (filters: topic,
reason, key), show one decrypted, and re-publish selected originals to their topic with their
original key once the cause is fixed (never a cut original).

>>> letters = DeadLetters(Settings(dead_letter_key="k" * 32, pii_secret="p" * 32))
>>> raw = b'{"order_id": "o1", "user_id": "alice", "ip": "10.0.0.1", "amount": "5"}'
>>> d = letters.record("orders", 0, 7, b"alice", raw, InvalidEvent("invalid", "amount: not a number"))
>>> b"alice" in d.to_bytes() or b"10.0.0.1" in d.to_bytes()
False
>>> d.original_redacted
'{"order_id": "o1", "user_id": "<encrypted>", "ip": "<encrypted>", "amount": "5"}'
>>> letters.original(d) == raw, letters.original_key(d)
(True, b'alice')
>>> d.key == letters.pseudonym(b"alice")
True
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from typing import Iterable, Sequence

from cryptography.fernet import Fernet, InvalidToken

from features.privacy import Pseudonymiser
from streamscore.events import DeadLetter, InvalidEvent
from streamscore.settings import Settings

# Fields of input events that identify a person (or their card, device, address); the rest
# (ids of orders and items, amounts, times, actions) is kept readable in ``original_redacted``.
PERSONAL_FIELDS = frozenset({"user_id", "payment_fingerprint", "device_id", "ip", "shipping_country",
                             "account_created_at", "email", "name", "address", "phone"})
REDACTED = "<encrypted>"
REDACTED_MAX_CHARS = 2048
MAX_DEAD_LETTER_ERROR = 2000  # characters of the error message kept


def _text(s: str) -> str:
    """``s`` safe to encode as UTF-8 (an error message may quote a hostile field name: lone surrogates escaped).

    >>> _text("bad field " + chr(0xdc8b))
    'bad field \\\\udc8b'
    """
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


class DeadLetterKeyError(ValueError):
    """A dead letter's encrypted part does not open with this ``DEAD_LETTER_KEY``."""


def _redact(value, depth: int = 0):
    if depth > 20:
        return REDACTED
    if isinstance(value, dict):
        return {k: REDACTED if k in PERSONAL_FIELDS else _redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    return value


def redacted(raw: bytes, limit: int = REDACTED_MAX_CHARS) -> str:
    """``raw`` with its personal fields replaced, if it is a JSON object; else ``""``.

    >>> redacted(b'{"user_id": "u", "items": [{"item_id": "i", "device_id": "d"}]}')
    '{"user_id": "<encrypted>", "items": [{"item_id": "i", "device_id": "<encrypted>"}]}'
    >>> redacted(b"not json, maybe a card number"), redacted(b'["a list"]'), len(redacted(b'{"a": "' + b"x" * 5000 + b'"}'))
    ('', '', 2048)
    """
    if len(raw) > 4 * 65536:  # parsing is bounded: a larger original stays encrypted only
        return ""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(value, dict):
        return ""
    try:
        return json.dumps(_redact(value))[:limit]  # ASCII: a lone surrogate stays an escape, never breaks the record
    except (ValueError, RecursionError):
        return ""


class DeadLetters:
    """Builds dead-letter records (encrypting, pseudonymising) and opens them again (the key's holder)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        key = settings.dead_letter_key.get_secret_value().encode()
        digest = hashlib.sha256(b"streamscore dead letters v1\x00" + key).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._pseudo = Pseudonymiser(settings.pii_secret.get_secret_value())

    def pseudonym(self, key: bytes | None) -> str | None:
        """The ``key`` field of a dead letter for an original keyed ``key``: the pseudonym of the key
        as text, or of its hex form (a kind of its own) when it is not UTF-8, so any bytes have one.

        >>> p = DeadLetters(Settings()).pseudonym
        >>> p(b"alice") == p(b"alice") != p(b"bob"), len(p(b"\\x8b\\xff")), p(b"\\x8b") != p(b"8b")
        (True, 22, True)
        """
        if key is None:
            return None
        try:
            return self._pseudo("key", key.decode("utf-8"))
        except UnicodeDecodeError:
            return self._pseudo("key-bytes", key.hex())

    def record(self, topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None,
               error: Exception, max_original_bytes: int = 65536) -> DeadLetter:
        """The dead letter of one rejected message, cut to ``max_original_bytes`` of original so that
        it always fits the topic.

        >>> d = DeadLetters(Settings()).record("orders", 0, 7, b"k" * 1000, b"x" * 5000,
        ...                                    InvalidEvent("oversized", "too big"), 100)
        >>> len(DeadLetters(Settings()).original(d)), d.original_size, d.original_truncated, d.reason
        (100, 5000, True, 'oversized')
        >>> d.original_sha256 == hashlib.sha256(b"x" * 5000).hexdigest(), len(d.to_bytes()) < 1000
        (True, True)
        """
        raw = raw or b""
        kept = raw[:max_original_bytes]
        return DeadLetter(
            topic=topic, partition=partition, offset=offset,
            key=self.pseudonym(key),
            reason=error.reason if isinstance(error, InvalidEvent) else "processing_error",
            error=_text(str(error))[:MAX_DEAD_LETTER_ERROR],
            original_enc=self._fernet.encrypt(kept).decode(),
            key_enc="" if key is None else self._fernet.encrypt(key[:max_original_bytes]).decode(),
            original_redacted=redacted(kept),
            original_size=len(raw),
            original_sha256=hashlib.sha256(raw).hexdigest(),
            original_truncated=len(raw) > max_original_bytes,
            ts=time.time(),
        )

    def _open(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken:
            raise DeadLetterKeyError("this DEAD_LETTER_KEY does not open the dead letter (another key wrote it, "
                                     "or it was altered)") from None

    def original(self, d: DeadLetter) -> bytes:
        """The original bytes (as kept: cut when ``original_truncated``)."""
        return self._open(d.original_enc)

    def original_key(self, d: DeadLetter) -> bytes | None:
        return self._open(d.key_enc) if d.key_enc else None


# --- streamscore dead-letters list | show | replay --------------------------------------------

def _read(settings: Settings, limit_s: float) -> list:
    from streamscore.topics import read_topic

    return read_topic(settings, settings.topic_dead_letter, idle_s=1.0, limit_s=limit_s)


def _select(messages: Iterable, letters: DeadLetters, topic: str | None, reason: str | None, key: str | None,
            at: Sequence[str] = ()) -> list[tuple[str, DeadLetter]]:
    """``[(partition:offset on the dead-letter topic, record)]`` matching every filter given."""
    want_key = letters.pseudonym(key.encode()) if key is not None else None
    out = []
    for m in messages:
        where = f"{m.partition()}:{m.offset()}"
        try:
            d = DeadLetter.model_validate_json(m.value())
        except ValueError:
            continue  # not one of ours
        if (topic and d.topic != topic) or (reason and d.reason != reason) or \
                (want_key is not None and d.key != want_key) or (at and where not in at):
            continue
        out.append((where, d))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    for name, help_ in (("list", "one line per dead letter (no personal data: pseudonymised key, redacted original)"),
                        ("show", "dead letters with their original decrypted (needs DEAD_LETTER_KEY)"),
                        ("replay", "re-publish the selected originals to their topics, with their original keys")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("--topic", help="only letters of this input topic")
        q.add_argument("--reason", help="only letters with this reason (e.g. invalid, too_late)")
        q.add_argument("--key", help="only letters of originals with this message key (compared as its pseudonym)")
        q.add_argument("--at", default="", help="only these, as PARTITION:OFFSET of the dead-letter topic, comma-separated")
        q.add_argument("--limit", type=int, default=50 if name != "replay" else 0, help="at most this many (0: all)")
        q.add_argument("--read-s", type=float, default=60.0, help="longest to read the dead-letter topic (seconds)")
        if name == "replay":
            q.add_argument("--dry-run", action="store_true", help="say what would be re-published, publish nothing")


def run(args: argparse.Namespace, settings: Settings, out=sys.stdout) -> int:
    letters = DeadLetters(settings)
    at = [a.strip() for a in args.at.split(",") if a.strip()]
    chosen = _select(_read(settings, args.read_s), letters, args.topic, args.reason, args.key, at)
    if args.limit:
        chosen = chosen[:args.limit]
    if args.action == "list":
        print("at\ttopic\tpartition:offset\treason\tkey pseudonym\tbytes\terror", file=out)
        for where, d in chosen:
            print(f"{where}\t{d.topic}\t{d.partition}:{d.offset}\t{d.reason}\t{d.key or '-'}\t{d.original_size}"
                  f"{' (cut)' if d.original_truncated else ''}\t{d.error[:120]}", file=out)
        print(f"{len(chosen)} dead letter(s)", file=sys.stderr)
        return 0
    try:
        opened = [(where, d, letters.original_key(d), letters.original(d)) for where, d in chosen]
    except DeadLetterKeyError as exc:
        print(f"streamscore dead-letters: {exc}", file=sys.stderr)
        return 2
    if args.action == "show":
        for where, d, key, original in opened:
            print(json.dumps({"at": where, **d.model_dump(exclude={"original_enc", "key_enc"}),
                              "original_key": None if key is None else key.decode("utf-8", "replace"),
                              "original": original.decode("utf-8", "replace")}, ensure_ascii=False), file=out)
        return 0
    return _replay(settings, opened, args.dry_run, out)


def _replay(settings: Settings, opened: list, dry_run: bool, out) -> int:
    """Re-publish whole originals; a cut one cannot be replayed (its bytes are gone) and is reported."""
    from confluent_kafka import Producer

    whole = [(w, d, k, o) for w, d, k, o in opened if not d.original_truncated]
    for w, d, _, _ in opened:
        if d.original_truncated:
            print(f"{w}: not replayed: the original was cut ({d.original_size} bytes, kept "
                  f"{settings.dead_letter_max_original_bytes})", file=out)
    if dry_run:
        for w, d, _, _ in whole:
            print(f"{w}: would re-publish {d.original_size} bytes to {d.topic}", file=out)
        return 0
    producer = Producer(settings.kafka_client_config(**{"acks": "all", "linger.ms": 5}))
    failed: list[str] = []
    for w, d, key, original in whole:
        producer.produce(d.topic, key=key, value=original,
                         on_delivery=lambda err, _m, w=w: failed.append(f"{w}: {err}") if err else None)
        producer.poll(0)
    left = producer.flush(30)
    for f in failed:
        print(f"not re-published: {f}", file=out)
    print(f"re-published {len(whole) - len(failed) - left} of {len(opened)} selected dead letter(s)", file=out)
    return 1 if failed or left else 0
