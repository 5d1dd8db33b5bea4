"""Registered avatars on disk, shared by every gunicorn worker of one machine (`AVATAR_DIR`).

One folder per avatar: `media` (the upload, as sent), `meta.json` (kind, size, fps, per-frame
face boxes, options) and, for a video, its frame files (wav2lip_core/frames.py: the decoded frames and face
inputs, mapped by every worker). A registration is written into a private temporary folder and
renamed into place: `rename(2)` of a folder is atomic, so readers never see half an avatar, and when
two workers register the same avatar at once exactly one rename wins and the other finds it there.
Reading an avatar touches its `meta.json`, so eviction (over `max_bytes`, frame files counted)
removes the least recently used, frame files and all.

The interface is small on purpose (`Avatars`): redis_store.RedisAvatarStore stands in for this one
when several machines share avatars (`REDIS_URL`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from wav2lip_core.errors import AvatarNotFound, BadRequest
from wav2lip_core.frames import STAGE_PREFIX, install, sweep

log = logging.getLogger(__name__)

MEDIA, META = "media", "meta.json"
ALIASES, ALIAS_SUFFIX = "aliases", ".id"
NEW, DELETED = ".new-", ".del-"  # a registration being written, a folder being removed
# What may name an avatar: its id (hex) or an alias; never "." or "..". Checked with fullmatch: Python's `$` also
# matches before a final newline ("x\n"); the OpenAPI document publishes the pattern, where `$` is the end.
NAME = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._-]{1,128}$")


class Avatars(Protocol):
    """Registered avatars: by id (a hex digest) or by an alias name; what the registry and the routes use."""

    frames_root: Path  # this machine's folder where frame files are kept and built (staged: renames stay atomic)

    def put(self, avatar_id: str, media: bytes, meta: dict[str, Any], frames: Path | None = None) -> bool:
        """Store once; False if it was already there (same id: same content and options). `frames`: a staged
        folder of the avatar's frame files (wav2lip_core/frames.py), kept with it on this machine."""

    def get(self, avatar_id: str) -> dict[str, Any]:
        """The metadata (by id or alias), marking it used; AvatarNotFound if unknown or evicted."""

    def frames_dir(self, avatar_id: str) -> Path:
        """The folder of the avatar's frame files on this machine (they may not be there: built on first use)."""

    def add_frames(self, avatar_id: str, staged: Path) -> None:
        """Keep frame files built in `staged` for a registered avatar, counted in the budget."""

    def media(self, avatar_id: str) -> bytes: ...
    def extra(self, avatar_id: str, name: str) -> bytes | None: ...
    def put_extra(self, avatar_id: str, name: str, data: bytes) -> None: ...
    def alias(self, name: str, avatar_id: str) -> None: ...
    def resolve(self, name: str) -> str: ...
    def list(self) -> list[dict[str, Any]]: ...
    def delete(self, avatar_id: str) -> None: ...


def check_id(avatar_id: str) -> str:
    """Ids are hex digests: nothing else may name a folder or a key."""
    if not avatar_id.isalnum():
        raise AvatarNotFound(f"no avatar with id {avatar_id[:80]!r}")
    return avatar_id


def check_alias(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadRequest(f"an avatar name must match {NAME.pattern}, got {name[:80]!r}", code="invalid_field")
    return name


def resolve_with(name: str, registered: Callable[[str], bool], alias_target: Callable[[str], str | None]) -> str:
    """Every store's `resolve`: a registered id is itself, else what the alias `name` names, else `name` as given."""
    if not NAME.fullmatch(name) or (name.isalnum() and registered(name)):  # an unsafe name never reaches a path or a key
        return name
    return alias_target(name) or name


class Folders:
    """Folders under `root`, one per item and marked by its `marker` file, whose mtime is the item's last use; beyond
    `max_bytes` the least recently used are removed. Shared by the workers of a machine: a removal is a rename."""

    def __init__(self, root: Path, max_bytes: int, marker: str):
        self.root, self.max_bytes, self.marker = root, max_bytes, marker
        self._lock = threading.Lock()  # eviction within this process; other workers' renames are atomic

    def items(self) -> list[Path]:
        """Every complete item's folder; folders still being written or removed (dot-named) are not items."""
        return [p.parent for p in self.root.glob(f"*/{self.marker}") if not p.parent.name.startswith(".")]

    def touch(self, folder: Path) -> None:
        now = time.time_ns()  # explicit: the file system's own clock is coarse (several ms)
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile, or not built yet
            os.utime(folder / self.marker, ns=(now, now))

    def remove(self, folder: Path) -> None:
        """Rename away first (atomic: readers see it gone at once), then delete the files."""
        self.root.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(prefix=DELETED, dir=self.root))
        with contextlib.suppress(FileNotFoundError):  # someone else removed it
            os.rename(folder, trash / "x")
        shutil.rmtree(trash, ignore_errors=True)

    def evict(self, keep: str) -> list[str]:
        """Remove the least recently used items (never `keep`) until the rest fit in `max_bytes`; their names."""
        evicted = []
        with self._lock:
            sweep(self.root, (STAGE_PREFIX, NEW, DELETED))  # what a worker killed while writing left behind
            folders = sorted(self.items(), key=lambda f: _mtime(f / self.marker))
            sizes = {f: _size(f) for f in folders}
            total = sum(sizes.values())
            for folder in folders:
                if total <= self.max_bytes:
                    break
                if folder.name != keep:
                    log.info("%s over %d bytes: evicting %s (least recently used)", self.root, self.max_bytes, folder.name)
                    self.remove(folder)
                    evicted.append(folder.name)
                    total -= sizes[folder]
        return evicted


