#!/bin/bash
# Ray Serve's HAProxy ingress, with every listener on loopback (RAY_SERVE_HAPROXY_BINARY_PATH points here).
#
# Ray's config template writes the stats and Prometheus listeners as `bind *:PORT` / `bind :PORT` (all
# interfaces) and has no setting for their host. This copies the config Ray passes with -f, rewrites
# each bind without a host (or with `*`) to HAPROXY_LOOPBACK_HOST (default 127.0.0.1), and execs
# the real haproxy (HAPROXY_LOOPBACK_BINARY) in this process, so the PID Ray watches is haproxy's.
#
# With HAPROXY_LOOPBACK_MAX_BODY (serve.max_bytes), a request whose Content-Length is above it gets
# lakeloop's 413 from haproxy itself, before any body is read: forwarded, a huge Content-Length with
# no body behind it held the connection open instead.
set -euo pipefail
real="${HAPROXY_LOOPBACK_BINARY:?HAPROXY_LOOPBACK_BINARY must name the haproxy binary}"
host="${HAPROXY_LOOPBACK_HOST:-127.0.0.1}"
limit="${HAPROXY_LOOPBACK_MAX_BODY:-}"
rule=""
if [[ -n "$limit" ]]; then
  [[ "$limit" =~ ^[0-9]+$ ]] || { echo "HAPROXY_LOOPBACK_MAX_BODY must be a byte count, not '$limit'" >&2; exit 2; }
  # hdr_val is a 32-bit integer (10^12 wraps): a value with more digits than the limit is over it by its length
  rule='    http-request return status 413 content-type application/json lf-string "{\"error\": \"request body is %[req.hdr(content-length)] bytes; the limit is LIMIT bytes (serve.max_bytes)\", \"type\": \"PayloadTooLarge\"}" if { req.hdr(content-length) -m reg ^0*[1-9][0-9]{DIGITS,}$ } || { req.hdr_val(content-length) gt LIMIT }'
  limit="$((10#$limit))"
  rule="${rule//LIMIT/$limit}"
  rule="${rule//DIGITS/${#limit}}"
fi
args=("$@")
for i in "${!args[@]}"; do
  if [[ "${args[$i]}" == "-f" ]] && (( i + 1 < ${#args[@]} )); then
    cfg="${args[$((i + 1))]}"
    sed -E "s/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)/\1${host}:\2/" "$cfg" \
      | RULE="$rule" awk '{ print } /^frontend http_frontend/ && ENVIRON["RULE"] != "" { print ENVIRON["RULE"] }' \
      > "$cfg.loopback"
    args[$((i + 1))]="$cfg.loopback"
  fi
done
exec "$real" "${args[@]}"
