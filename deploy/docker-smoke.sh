#!/usr/bin/env bash
# make docker-smoke: build the image from a clean checkout of HEAD (committed files only), run it, check that
# torch is not in it, /health and one /api/generate; print the build time and the image size; remove the container
# and the checkout (the image stays, tagged wav2lip-openvino-server:smoke, as the next build's cache).
# Not part of `make test`: it takes minutes and a few GB. podman or docker (ENGINE=… to choose).
# How the image is built (and what BUILD_ARGS / EXTRA_BUILD_ARGS do): deploy/build-image.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
engine=${ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$engine" ] || { echo "docker-smoke: neither podman nor docker is installed" >&2; exit 2; }
tag=wav2lip-openvino-server:smoke
name=lipsync-smoke-$$
work=$(mktemp -d -t lipsync-smoke-XXXXXX)
cleanup() { "$engine" rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

# The commit checked out here (a worktree's HEAD, detached or not), and nothing uncommitted.
commit=$(git -C "$root" rev-parse HEAD)
[ -z "$(git -C "$root" status --porcelain --untracked-files=no)" ] || echo "docker-smoke: uncommitted changes are not built" >&2
git clone -q --no-checkout "$root" "$work/src"
git -C "$work/src" checkout -q --detach "$commit"
echo "docker-smoke: building ${commit:0:7}"
t0=$(date +%s)
ENGINE=$engine "$work/src/deploy/build-image.sh" "$work/src" "$tag"
built=$(( $(date +%s) - t0 ))
# torch belongs to the convert stage only: the runtime image must not be able to import it.
torch=$("$engine" run --rm --no-healthcheck --entrypoint python "$tag" -c 'import importlib.util; print(importlib.util.find_spec("torch") is not None)')
[ "$torch" = False ] || { echo "docker-smoke: torch is importable in the runtime image ($torch)" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$engine" run -d --name "$name" --shm-size 256m -p "127.0.0.1:$port:8000" "$tag" >/dev/null
t0=$(date +%s)
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
  if [ $(( $(date +%s) - t0 )) -gt 300 ]; then
    "$engine" logs --tail 30 "$name" >&2; echo "docker-smoke: /health not 200 after 300 s" >&2; exit 1
  fi
  sleep 1
done
ready=$(( $(date +%s) - t0 ))

python3 - "$port" "$root/test_assets" <<'PY'
import base64, json, sys, urllib.request
port, assets = sys.argv[1], sys.argv[2]
b64 = lambda name: base64.b64encode(open(f"{assets}/{name}", "rb").read()).decode()
body = json.dumps({"image": b64("astronaut.jpg"), "audio": b64("speech.wav")}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", body, {"Content-Type": "application/json", "Accept": "video/mp4"})
with urllib.request.urlopen(req, timeout=300) as r:
    mp4, frames = r.read(), int(r.headers["X-Frames"])
assert r.headers["Content-Type"] == "video/mp4" and mp4[4:8] == b"ftyp" and b"moov" in mp4 and frames == 160, (r.headers, len(mp4))
health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10))
print(f"docker-smoke: /api/generate → {len(mp4)} bytes, {frames} frames; /health {health['status']}, generator weights {health['generator_weights']}")
PY
size=$("$engine" image inspect "$tag" --format '{{.Size}}')
echo "docker-smoke: passed — built in ${built} s, ready in ${ready} s, image $(( size / 1000000 )) MB, no torch in it"
