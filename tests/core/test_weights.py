"""`make weights` (convert_to_openvino.py --fetch) against loopback stand-ins: the Hub's download route for
HF_ENDPOINT and plain URLs, serving the suite's seeded checkpoints. A success puts verified files in
checkpoints/; every fault is one `error:` line, exit 2 and checkpoints/ byte for byte as it was."""

from __future__ import annotations

import hashlib
import os
import pty
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from harness.checkpoints import run_converter
from harness.hub_standin import HubStandin, Route, hub_path, seeded_routes
from wav2lip_core.errors import WeightsError
from wav2lip_core.weights import (
    ACCEPT_ENV,
    DEFAULT_SOURCES,
    LICENCE,
    PARTIAL_DIR,
    SOURCES_ENV,
    TARGETS,
    Expected,
    SourceList,
    load_sources,
    parse_sources,
    verify,
)

HF_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", SOURCES_ENV, ACCEPT_ENV)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry below `folder` with its sha256 (folders: "dir")."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else _sha(p) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def seeded(checkpoints: dict[str, Path]) -> Path:
    """The folder holding the suite's seeded wav2lip.pth and s3fd.pth."""
    return checkpoints["wav2lip"].parent


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    """A checkpoints/ with a file of its own that every run must leave alone."""
    d = tmp_path / "repo" / "checkpoints"
    d.mkdir(parents=True)
    (d / "README.md").write_text("Put the original PyTorch checkpoints here\n")
    return d


@pytest.fixture
def standin() -> Iterator[HubStandin]:
    with HubStandin() as s:
        yield s


@contextmanager
def _terminal(answer: bytes) -> Iterator[int]:
    """A pseudo-terminal with `answer` already typed: its fd, a child's stdin on which isatty() is true."""
    master, slave = pty.openpty()
    os.write(master, answer)
    try:
        yield slave
    finally:
        os.close(master)
        os.close(slave)


def _dead_url() -> str:
    """A loopback URL where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _fetch(
    ckpt_dir: Path, endpoint: str, sources: str, *names: str, accept: bool = True, stdin: int = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in HF_ENV} | {
        "HF_HOME": str(ckpt_dir.parent.parent / "hf-home"),
        "HF_ENDPOINT": endpoint,
        SOURCES_ENV: sources,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    if accept:
        env[ACCEPT_ENV] = "1"
    return run_converter("--fetch", *names, "--checkpoints", str(ckpt_dir), env=env, stdin=stdin)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_fetch_puts_verified_checkpoints_in_place(seeded: Path, ckpt_dir: Path, standin: HubStandin) -> None:
    """The hf:// generator through huggingface_hub (its cache), S3FD from a plain URL; `yes` typed on a terminal."""
    routes, listed = seeded_routes(seeded, standin.url)
    standin.routes.update(routes)
    with _terminal(b"yes\n") as tty:
        proc = _fetch(ckpt_dir, standin.url, listed.format(), accept=False, stdin=tty)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert LICENCE.splitlines()[0] in proc.stdout and "Type yes" in proc.stdout
    assert _snapshot(ckpt_dir) == {
        "README.md": _sha(ckpt_dir / "README.md"),
        "s3fd.pth": _sha(seeded / "s3fd.pth"),
        "wav2lip_gan.pth": _sha(seeded / "wav2lip.pth"),
    }
    gan = hub_path("numz/wav2lip_studio", "Wav2lip/wav2lip_gan.pth")
    assert {(r.method, r.path) for r in standin.requests} >= {
        ("HEAD", gan),
        ("GET", gan),
        ("GET", listed.sources["s3fd"][0][len(standin.url) :]),
    }
    blob = ckpt_dir.parent.parent / "hf-home" / "hub" / "models--numz--wav2lip_studio" / "blobs" / _sha(seeded / "wav2lip.pth")
    assert blob.is_file()  # the Hub's own cache holds it (HF_HOME honoured)
    assert not (ckpt_dir.parent / PARTIAL_DIR).exists()

    standin.requests.clear()
    again = _fetch(ckpt_dir, standin.url, listed.format())
    assert again.returncode == 0 and "already there: kept" in again.stdout and standin.requests == []


def test_first_source_missing_then_the_next(seeded: Path, ckpt_dir: Path, standin: HubStandin) -> None:
    standin.routes["/files/gan.pth"] = Route(seeded / "wav2lip.pth")
    sources = f"wav2lip_gan hf://nobody/no-such-repo/wav2lip_gan.pth; wav2lip_gan {standin.url}/files/gan.pth"
    proc = _fetch(ckpt_dir, standin.url, sources, "wav2lip_gan")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "refused (download_failed): 404" in proc.stdout
    assert _sha(ckpt_dir / "wav2lip_gan.pth") == _sha(seeded / "wav2lip.pth")
    files = [r.path for r in standin.requests if r.path != "/api/agent-harnesses"]  # huggingface_hub's user-agent lookup
    assert files == [hub_path("nobody/no-such-repo", "wav2lip_gan.pth"), "/files/gan.pth"]


