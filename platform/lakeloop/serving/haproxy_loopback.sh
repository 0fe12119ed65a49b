#!/bin/bash
# Ray Serve's HAProxy ingress, with every listener on loopback (RAY_SERVE_HAPROXY_BINARY_PATH points here).
#
# Ray's config template writes the stats and Prometheus listeners as `bind *:PORT` / `bind :PORT` (all
# interfaces) and has no setting for their host. This copies the config Ray passes with -f, rewrites
# each bind without a host (or with `*`) to HAPROXY_LOOPBACK_HOST (default 127.0.0.1), and execs
# the real haproxy (HAPROXY_LOOPBACK_BINARY) in this process, so the PID Ray watches is haproxy's.
set -euo pipefail
real="${HAPROXY_LOOPBACK_BINARY:?HAPROXY_LOOPBACK_BINARY must name the haproxy binary}"
host="${HAPROXY_LOOPBACK_HOST:-127.0.0.1}"
args=("$@")
for i in "${!args[@]}"; do
  if [[ "${args[$i]}" == "-f" ]] && (( i + 1 < ${#args[@]} )); then
    cfg="${args[$((i + 1))]}"
    sed -E "s/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)/\1${host}:\2/" "$cfg" > "$cfg.loopback"
    args[$((i + 1))]="$cfg.loopback"
  fi
done
exec "$real" "${args[@]}"
