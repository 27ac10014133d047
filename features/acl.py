"""Redis ACL users: what each process may do, written once (docker-compose.yml repeats it; a test checks).

Every key streamscore uses starts with ``ss:`` (:mod:`features.keys`), so both users are confined
to ``~ss:*``, also inside Lua scripts (Redis checks a script's calls against the calling user).

* ``worker``: every command on those keys but the ``@dangerous`` ones (no ``FLUSHALL``, ``KEYS``,
  ``CONFIG``, ``DEBUG``, ``MONITOR``, ...), plus loading scripts.
* ``api`` (the HTTP service): reads only. Its commands are the ``@read`` ones, plus loading and
  running scripts: a script runs with its caller's permissions, command by command, so the
  feature-reading scripts work and any write inside a script (``SET``, ``ZADD``, ...) fails, as does
  every write command outside one. Its key pattern is ``~ss:*`` rather than read-only ``%R~ss:*``:
  the scripts declare their keys (one hash slot per call, :mod:`features.lua`) and Redis checks
  ``EVALSHA``'s declared keys as keys it may write. (``EVALSHA_RO`` would not do: the readers call
  ``PFCOUNT``, which Redis does not allow in read-only scripts.)

Both may run ``CLUSTER SLOTS`` (``worker`` through ``+@all``, ``api`` by name): on a Redis Cluster
(``REDIS_TOPOLOGY=cluster``) redis-py's cluster client reads the slot map with it before its first
command and again after every ``MOVED``; on one Redis the command only answers an error.

The default user is switched off in production (``default off``).

On a Redis Cluster (docker-compose.redis-cluster.yml) every node also has the two users of
:data:`CLUSTER_RULES`, never used by streamscore itself: ``admin`` forms the cluster (the one-shot
``redis-cluster-init``: ``redis-cli --cluster create``) and is the operators' account; ``replica`` is
what a replica logs in to its primary with (``masteruser``): replication's three commands only.

>>> " ".join(setuser_args("api", "pw"))
'api on >pw ~ss:* -@all +@read -@dangerous +@connection +select +evalsha +script|load +ping +cluster|slots'
"""

from __future__ import annotations

RULES: dict[str, tuple[str, ...]] = {
    "worker": ("~ss:*", "+@all", "-@dangerous", "+script|load", "+info"),
    "api": ("~ss:*", "-@all", "+@read", "-@dangerous", "+@connection", "+select", "+evalsha", "+script|load",
            "+ping", "+cluster|slots"),
}
# The Redis Cluster's own users (docker-compose.redis-cluster.yml), on every node.
CLUSTER_RULES: dict[str, tuple[str, ...]] = {
    "admin": ("~*", "&*", "+@all"),
    "replica": ("-@all", "+psync", "+replconf", "+ping"),
}


def setuser_args(user: str, password: str) -> list[str]:
    """The arguments of ``ACL SETUSER`` (and of a ``--user`` server option) for ``user``."""
    return [user, "on", f">{password}", *{**RULES, **CLUSTER_RULES}[user]]
