"""Frame files: a looped video avatar's frames and face inputs on disk, memory-mapped read-only.

A looped clip is rendered from every one of its frames (10 s of 1080p: 250 × 6.2 MB = 1.55 GB).
Decoded onto a worker's heap they were private to that worker, decoded again for every answer, and
kept by glibc afterwards. Written once to a file and mapped read-only they are page cache instead:
one copy for every worker of the machine, which the kernel can drop when memory is short (clean
pages, read back from the file when touched again), and mapped in microseconds, so a registered
avatar's answer starts at once.

A folder holds `frames.npy` ((n, h, w, 3) uint8 BGR: the frames after `avatar.fit_frame`, exactly the
ones the render loop shows) and `faces.npy` ((n, 6, 96, 96) float32: the generator's face inputs).
Both are plain .npy files (`np.load(mmap_mode="r")` maps them), written one item at a time (never the
whole array in memory) into a staging folder on the same file system, then renamed into place:
`rename(2)` is atomic, so a reader maps whole files or finds none, and two workers building the same
avatar at once both end with one good file (theirs are identical). A staging folder is removed when
its work ends; what was mapped from it stays readable until the mapping is dropped (an inline clip's
frames live exactly as long as its answer).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.lib import format as npy

from .compose import IMG_SIZE, face_input
from .errors import DiskFull
from .schema import Box

log = logging.getLogger(__name__)

FRAMES, FACES = "frames.npy", "faces.npy"
FACE_SHAPE = (6, IMG_SIZE, IMG_SIZE)  # compose.face_input: masked crop + crop, channels first
STAGE_PREFIX = ".stage-"  # dot-named: never taken for an avatar's folder
STALE_S = 3600.0  # a staging folder this old was left by a process that died while building: removed by sweep()


class NpyAppender:
    """An .npy file written one item at a time; the item count in its header is written last.

    numpy pads every header so that its length does not depend on the digits of the first dimension
    (`numpy.lib.format.GROWTH_AXIS_MAX_DIGITS`, there for appending), so the final header overwrites
    the provisional one in place."""

    def __init__(self, path: Path, item_shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.path, self.item_shape, self.dtype = path, tuple(item_shape), np.dtype(dtype)
        self.count = 0
        self._file = path.open("xb")
        self._header()
        self._data_at = self._file.tell()

    def _header(self) -> None:
        shape = (self.count, *self.item_shape)
        npy.write_array_header_1_0(self._file, {"descr": npy.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})

    def append(self, item: np.ndarray) -> None:
        if item.shape != self.item_shape or item.dtype != self.dtype:
            raise ValueError(f"{self.path.name}: an item of {item.dtype} {item.shape}, expected {self.dtype} {self.item_shape}")
        self._file.write(np.ascontiguousarray(item).data)
        self.count += 1

    def finish(self) -> None:
        """Write the final header and close: the file is complete."""
        self._file.seek(0)
        self._header()
        if self._file.tell() != self._data_at:  # numpy's padding makes this impossible; a shifted file would be worse than an error
            raise RuntimeError(f"{self.path}: the .npy header changed length ({self._data_at} → {self._file.tell()} bytes)")
        self._file.close()

    def close(self) -> None:
        """Close without the final header (after an error: the file is incomplete, and its staging folder removed)."""
        self._file.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.finish()
        self.close()


def teed(frames: Iterable[np.ndarray], folder: Path) -> Iterator[np.ndarray]:
    """Each frame appended to `folder`/frames.npy, then passed on; the file is complete once the frames are exhausted."""
    out: NpyAppender | None = None
    try:
        for frame in frames:
            if out is None:
                out = NpyAppender(folder / FRAMES, frame.shape, frame.dtype)
            out.append(frame)
            yield frame
        if out is not None:
            out.finish()
    finally:
        if out is not None:
            out.close()


def write_faces(folder: Path, boxes: list[Box]) -> None:
    """`folder`/faces.npy: the generator's face input of each frame of `folder`/frames.npy (read through a mapping)."""
    frames = np.load(folder / FRAMES, mmap_mode="r")
    if len(frames) != len(boxes):
        raise ValueError(f"{folder / FRAMES} has {len(frames)} frames but {len(boxes)} face boxes were given")
    with NpyAppender(folder / FACES, FACE_SHAPE, np.float32) as out:
        for frame, box in zip(frames, boxes, strict=True):
            out.append(face_input(frame, box))


@dataclass(frozen=True)
class Mapped:
    """A clip's frame files, mapped read-only."""

    frames: np.ndarray  # (n, h, w, 3) uint8 BGR, an np.memmap
    faces: np.ndarray  # (n, 6, 96, 96) float32, an np.memmap


def open_mapped(folder: Path, shape: tuple[int, int, int] | None = None) -> Mapped | None:
    """The folder's frame files mapped read-only, or None when they are missing, cut short, or not of `shape`
    (frames, height, width): then they are to be built again."""
    try:
        faces = np.load(folder / FACES, mmap_mode="r")  # faces first: they are renamed into place first
        frames = np.load(folder / FRAMES, mmap_mode="r")
    except FileNotFoundError:
        return None
    except (ValueError, EOFError) as e:  # shorter than its header says (a crash while writing): built again
        log.warning("frame files in %s are unreadable (%s): they are built again", folder, e)
        return None
    want = None if shape is None else ((*shape, 3), (shape[0], *FACE_SHAPE))
    got = (frames.shape, faces.shape)
    if frames.dtype != np.uint8 or faces.dtype != np.float32 or len(frames) != len(faces) or (want and got != want):
        log.warning("frame files in %s are %s, expected %s: they are built again", folder, got, want)
        return None
    return Mapped(frames, faces)


def size_bytes(frames: int, width: int, height: int) -> int:
    """Disk (and page cache, when all touched) of a clip's frame files."""
    return frames * (width * height * 3 + int(np.prod(FACE_SHAPE)) * 4)


@contextlib.contextmanager
def staged(root: Path | None = None) -> Iterator[Path]:
    """A fresh folder under `root` (default: the system's temporary folder) for frame files being built, removed
    after; files still in it are unlinked then, and stay readable through the mappings made of them."""
    root = Path(tempfile.gettempdir()) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=root))
    try:
        yield folder
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"no disk space left for frame files in {root}: free some, or set AVATAR_STORE_MB below the free space "
                "(registered avatars are evicted beyond it)"
            ) from e
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when it was renamed into place whole


def install(staged: Path, folder: Path) -> None:
    """Move built frame files into the existing `folder`: faces first, so whoever finds frames.npy finds both."""
    for name in (FACES, FRAMES):
        os.replace(staged / name, folder / name)


def sweep(root: Path, prefixes: tuple[str, ...] = (STAGE_PREFIX,), older_s: float = STALE_S) -> None:
    """Remove what a process that died while writing left under `root`: folders named with `prefixes`, older than `older_s`."""
    cutoff = time.time() - older_s
    for prefix in prefixes:
        for folder in root.glob(f"{prefix}*"):
            with contextlib.suppress(FileNotFoundError):  # another worker swept it first
                if folder.stat().st_mtime < cutoff:
                    log.info("removing %s, left by a process that stopped while writing it", folder)
                    shutil.rmtree(folder, ignore_errors=True)