def test_truncated_download_is_refused_then_resumed(seeded: Path, ckpt_dir: Path, standin: HubStandin) -> None:
    """The body breaks off halfway: refused, the partial kept outside checkpoints/; the next run resumes it with Range."""
    gan = seeded / "wav2lip.pth"
    standin.routes["/files/gan.pth"] = Route(gan, truncate=True)
    sources = f"wav2lip_gan {standin.url}/files/gan.pth"
    before = _snapshot(ckpt_dir)
    line = _one_error_line(_fetch(ckpt_dir, standin.url, sources, "wav2lip_gan"))
    assert f"broke off at {gan.stat().st_size // 2} of {gan.stat().st_size} bytes" in line and "make weights" in line
    assert _snapshot(ckpt_dir) == before
    assert [p.stat().st_size for p in (ckpt_dir.parent / PARTIAL_DIR).glob("*.part")] == [gan.stat().st_size // 2]

    standin.routes["/files/gan.pth"] = Route(gan)
    standin.requests.clear()
    proc = _fetch(ckpt_dir, standin.url, sources, "wav2lip_gan")
    assert proc.returncode == 0, proc.stderr
    assert [r.range for r in standin.requests] == [f"bytes={gan.stat().st_size // 2}-"]
    assert _sha(ckpt_dir / "wav2lip_gan.pth") == _sha(gan)


def _fault(kind: str, seeded: Path, tmp_path: Path, standin: HubStandin) -> tuple[str, str, str, str]:
    """(endpoint, sources, checkpoint to fetch, what the error line must say) for one fault."""
    url = f"{standin.url}/files/file.pth"
    if kind == "wrong_digest":
        standin.routes["/files/file.pth"] = Route(seeded / "wav2lip.pth")
        return standin.url, f"wav2lip_gan sha256={'0' * 64}; wav2lip_gan {url}", "wav2lip_gan", f"expected {'0' * 64}"
    if kind == "digest_not_in_name":  # the torch.hub convention: s3fd-<first hex digits of the sha256>.pth
        standin.routes["/files/s3fd-0123456789.pth"] = Route(seeded / "s3fd.pth")
        return standin.url, f"s3fd {standin.url}/files/s3fd-0123456789.pth", "s3fd", "does not start with the 0123456789"
    if kind == "html_page":  # a sign-in page served by the Hub route with 200
        page = tmp_path / "page.html"
        page.write_text("<!DOCTYPE html><html><body>Sign in to continue</body></html>\n")
        standin.routes[hub_path("numz/wav2lip_studio", "Wav2lip/wav2lip_gan.pth")] = Route(page)
        return (
            standin.url,
            "wav2lip_gan hf://numz/wav2lip_studio/Wav2lip/wav2lip_gan.pth",
            "wav2lip_gan",
            "not a readable PyTorch checkpoint",
        )
    if kind == "wrong_network":  # S3FD's weights offered as the generator
        standin.routes["/files/file.pth"] = Route(seeded / "s3fd.pth")
        return standin.url, f"wav2lip_gan {url}", "wav2lip_gan", "keys do not match Wav2Lip"
    assert kind == "offline"  # nothing listens, neither the Hub (huggingface_hub retries ~23 s) nor the mirror
    dead = _dead_url()
    return (
        dead,
        f"wav2lip_gan hf://numz/wav2lip_studio/Wav2lip/wav2lip_gan.pth; wav2lip_gan {dead}/x.pth",
        "wav2lip_gan",
        "Connection refused",
    )


@pytest.mark.parametrize("kind", ["wrong_digest", "digest_not_in_name", "html_page", "wrong_network", "offline"])
def test_fault_leaves_checkpoints_unchanged(kind: str, seeded: Path, ckpt_dir: Path, tmp_path: Path, standin: HubStandin) -> None:
    (ckpt_dir / "wav2lip.pth").write_bytes(b"an older checkpoint of another name")
    before = _snapshot(ckpt_dir)
    endpoint, sources, name, says = _fault(kind, seeded, tmp_path, standin)
    proc = _fetch(ckpt_dir, endpoint, sources, name)
    line = _one_error_line(proc)
    assert says in line and "make weights again" in line and f"{ckpt_dir}/ is unchanged" in line
    assert "Traceback" not in proc.stdout + proc.stderr
    assert _snapshot(ckpt_dir) == before
    assert not (ckpt_dir.parent / PARTIAL_DIR).exists()  # a whole but wrong file is not kept for a resume


@pytest.mark.parametrize("how", ["no_terminal", "no_on_a_terminal"])
def test_licence_not_accepted_fetches_nothing(how: str, seeded: Path, ckpt_dir: Path, standin: HubStandin) -> None:
    routes, listed = seeded_routes(seeded, standin.url)
    standin.routes.update(routes)
    before = _snapshot(ckpt_dir)
    with _terminal(b"no\n") if how == "no_on_a_terminal" else nullcontext(subprocess.DEVNULL) as stdin:
        proc = _fetch(ckpt_dir, standin.url, listed.format(), accept=False, stdin=stdin)
    line = _one_error_line(proc)
    assert f"{ACCEPT_ENV}=1" in line and "nothing was downloaded" in line
    assert ("'no'" in line) == (how == "no_on_a_terminal")
    assert LICENCE.splitlines()[1] in proc.stdout
    assert standin.requests == [] and _snapshot(ckpt_dir) == before


def test_default_sources_with_only_hf_endpoint_set(seeded: Path, ckpt_dir: Path, standin: HubStandin) -> None:
    """The README's proof: the default list, HF_ENDPOINT at a stand-in that has the generator. S3FD's sources are out of
    reach (its own site; the stand-in has no copy): the generator goes in anyway, and a warning names what to do."""
    routes, _ = seeded_routes(seeded, standin.url)
    standin.routes.update({path: route for path, route in routes.items() if "s3fd" not in path})
    proc = _fetch(ckpt_dir, standin.url, "")
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout[-2000:] + proc.stderr
    assert "warning: s3fd not fetched" in proc.stdout and "BlazeFace" in proc.stdout
    assert _snapshot(ckpt_dir) == {"README.md": _sha(ckpt_dir / "README.md"), "wav2lip_gan.pth": _sha(seeded / "wav2lip.pth")}


def test_an_optional_checkpoint_that_arrives_wrong_still_fails_the_run(seeded: Path, ckpt_dir: Path, standin: HubStandin) -> None:
    """Only an S3FD that nobody could reach is left out: one that came and was refused stops everything."""
    routes, listed = seeded_routes(seeded, standin.url)
    standin.routes.update(routes)
    standin.routes[listed.sources["s3fd"][0][len(standin.url) :]] = Route(seeded / "wav2lip.pth")  # the wrong network
    before = _snapshot(ckpt_dir)
    line = _one_error_line(_fetch(ckpt_dir, standin.url, listed.format()))
    assert "s3fd" in line and _snapshot(ckpt_dir) == before


def test_default_sources_name_every_checkpoint_and_round_trip() -> None:
    listed = parse_sources(DEFAULT_SOURCES, "defaults")
    assert set(listed.sources) == set(TARGETS)
    assert listed.sources["wav2lip_gan"][0] == "hf://numz/wav2lip_studio/Wav2lip/wav2lip_gan.pth"  # OpenVINO's notebook's repository
    assert listed.sources["s3fd"][0] == "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
    assert all(uri.startswith("hf://") for name in ("wav2lip_gan", "wav2lip") for uri in listed.sources[name])  # HF_ENDPOINT applies
    assert listed.expected["s3fd"].sha256.startswith("619a316812")  # the digest agrees with the name it came under
    assert parse_sources(listed.format(), "formatted") == listed
    assert load_sources({}) == listed == load_sources({SOURCES_ENV: "  "})


def test_sources_setting_forms(tmp_path: Path) -> None:
    text = "wav2lip_gan size=12  # the size only\nwav2lip_gan https://example.org/a.pth; wav2lip_gan hf://o/r@v1/dir/b.pth\n"
    (tmp_path / "list.txt").write_text(text)
    want = SourceList({"wav2lip_gan": ["https://example.org/a.pth", "hf://o/r@v1/dir/b.pth"]}, {"wav2lip_gan": Expected(None, 12)})
    assert load_sources({SOURCES_ENV: text}) == want == load_sources({SOURCES_ENV: f"@{tmp_path / 'list.txt'}"})


@pytest.mark.parametrize(
    "entry",
    [
        "wav2lipgan https://x.org/a.pth",
        "s3fd ftp://x.org/a.pth",
        "s3fd hf://just-a-repo",
        "s3fd sha256=abc",
        "s3fd size=-1",
        "s3fd colour=red",
        "s3fd",
    ],
)
def test_bad_sources_entry_is_named(entry: str) -> None:
    with pytest.raises(WeightsError) as e:
        parse_sources(f"s3fd https://x.org/ok.pth\n{entry}\n", SOURCES_ENV)
    assert e.value.code == "bad_sources" and repr(entry) in e.value.message


def test_verify_checks_size_digest_and_name_before_layout(tmp_path: Path) -> None:
    f = tmp_path / "f.pth"
    f.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    checked: list[str] = []
    assert verify(f, "s3fd", f"https://x.org/s3fd-{digest[:10]}.pth", Expected(digest, 7), lambda net, p: checked.append(net)) == digest
    assert checked == ["s3fd"]
    for uri, expected, code in [
        ("https://x.org/f.pth", Expected(size=8), "wrong_size"),
        ("https://x.org/f.pth", Expected(sha256="f" * 64), "wrong_digest"),
        ("https://x.org/s3fd-deadbeef.pth", Expected(), "wrong_digest"),
    ]:
        with pytest.raises(WeightsError) as e:
            verify(f, "s3fd", uri, expected, lambda net, p: checked.append(net))
        assert e.value.code == code
    assert checked == ["s3fd"]  # the layout check (torch) runs only on a file that passed the cheap checks
