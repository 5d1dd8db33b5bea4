"""The README's and docs/' examples, run as written against the suite's server.

Every shell (```sh), Node (```js, ```mjs), browser page (```html) and Python (```python) block in the
README and docs/ is one of: run here, in a fresh folder laid out like the repository root (test_assets/,
clients/), with `$URL` (shell, Node) or `?server=` (pages) pointing at the session's gunicorn, and
checked for what the text says it makes; run by another test (`<!-- run by tests/X.py -->` on the line
before it); or not run (`<!-- not run by tests: why -->` there), each counted in NOT_RUN. A block that
is none of these, or a shell or Node block fenced under another name (```bash, ```javascript), fails.
Relative links between these pages must resolve, anchors included.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import decode_mp4

from harness import ROOT
from harness.cdp import Chromium
from harness.gunicorn import Gunicorn

DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if p.name != "api.md")]  # api.md: generated
LINKED = [*DOCS, "bench/README.md", "checkpoints/README.md", "clients/node/README.md", "clients/browser/README.md"]
PENDING: set[str] = set()  # links to pages another change will add (none now)
LANGS = {"sh", "js", "mjs", "html", "python"}
ALIASES = {"bash", "shell", "console", "zsh", "javascript", "node", "py", "python3", "htm"}  # write them as one of LANGS
NOT_RUN_MARK = re.compile(r"^<!-- not run by tests: (\S.*\S) -->$")
RUN_BY_MARK = re.compile(r"^<!-- run by (tests/[\w/]+\.py) -->$")
# blocks marked not run, per page: a new one is a deliberate change here, never a silent skip
NOT_RUN = {"README.md": 2, "docs/deployment.md": 6, "docs/development.md": 1, "docs/weights.md": 1}
SPEECH_FRAMES = 160  # test_assets/speech.wav: 6.4 s at 25 fps
IDLE_FRAMES = 50  # test_assets/idle.mp4: 2 s at 25 fps, 512×384
TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    doc: str  # path from the repository root
    line: int  # of the opening fence, 1-based
    heading: str  # the nearest heading above it
    lang: str
    code: str
    mark: str  # the line before the fence

    @property
    def key(self) -> tuple[str, str, str]:
        return self.doc, self.heading, self.lang


def blocks(doc: str) -> list[Block]:
    """Every fenced block of a page, with its heading and the line before it."""
    lines = (ROOT / doc).read_text().splitlines()
    found, heading, i = [], "", 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        elif m := re.match(r"^```(\S*)\s*$", lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
            mark = lines[i - 1].strip() if i else ""
            found.append(Block(doc, i + 1, heading, m.group(1), "\n".join(lines[i + 1 : end]) + "\n", mark))
            i = end
        i += 1
    return found


ALL = [b for doc in DOCS for b in blocks(doc)]
EXAMPLES = [b for b in ALL if b.lang in LANGS and not NOT_RUN_MARK.match(b.mark) and not RUN_BY_MARK.match(b.mark)]


# --- what each example says it makes ------------------------------------------------------------------


def assert_video(path: Path, frames: int, size: tuple[int, int], audio: bool = True) -> None:
    d = decode_mp4(path.read_bytes())
    assert (d.video_codec, len(d.frames), (d.width, d.height)) == ("h264", frames, size), (path.name, len(d.frames), d.width, d.height)
    assert (d.audio_codec == "aac") if audio else d.audio_codec is None, (path.name, d.audio_codec)


def speech_video(path: Path) -> None:
    assert_video(path, SPEECH_FRAMES, (512, 512))


def check_url_default(work: Path, out: str, server: Gunicorn) -> None:
    assert out == ""


def check_curl(work: Path, out: str, server: Gunicorn) -> None:
    for name in ("out.mp4", "streamed.mp4", "job.mp4"):
        speech_video(work / name)


def check_node(work: Path, out: str, server: Gunicorn) -> None:
    for line in ("out.mp4: 160 frames", "streamed.mp4: 160 frames", "job.mp4: job done"):
        assert line in out.splitlines(), out
    for name in ("out.mp4", "streamed.mp4", "job.mp4"):
        speech_video(work / name)


def check_living_avatar(work: Path, out: str, server: Gunicorn) -> None:
    assert_video(work / "idle-loop.mp4", 2 * IDLE_FRAMES - 2, (512, 384), audio=False)  # one ping-pong period, silent
    assert_video(work / "reply.mp4", SPEECH_FRAMES, (512, 384))
    assert out.strip() == f"X-End-Frame: {(30 + SPEECH_FRAMES) % (2 * IDLE_FRAMES - 2)}", out  # 92, as the comment says


def check_json_curl(work: Path, out: str, server: Gunicorn) -> None:
    assert set(json.loads((work / "req.json").read_text())) == {"image", "audio"}
    speech_video(work / "out.mp4")


def check_talk(work: Path, out: str, server: Gunicorn) -> None:
    talk = json.loads(out)
    assert talk["status"] in ("created", "started", "done") and talk["id"], talk
    deadline = time.monotonic() + TIMEOUT_S  # let it end: no work left running on the shared server
    while talk["status"] in ("created", "started") and time.monotonic() < deadline:
        time.sleep(0.5)
        with urllib.request.urlopen(f"{server.url}/talk-status/{talk['id']}", timeout=10) as r:
            talk = json.load(r)
    assert talk["status"] == "done" and talk["result_url"], talk


Check = Callable[[Path, str, Gunicorn], None]
CHECKS: dict[tuple[str, str, str], Check | None] = {
    ("README.md", "Getting a video", "sh"): check_url_default,
    ("README.md", "curl", "sh"): check_curl,
    ("README.md", "Node", "mjs"): check_node,
    ("README.md", "In a browser", "html"): None,  # test_the_readme_page_gets_each_way: Chromium, once
    ("README.md", "Avatars: registered, and living", "sh"): check_living_avatar,
    ("docs/http-api-guide.md", "`POST /api/generate`", "sh"): check_json_curl,
    ("docs/http-api-guide.md", "Drop-in routes for existing clients", "sh"): check_talk,
}


# --- every block accounted for -------------------------------------------------------------------------


def test_every_example_is_run_or_marked() -> None:
    assert len(ALL) > 10 and EXAMPLES, "no blocks found: has the README moved?"
    aliased = [f"{b.doc}:{b.line} ```{b.lang}" for b in ALL if b.lang in ALIASES]
    assert not aliased, f"fence these as one of {sorted(LANGS)}, so they are run or marked: {aliased}"
    keys = Counter(b.key for b in EXAMPLES)
    assert not [k for k, n in keys.items() if n > 1], f"one example per (page, heading, language): {keys}"
    unchecked = [f"{b.doc}:{b.line} under {b.heading!r}" for b in EXAMPLES if b.key not in CHECKS]
    assert not unchecked, f"run these in tests/e2e/test_readme.py (CHECKS) or mark them <!-- not run by tests: why -->: {unchecked}"
    assert set(CHECKS) <= set(keys), f"CHECKS names blocks that are gone: {set(CHECKS) - set(keys)}"


def test_blocks_not_run_here_are_counted_and_say_why() -> None:
    not_run = Counter(b.doc for b in ALL if b.lang in LANGS and NOT_RUN_MARK.match(b.mark))
    assert dict(not_run) == NOT_RUN, "a block was marked or unmarked `not run by tests`: update NOT_RUN deliberately"
    for b in ALL:
        if b.lang in LANGS and (m := RUN_BY_MARK.match(b.mark)):
            runner = ROOT / m.group(1)
            assert runner.is_file() and Path(b.doc).name in runner.read_text(), f"{b.doc}:{b.line}: {m.group(1)} does not read {b.doc}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(b) for b in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL), re.MULTILINE)}


def test_links_between_the_pages_resolve() -> None:
    broken = []
    for doc in LINKED:
        text = re.sub(r"```.*?```", "", (ROOT / doc).read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / doc).parent / path if path else ROOT / doc
            name = str(file.resolve().relative_to(ROOT))
            if not file.exists():
                if name not in PENDING:
                    broken.append(f"{doc}: {target}")
            elif anchor and anchor not in anchors(file):
                broken.append(f"{doc}: {target} (no such heading)")
    assert not broken, broken


# --- run them --------------------------------------------------------------------------------------------


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder laid out like the repository root, for the examples' inputs and outputs."""
    for name in ("test_assets", "clients"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run(cmd: list[str], work: Path, server: Gunicorn) -> str:
    proc = subprocess.run(cmd, cwd=work, env={**os.environ, "URL": server.url}, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("block", [b for b in EXAMPLES if CHECKS.get(b.key)], ids=lambda b: f"{b.doc}:{b.line}")
def test_example_runs_as_written(block: Block, server: Gunicorn, node: str, work: Path) -> None:
    if block.lang == "sh":
        out = run(["bash", "-e", "-c", block.code], work, server)
    else:
        (work / "example.mjs").write_text(block.code)
        out = run([node, "example.mjs"], work, server)
    check = CHECKS[block.key]
    assert check is not None
    check(work, out, server)


WAYS = {"whole": "blob:", "streamed": "blob:", "job": "http"}  # each button, and where its video comes from


def test_the_readme_page_gets_each_way(chromium: str, server: Gunicorn, work: Path) -> None:
    """The README's page in headless Chromium, from a file (origin `null`, allowed by the server fixture's CORS_ORIGINS)."""
    [page] = [b for b in EXAMPLES if b.key == ("README.md", "In a browser", "html")]
    (work / "page.html").write_text(page.code)
    with Chromium(chromium, work) as browser:
        browser.navigate(f"file://{work / 'page.html'}?server={server.url}")
        browser.wait_for("document.readyState === 'complete' && !!window.form", timeout_s=20)
        browser.set_files("input[name=image]", work / "test_assets" / "astronaut.jpg")
        browser.set_files("input[name=audio]", work / "test_assets" / "speech.wav")
        for way, source in WAYS.items():
            browser.evaluate("video.removeAttribute('src'); video.load()")
            browser.evaluate(f"document.querySelector('button[value={way}]').click()")
            shown = browser.wait_for(
                "video.readyState >= 1 && Math.abs(video.duration - 6.4) < 0.1 && "
                "({src: video.src, width: video.videoWidth, height: video.videoHeight, error: video.error})",
                timeout_s=TIMEOUT_S,
            )
            assert shown["src"].startswith(source) and (shown["width"], shown["height"]) == (512, 512) and not shown["error"], (way, shown)
            browser.wait_for("video.currentTime > 0.2", timeout_s=30)  # it plays
        assert not [line for line in browser.console if line.startswith("uncaught")], browser.console
