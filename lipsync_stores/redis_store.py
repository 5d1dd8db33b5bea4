"""Redis for several replicas (`REDIS_URL`): the connection, its failures as a typed 503, and the avatar store.

`RedisAvatarStore` behaves as the directory store (store.py) does — the same interface, ids, aliases,
least-recently-used eviction beyond a byte budget, extras counted in it — so any replica serves an
avatar registered on another. Keys (prefix `lipsync:`): `avatar:<id>` a hash (`meta`, `media`,
`extra:<name>`, `size` the sum of them), `avatars` a sorted set of ids by last use (a logical clock:
the replicas' clocks differ), `avatars:bytes` the running total, `alias:<name>` an id. A registration
and the evictions it causes are one Lua script: of two replicas registering the same avatar at once
exactly one creates it, and two registering different ones never evict each other both. The scripts
name the avatars they evict: a standalone Redis, not Redis Cluster.

The frame files of video avatars (wav2lip_core/frames.py: decoded frames, GBs) stay out of Redis: each machine
keeps its own in a local folder (`frames_root`, one folder per id), built on first use from the upload
in Redis, least recently used removed beyond the same byte budget. An avatar deleted or evicted here
loses its local files at once; other machines' copies go by their own LRU (they are never served:
every use looks the avatar up in Redis first).

A Redis that cannot be reached is `StoreUnavailable` (503, `Retry-After`), raised within the socket
timeout; redis-py reconnects on the next call, so the server recovers when Redis is back.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wav2lip_core.errors import AvatarNotFound, StoreUnavailable
from wav2lip_core.frames import FRAMES

from .store import Folders, check_alias, check_id, resolve_with

log = logging.getLogger(__name__)

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


# Every script starts with these, and is given KEYS: the avatar, the use order (a sorted set), the byte total.
_LIB = """
local function next_use()  -- above every avatar's last use: a logical clock, not the replicas' (they differ)
  local top = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return (tonumber(top[2]) or 0) + 1
end
local function remove(key, id)  -- the avatar and its place in the use order; the new total (nil if it was gone)
  redis.call('ZREM', KEYS[2], id)
  local size = redis.call('HGET', key, 'size')
  if not size then return nil end
  redis.call('UNLINK', key)
  return redis.call('DECRBY', KEYS[3], size)
end
"""
_PUT = """
-- ARGV: id, meta, media, budget, prefix of avatar keys → {1 if created else 0, evicted ids...}
redis.call('ZADD', KEYS[2], next_use(), ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'meta') == 1 then return {0} end
local size = #ARGV[2] + #ARGV[3]
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'media', ARGV[3], 'size', size)
local total, budget, evicted = redis.call('INCRBY', KEYS[3], size), tonumber(ARGV[4]), {1}
if total <= budget then return evicted end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do  -- least recently used first
  if total <= budget then break end
  local after = id ~= ARGV[1] and remove(ARGV[5] .. id, id)
  if after then
    total = after
    table.insert(evicted, id)
  end
