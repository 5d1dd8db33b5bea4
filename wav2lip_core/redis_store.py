"""Redis for several replicas (`REDIS_URL`): the connection, its failures as a typed 503, and the avatar store.

`RedisAvatarStore` behaves as the directory store (store.py) does — the same interface, ids, aliases,
least-recently-used eviction beyond a byte budget — so any replica serves an avatar registered on
another. Keys (prefix `lipsync:`): `avatar:<id>` a hash (`meta`, `media`, `extra:<name>`, `size`),
`avatars` a sorted set of ids by last use, `avatars:bytes` the running total, `alias:<name>` an id.
A registration is one Lua script: of two replicas registering the same avatar at once, exactly one
creates it.

A Redis that cannot be reached is `StoreUnavailable` (503, `Retry-After`), raised within the socket
timeouts; redis-py reconnects on the next call, so the server recovers when Redis is back.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import AvatarNotFound, StoreUnavailable
from .store import NAME, check_alias, check_id

SOCKET_TIMEOUT_S = 5.0  # a command that takes longer: Redis is stuck or gone
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_S = 10  # a connection idle this long is PINGed before use
RETRY_AFTER_S = 2
# Unreachable, stalled, loading its data, a read-only replica, full (maxmemory): the request may succeed later
OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, redis.OutOfMemoryError)
P = ParamSpec("P")
T = TypeVar("T")


class HasClient(Protocol):
    """What `unavailable` decorates the methods of: an object holding its Redis client as `r`."""

    r: redis.Redis


S = TypeVar("S", bound=HasClient)


def connect(url: str, timeout_s: float = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for `url` (it connects on first use: a Redis down at start fails only the requests that need it)."""
    # One immediate retry of a dropped connection (after a Redis restart every pooled one is); never of a
    # timeout: Redis is stalled, and a retry would only double the wait before the 503.
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
        health_check_interval=HEALTH_CHECK_S, retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )  # fmt: skip


def where(client: redis.Redis) -> str:
    """The client's server as a URL without its credentials, for messages."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    scheme = "rediss" if issubclass(client.connection_pool.connection_class, redis.SSLConnection) else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def unavailable(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Decorate a method of an object with a Redis client `r`: an outage of that Redis → `StoreUnavailable`, said plainly."""

    @functools.wraps(method)
    def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except OUTAGES as e:
            raise StoreUnavailable(
                f"the shared store (Redis at {where(self.r)}) is unavailable: {type(e).__name__}: {e}; retry shortly "
                "(operators: is Redis up, writable and below maxmemory, and REDIS_URL right?)",
                retry_after=RETRY_AFTER_S,
            ) from e

    return wrapper


_PUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]); return 0
end
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'media', ARGV[3], 'size', string.len(ARGV[2]) + string.len(ARGV[3]))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('INCRBY', KEYS[3], string.len(ARGV[2]) + string.len(ARGV[3]))
return 1
"""
_DELETE = """
local size = redis.call('HGET', KEYS[1], 'size')
if not size then return 0 end
redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[1]); redis.call('DECRBY', KEYS[3], size)
return 1
"""


class RedisAvatarStore:
    """Registered avatars in Redis, shared by every replica, least recently used evicted beyond `max_bytes`."""

    def __init__(self, client: redis.Redis, max_bytes: int, prefix: str = "lipsync:"):
        self.r, self.max_bytes, self.p = client, max_bytes, prefix
        self.lru, self.total = f"{prefix}avatars", f"{prefix}avatars:bytes"
        self._put, self._delete = client.register_script(_PUT), client.register_script(_DELETE)

    def _key(self, avatar_id: str) -> str:
        return f"{self.p}avatar:{check_id(avatar_id)}"

    @unavailable
    def put(self, avatar_id: str, media: bytes, meta: dict[str, Any]) -> bool:
        created = bool(self._put(keys=[self._key(avatar_id), self.lru, self.total], args=[avatar_id, json.dumps(meta), media, time.time()]))
        if created:
            self._evict(keep=avatar_id)
        return created

    @unavailable
    def get(self, avatar_id: str) -> dict[str, Any]:
        ident = self.resolve(avatar_id)
        meta = self.r.hget(self._key(ident), "meta")
        if meta is None:
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}: register it with POST /api/avatars")
        self.r.zadd(self.lru, {ident: time.time()}, xx=True)
        return json.loads(meta)

    @unavailable
    def media(self, avatar_id: str) -> bytes:
        data = self.r.hget(self._key(avatar_id), "media")
        if data is None:
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        return data

    @unavailable
    def extra(self, avatar_id: str, name: str) -> bytes | None:
        return self.r.hget(self._key(avatar_id), f"extra:{name}")

    @unavailable
    def put_extra(self, avatar_id: str, name: str, data: bytes) -> None:
        key = self._key(avatar_id)
        if not self.r.exists(key):
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        self.r.hset(key, f"extra:{name}", data)  # derived data: not counted against the budget, as on disk it is small

    @unavailable
    def alias(self, name: str, avatar_id: str) -> None:
        check_alias(name)
        if not self.r.exists(self._key(avatar_id)):
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        self.r.set(f"{self.p}alias:{name}", avatar_id)

    @unavailable
    def resolve(self, name: str) -> str:
        if not NAME.match(name):
            return name
        if name.isalnum() and self.r.exists(f"{self.p}avatar:{name}"):
            return name
        target = self.r.get(f"{self.p}alias:{name}")
        return target.decode() if target is not None else name

    @unavailable
    def list(self) -> list[dict[str, Any]]:
        ids = [i.decode() for i in self.r.zrevrange(self.lru, 0, -1)]
        metas = [self.r.hget(self._key(i), "meta") for i in ids]
        return [json.loads(m) for m in metas if m is not None]

    @unavailable
    def delete(self, avatar_id: str) -> None:
        if not self._delete(keys=[self._key(avatar_id), self.lru, self.total], args=[avatar_id]):
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")

    def _evict(self, keep: str) -> None:
        """The least recently used avatars go while the total is over budget; never the one just registered."""
        for ident in (i.decode() for i in self.r.zrange(self.lru, 0, -1)):
            if int(self.r.get(self.total) or 0) <= self.max_bytes:
                return
            if ident != keep:
                self._delete(keys=[self._key(ident), self.lru, self.total], args=[ident])
