#!/usr/bin/env bash
# Build the server image: deploy/build-image.sh [SOURCE_DIR] [TAG]
#   default: this checkout (with whatever checkpoints/*.pth it holds) as wav2lip-openvino-server:latest, the name
#   docker-compose.yml and deploy/k8s use. podman or docker (ENGINE=… to choose).
# Anywhere PyPI and PyTorch's wheel index are reachable this is a plain `build`. Machines behind a TLS-intercepting
# proxy or without PyTorch's index (as the ones this project is built on) pass what the build needs through
# BUILD_ARGS; when unset, with podman, it is detected (docker's build has no -v: set BUILD_ARGS yourself):
#   - extra CA certificates in /usr/local/share/ca-certificates → the host's CA bundle mounted into the build;
#   - a wheel folder /opt/wheels → mounted, PIP_FIND_LINKS=/opt/wheels and TORCH_INDEX= (torch from there);
#   - --network host (podman's build network may have no DNS); --pull=missing (a local base image is used as is).
# EXTRA_BUILD_ARGS is added either way, e.g. EXTRA_BUILD_ARGS=--no-cache to time a build from scratch.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$root}
tag=${2:-wav2lip-openvino-server:latest}
engine=${ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$engine" ] || { echo "build-image: neither podman nor docker is installed" >&2; exit 2; }

if [ -z "${BUILD_ARGS+x}" ]; then
  BUILD_ARGS=""
  if [ "$(basename "$engine")" = podman ]; then
    BUILD_ARGS+=" --pull=missing --format docker --network host"
    ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1 && BUILD_ARGS+=" -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"
    [ -d /opt/wheels ] && BUILD_ARGS+=" -v /opt/wheels:/opt/wheels:ro --build-arg PIP_FIND_LINKS=/opt/wheels --build-arg TORCH_INDEX="
  fi
fi
BUILD_ARGS+=" ${EXTRA_BUILD_ARGS:-}"
echo "build-image: $engine build$BUILD_ARGS -t $tag $src"
# shellcheck disable=SC2086  # BUILD_ARGS is a list of words
"$engine" build $BUILD_ARGS -t "$tag" "$src"