end
return evicted
"""
_GET = """
local meta = redis.call('HGET', KEYS[1], 'meta')
if meta then redis.call('ZADD', KEYS[2], 'XX', next_use(), ARGV[1]) end
return meta
"""
_PUT_EXTRA = """
-- ARGV: field, data; 0 if the avatar is not there (never a hash of extras alone)
if redis.call('HEXISTS', KEYS[1], 'meta') == 0 then return 0 end
local grown = #ARGV[2] - redis.call('HSTRLEN', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'size', grown)
redis.call('INCRBY', KEYS[3], grown)
return 1
"""
_DELETE = "return remove(KEYS[1], ARGV[1]) and 1 or 0"


class RedisAvatarStore:
    """Registered avatars in Redis, shared by every replica, least recently used evicted beyond `max_bytes`."""

    def __init__(self, client: redis.Redis, max_bytes: int, frames_root: Path, prefix: str = "lipsync:"):
        self.r, self.max_bytes, self.p = client, max_bytes, prefix
        self.frames_root = frames_root
        self._frames = Folders(frames_root, max_bytes, FRAMES)  # this machine's frame files, by id
        self.order, self.total = f"{prefix}avatars", f"{prefix}avatars:bytes"
        scripts = (client.register_script(_LIB + s) for s in (_PUT, _GET, _PUT_EXTRA, _DELETE))
        self._put, self._get, self._put_extra, self._delete = scripts

    def _key(self, avatar_id: str) -> str:
        return f"{self.p}avatar:{check_id(avatar_id)}"

    def _keys(self, avatar_id: str) -> list[str]:
        """What every script is given: the avatar's key, then the store's own."""
        return [self._key(avatar_id), self.order, self.total]

    @unavailable
    def put(self, avatar_id: str, media: bytes, meta: dict[str, Any], frames: Path | None = None) -> bool:
        """Store once; False if it was already there (same id: same content and options). `frames`: a staged
        folder of its frame files, kept in this machine's cache."""
        args = [avatar_id, json.dumps(meta), media, self.max_bytes, f"{self.p}avatar:"]
        created, *evicted = self._put(keys=self._keys(avatar_id), args=args)
        for ident in evicted:
            log.info("avatar store over %d bytes: evicting %s (least recently used)", self.max_bytes, ident.decode())
            self._frames.remove(self.frames_dir(ident.decode()))
        if frames is not None:
            self.add_frames(avatar_id, frames)
        return bool(created)

    def frames_dir(self, avatar_id: str) -> Path:
        """The avatar's folder in this machine's frame cache, marked used."""
        folder = self.frames_root / check_id(avatar_id)
        self._frames.touch(folder)
        return folder

    def add_frames(self, avatar_id: str, staged: Path) -> None:
        """Keep frame files built in `staged` in this machine's cache: the whole folder renamed into place (a
        worker that did so first keeps its own, identical), then the least recently used beyond the budget removed."""
        folder = self.frames_root / check_id(avatar_id)
        if folder.exists():  # found unreadable (so rebuilt), or another worker's identical copy: replaced either way
            self._frames.remove(folder)
        try:
            staged.rename(folder)
        except OSError:
            if not (folder / FRAMES).is_file():  # not another worker's: a real failure
                raise
        self._frames.touch(folder)
        self._frames.evict(keep=avatar_id)

    @unavailable
    def get(self, avatar_id: str) -> dict[str, Any]:
        """The avatar's metadata (by id or alias), marking it used; AvatarNotFound if unknown (or evicted)."""
        ident = self.resolve(avatar_id)
        meta = self._get(keys=self._keys(ident), args=[ident])
        if meta is None:
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}: register it with POST /api/avatars")
        return json.loads(meta)

    @unavailable
    def media(self, avatar_id: str) -> bytes:
        data = self.r.hget(self._key(avatar_id), "media")
        if data is None:
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        return data

    @unavailable
    def extra(self, avatar_id: str, name: str) -> bytes | None:
        """A derived file kept with the avatar (e.g. its idle loop), or None if not made yet."""
        return self.r.hget(self._key(avatar_id), f"extra:{name}")

    @unavailable
    def put_extra(self, avatar_id: str, name: str, data: bytes) -> None:
        """Keep a derived file with the avatar, counted in its size; last writer wins, all write the same."""
        if not self._put_extra(keys=self._keys(avatar_id), args=[f"extra:{name}", data]):
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")

    @unavailable
    def alias(self, name: str, avatar_id: str) -> None:
        """Let `name` stand for the registered avatar `avatar_id`; naming another avatar so later repoints it."""
        check_alias(name)
        if not self.r.hexists(self._key(avatar_id), "meta"):
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        self.r.set(f"{self.p}alias:{name}", avatar_id)

    @unavailable
    def resolve(self, name: str) -> str:
        """The avatar id `name` stands for (store.resolve_with)."""
        return resolve_with(name, lambda i: bool(self.r.hexists(self._key(i), "meta")), self._alias_target)

    def _alias_target(self, name: str) -> str | None:
        target = self.r.get(f"{self.p}alias:{name}")
        return None if target is None else target.decode()

    @unavailable
    def list(self) -> list[dict[str, Any]]:
        """Every avatar's metadata, most recently used first."""
        ids = self.r.zrevrange(self.order, 0, -1)
        with self.r.pipeline(transaction=False) as pipe:  # one round trip, not one per avatar
            for ident in ids:
                pipe.hget(self._key(ident.decode()), "meta")
            metas = pipe.execute()
        return [json.loads(m) for m in metas if m is not None]  # None: deleted or evicted between the two calls

    @unavailable
    def delete(self, avatar_id: str) -> None:
        if not self._delete(keys=self._keys(avatar_id), args=[avatar_id]):
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        self._frames.remove(self.frames_root / avatar_id)
