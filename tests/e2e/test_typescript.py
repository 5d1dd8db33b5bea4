"""The typed Node client (clients/node): its generated declarations are current, its option names are the
server's, and it installs and imports as a package (`wav2lip-lipsync-client`, package.json `exports` and
`types`): the example (the Node client README's, byte for byte) type-checks with the real `tsc` and runs against the
real server, and a copy with a misspelt option and a wrong value fails the check.

TypeScript, Node's types and the client as a package come from tests/node's lockfile (conftest.node_packages).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import idle_clip

from harness import ASSETS, ROOT
from harness.gunicorn import Gunicorn
from lipsync_server.openapi.typescript import camel, declarations
from wav2lip_core.schema import option_names

CLIENT = ROOT / "clients" / "node"
EXAMPLE = CLIENT / "examples" / "example.ts"
TSC_TIMEOUT_S = 180  # ~5 s on an idle machine
MISSPELT = {"startFrame:": "startFrme:", 'paste: "feather"': 'paste: "fether"'}  # an unknown option, a value not among the choices


def readme_example() -> str:
    """The example block of the Node client's README (its TypeScript section: the first block is the import line)."""
    section = (CLIENT / "README.md").read_text().split("## TypeScript", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```ts\n(.*?)```", section, re.DOTALL)
    assert len(found) == 2, "clients/node/README.md's TypeScript section has no example block"
    return found[1]


def test_api_d_ts_is_generated_from_the_declarations() -> None:
    current = (CLIENT / "api.d.ts").read_text()
    assert current == declarations(), "clients/node/api.d.ts is stale: python -m lipsync_server.openapi.typescript > clients/node/api.d.ts"


def test_the_client_sends_the_server_options(node: str) -> None:
    """lipsync.mjs's OPTION_FIELDS (client name → field) are schema.Options, named as api.d.ts names them."""
    script = f"import({json.dumps((CLIENT / 'lipsync.mjs').as_uri())}).then((m) => console.log(JSON.stringify(m.OPTION_FIELDS)))"
    proc = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(proc.stdout) == {camel(name): name for name in option_names()}


def test_the_readme_example_is_the_checked_one() -> None:
    assert readme_example() == EXAMPLE.read_text()


def consumer(tmp_path: Path, node_packages: Path, source: str) -> Path:
    """A project of a client's shape: ESM, the packages installed (the lockfile's), example.ts, a tsconfig
    extending clients/node's, emitting JavaScript to out/."""
    (tmp_path / "node_modules").symlink_to(node_packages, target_is_directory=True)
    (tmp_path / "package.json").write_text(json.dumps({"type": "module", "private": True}))
    (tmp_path / "example.ts").write_text(source)
    config = {"extends": str(CLIENT / "tsconfig.json"), "files": ["example.ts"], "compilerOptions": {"noEmit": False, "outDir": "out"}}
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    return tmp_path


def tsc(node: str, project: Path) -> subprocess.CompletedProcess[str]:
    compiler = project / "node_modules" / "typescript" / "bin" / "tsc"
    return subprocess.run([node, str(compiler), "-p", str(project)], capture_output=True, text=True, timeout=TSC_TIMEOUT_S)


@pytest.fixture
def compiled_example(node: str, node_packages: Path, tmp_path: Path) -> Path:
    project = consumer(tmp_path, node_packages, EXAMPLE.read_text())
    proc = tsc(node, project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project


def test_a_misspelt_option_fails_the_type_check(node: str, node_packages: Path, tmp_path: Path) -> None:
    source = EXAMPLE.read_text()
    for right, wrong in MISSPELT.items():
        assert right in source
        source = source.replace(right, wrong, 1)
    proc = tsc(node, consumer(tmp_path, node_packages, source))
    assert proc.returncode != 0
    assert re.search(r"error TS2561: .*'startFrme' does not exist.*Did you mean to write 'startFrame'", proc.stdout), proc.stdout
    wrong_value = r"error TS2820: Type '\"fether\"' is not assignable to type '\"box\" \| \"feather\".*Did you mean '\"feather\"'"
    assert re.search(wrong_value, proc.stdout), proc.stdout


def test_the_example_runs_against_the_server(node: str, compiled_example: Path, server: Gunicorn) -> None:
    """The emitted JavaScript imports the package (its `exports`) and does what it says, on the real server."""
    (compiled_example / "test_assets").symlink_to(ASSETS, target_is_directory=True)
    (compiled_example / "idle.mp4").write_bytes(idle_clip(160, 120, frames=9)[0])
    env = {"PATH": "/usr/bin:/bin", "LIPSYNC_URL": server.url}
    proc = subprocess.run([node, "out/example.js"], cwd=compiled_example, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^video avatar [0-9a-f]+: 160 frames$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^404 avatar_not_found [0-9a-f]{32}$", proc.stdout, re.MULTILINE), proc.stdout
    assert (compiled_example / "out.mp4").stat().st_size > 0 and (compiled_example / "job.mp4").stat().st_size > 0
