#!/usr/bin/env bash
# For a machine with podman but no container registry (like the one this project is built on): local stand-ins
# for the two official images docker-compose.yml's cluster profile uses, built from Debian packages on the
# bookworm base that ../shared/tools/podman-prepare.sh makes, and tagged with the official names so the compose
# file runs unchanged. Anywhere a registry is reachable, skip this: compose pulls the real images.
#   redis:7-alpine     → Debian's redis-server (7.0), started by the compose file's `command`
#   nginx:1.27-alpine  → Debian's nginx (1.22), reading /etc/nginx/conf.d/*.conf, logging to the container's output,
#                        like the official image
# Run it after podman-prepare.sh (`make standins`); it replaces any image already tagged with these names.
set -euo pipefail
base=${BASE_IMAGE:-localhost/bookworm-minbase}
podman image exists "$base" || { echo "standins: no $base image; run ../shared/tools/podman-prepare.sh first" >&2; exit 2; }
build() {  # tag, Containerfile text
  local dir; dir=$(mktemp -d); printf '%s\n' "$2" > "$dir/Containerfile"
  podman build -q --pull=never --network host -t "$1" "$dir" >/dev/null || { rm -rf "$dir"; exit 1; }
  rm -rf "$dir"; echo "standins: built $1"
}
build docker.io/library/redis:7-alpine "FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD [\"redis-server\", \"--protected-mode\", \"no\"]"
build docker.io/library/nginx:1.27-alpine "FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \\
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD [\"nginx\", \"-g\", \"daemon off;\"]"
