#!/bin/sh
# nginx for docker-compose's cluster profile (its `command`; this folder is the container's /etc/nginx/conf.d).
# nginx resolves the replicas' names in the upstream block only when it loads its configuration, and a replica
# that is recreated or restarted may come back on another address (podman gives a new one on every start, so
# does Docker often): nginx would keep sending to the old one, and with every replica restarted answer only
# 503 until reloaded. So this watches the names' addresses and reloads nginx (gracefully: requests under way
# finish on the old workers) when one changes. A name that does not resolve (its replica is down) makes the
# reload fail: nginx keeps the configuration it has and logs why, until the name resolves again.
upstream=/etc/nginx/conf.d/upstream-compose.conf
names=$(sed -n 's/^[[:space:]]*server[[:space:]][[:space:]]*\([^:[:space:]]*\).*/\1/p' "$upstream")
[ -n "$names" ] || { echo "start.sh: no 'server' line in $upstream" >&2; exit 2; }

addresses() {
  for name in $names; do getent hosts "$name" || echo "unresolved $name"; done
}

watch() {
  seen=$(addresses)
  while sleep 2; do
    now=$(addresses)
    if [ "$now" != "$seen" ]; then
      echo "start.sh: replica addresses changed, reloading nginx: $(echo "$now" | tr -s ' \n' ' ')" >&2
      nginx -s reload || true
      seen=$now
    fi
  done
}

watch &
exec nginx -g 'daemon off;'
