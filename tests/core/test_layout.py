"""The three packages import only downwards: the library (wav2lip_core) imports neither the server
(lipsync_server) nor the stores (lipsync_stores), nor Flask or Redis; the stores never import the server.
`from wav2lip_core import TalkingHead` in a fresh interpreter loads none of them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT

LIBRARY, SERVER, STORES = "wav2lip_core", "lipsync_server", "lipsync_stores"
MAY_IMPORT = {LIBRARY: {LIBRARY}, STORES: {STORES, LIBRARY}, SERVER: {SERVER, STORES, LIBRARY}}  # of the three, downwards only
NEVER = {LIBRARY: {"flask", "werkzeug", "prometheus_client", "redis"}, STORES: {"flask", "werkzeug", "prometheus_client"}}


def imported(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, anywhere in the file, relative imports resolved."""
    package = path.relative_to(ROOT).parent.parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(package[0] if node.level else node.module.split(".")[0])
    return names


def forbidden(package: str) -> set[str]:
    """The packages above `package`, and the third-party packages that belong to a room above it."""
    return (set(MAY_IMPORT) - MAY_IMPORT[package]) | NEVER.get(package, set())


@pytest.mark.parametrize("package", [LIBRARY, STORES, SERVER])
def test_imports_run_only_downwards(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {ROOT / package}"
    up = [f"{p.relative_to(ROOT)} imports {sorted(bad)}" for p in files if (bad := imported(p) & forbidden(package))]
    assert up == []


def test_talking_head_loads_no_server() -> None:
    """What an embedder gets: the library alone, from this checkout (not an installed copy of another)."""
    probe = (
        "import json, sys; from wav2lip_core import TalkingHead; import wav2lip_core; "
        "print(json.dumps([wav2lip_core.__file__, sorted({m.split('.')[0] for m in sys.modules})]))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    where, loaded = json.loads(proc.stdout.splitlines()[-1])
    assert Path(where).resolve().is_relative_to(ROOT), where
    assert sorted(set(loaded) & forbidden(LIBRARY)) == []