class AvatarStore:
    """A directory of registered avatars with least-recently-used eviction beyond `max_bytes`."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = self.frames_root = root
        self.max_bytes = max_bytes
        self._folders = Folders(root, max_bytes, META)

    def _dir(self, avatar_id: str) -> Path:
        return self.root / check_id(avatar_id)

    def put(self, avatar_id: str, media: bytes, meta: dict[str, Any], frames: Path | None = None) -> bool:
        """Store once; False if it was already there (same id: same content and options). `frames`: a staged
        folder of its frame files, moved in with it."""
        final = self._dir(avatar_id)
        if (final / META).is_file():
            self._folders.touch(final)
            return False
        self.root.mkdir(parents=True, exist_ok=True)  # on first use: a server that never registers leaves nothing
        tmp = Path(tempfile.mkdtemp(prefix=NEW, dir=self.root))
        try:
            (tmp / MEDIA).write_bytes(media)
            (tmp / META).write_text(json.dumps(meta))
            if frames is not None:
                install(frames, tmp)
            self._folders.touch(tmp)
            os.rename(tmp, final)
        except OSError:
            if (final / META).is_file():  # another worker won the race: theirs is identical
                return False
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename
        self._folders.evict(keep=avatar_id)
        return True

    def frames_dir(self, avatar_id: str) -> Path:
        """The avatar's own folder: its frame files are counted and evicted with it."""
        return self._dir(avatar_id)

    def add_frames(self, avatar_id: str, staged: Path) -> None:
        """Frame files built on first use (an avatar registered before they existed) moved into its folder; counted."""
        folder = self._dir(avatar_id)
        if not (folder / META).is_file():
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        try:
            install(staged, folder)
        except FileNotFoundError as e:
            if folder.is_dir():
                raise
            raise AvatarNotFound(f"avatar {avatar_id!r} was evicted while its frame files were built") from e
        self._folders.evict(keep=avatar_id)

    def get(self, avatar_id: str) -> dict[str, Any]:
        """The avatar's metadata (by id or alias); AvatarNotFound if unknown (or evicted)."""
        folder = self._dir(self.resolve(avatar_id))
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError as e:
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}: register it with POST /api/avatars") from e
        self._folders.touch(folder)
        return meta

    def media(self, avatar_id: str) -> bytes:
        try:
            return (self._dir(avatar_id) / MEDIA).read_bytes()
        except FileNotFoundError as e:
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}") from e

    def extra(self, avatar_id: str, name: str) -> bytes | None:
        """A derived file kept beside the avatar (e.g. its idle loop), or None if not made yet."""
        try:
            return (self._dir(avatar_id) / name).read_bytes()
        except FileNotFoundError:
            return None

    def put_extra(self, avatar_id: str, name: str, data: bytes) -> None:
        """Write a derived file atomically (a temporary name, then rename); last writer wins, all write the same."""
        folder = self._dir(avatar_id)
        if not (folder / META).is_file():
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        _replace(folder / name, data)

    def alias(self, name: str, avatar_id: str) -> None:
        """Let `name` stand for the registered avatar `avatar_id`; naming another avatar so later repoints it."""
        check_alias(name)
        if not (self._dir(avatar_id) / META).is_file():
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        (self.root / ALIASES).mkdir(parents=True, exist_ok=True)
        _replace(self.root / ALIASES / f"{name}{ALIAS_SUFFIX}", avatar_id.encode())

    def resolve(self, name: str) -> str:
        """The avatar id `name` stands for: itself when registered, else what the alias `name` names, else itself."""
        return resolve_with(name, lambda i: (self.root / i / META).is_file(), self._alias_target)

    def _alias_target(self, name: str) -> str | None:
        try:
            return (self.root / ALIASES / f"{name}{ALIAS_SUFFIX}").read_text()
        except FileNotFoundError:
            return None

    def list(self) -> list[dict[str, Any]]:
        """Every avatar's metadata, most recently used first."""
        metas = []
        for meta in sorted((f / META for f in self._folders.items()), key=_mtime, reverse=True):
            try:
                metas.append(json.loads(meta.read_text()))
            except FileNotFoundError:  # deleted or evicted while we listed
                continue
        return metas

    def delete(self, avatar_id: str) -> None:
        folder = self._dir(avatar_id)
        if not (folder / META).is_file():
            raise AvatarNotFound(f"no avatar with id {avatar_id!r}")
        self._folders.remove(folder)


def _replace(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename over `path`: readers see the old file or the new, never half; last writer wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _size(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir())
    except FileNotFoundError:  # removed by another worker meanwhile
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
